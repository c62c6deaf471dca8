"""Holding a family's requests to the capacity plan's variant fractions.

While the fleet is scaled down, the plan says what share of a family's served requests each
variant may take (Proteus' routing fractions). ``ShareTracker`` remembers the recent split per
family and lets a chooser pick only among the variants still under their share;
``weighted_choice`` is the chooser without a learned policy: a draw weighted by the fractions, or
the most accurate option when the plan gives none. Pure (``now`` is passed in) and not
thread-safe; used by the gateway and by the accuracy-scaling benchmark's simulator, so the
benchmark measures the routing the gateway does.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar


class Option(Protocol):
    @property
    def variant(self) -> str: ...

    @property
    def accuracy(self) -> float: ...


T = TypeVar("T", bound=Option)


class _Window:
    """The (time, variant) choices of one family over the last ``window_s``, with running counts."""

    __slots__ = ("counts", "events")

    def __init__(self) -> None:
        self.events: collections.deque[tuple[float, str]] = collections.deque()
        self.counts: collections.Counter[str] = collections.Counter()

    def expire(self, before: float) -> None:
        events, counts = self.events, self.counts
        while events and events[0][0] < before:
            _, variant = events.popleft()
            counts[variant] -= 1
            if not counts[variant]:
                del counts[variant]


class ShareTracker:
    """Recent share of each family's requests per variant. ``allowed`` keeps the options whose
    share is under the plan's fraction plus ``tolerance``; O(variants) per call."""

    def __init__(self, *, window_s: float = 2.0, tolerance: float = 0.05, seed: int | None = None) -> None:
        self.window_s = window_s
        self.tolerance = tolerance
        self._windows: dict[str, _Window] = {}
        self.rng = random.Random(seed)

    def record(self, family: str, variant: str, now: float) -> None:
        w = self._windows.get(family)
        if w is None:
            w = self._windows[family] = _Window()
        w.expire(now - self.window_s)  # bounded even while nothing reads the shares (no scaled plan)
        w.events.append((now, variant))
        w.counts[variant] += 1

    def shares(self, family: str, now: float) -> dict[str, float]:
        w = self._windows.get(family)
        if w is None:
            return {}
        w.expire(now - self.window_s)
        total = len(w.events)
        return {v: c / total for v, c in w.counts.items()} if total else {}

    def allowed(self, family: str, fractions: Mapping[str, float], options: Sequence[T],
                           now: float) -> list[T]:
        """Options under their share; if every planned one is over, the one furthest below its
        share; with no fractions for any option, all of them."""
        if not fractions:
            return list(options)
        capped = [o for o in options if fractions.get(o.variant, 0.0) > 0]
        if not capped:
            return list(options)
        shares = self.shares(family, now)
        ok = [o for o in capped if shares.get(o.variant, 0.0) < fractions[o.variant] + self.tolerance]
        if ok:
            return ok
        return [min(capped, key=lambda o: shares.get(o.variant, 0.0) - fractions[o.variant])]

    def shed(self, share: float) -> bool:
        """Whether this request falls in the share the plan turns away."""
        return share > 0 and self.rng.random() < share


def weighted_choice(options: Sequence[Option], fractions: Mapping[str, float], u: float) -> tuple[int, tuple[float, ...]]:
    """The index drawn with probability proportional to each option's fraction (``u`` uniform in
    [0, 1)), and the pmf; with no positive fraction, the most accurate option (first on ties)."""
    weights = [fractions.get(o.variant, 0.0) for o in options]
    total = sum(weights)
    if total <= 0:
        best = max(range(len(options)), key=lambda i: (options[i].accuracy, -i))
        return best, tuple(1.0 if i == best else 0.0 for i in range(len(options)))
    pmf = tuple(w / total for w in weights)
    acc, chosen = 0.0, max(i for i, p in enumerate(pmf) if p > 0)
    for i, p in enumerate(pmf):
        acc += p
        if p > 0 and u < acc:
            chosen = i
            break
    return chosen, pmf


__all__ = ["Option", "ShareTracker", "weighted_choice"]
