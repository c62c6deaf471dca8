"""Duty-cycle arithmetic of one gpu-let: batch sizes, throughput and SLO checks under a slowdown.

A gpu-let serving variants i at rates r_i runs one batch of each per duty cycle D (Nexus'
squishy bin packing, gpu-let's temporal sharing). With b_i = ceil(r_i * D / 1000) and round time
S = alpha * sum L_i(b_i) it is feasible when S <= D (the round fits in the cycle) and
S + D <= SLO_i for every i (a request waits at most one cycle, then one round). One variant alone
at full speed is the saturated rule 2 * alpha * L(b) <= SLO; at a partial rate it is the residue
rule L(b) + b / r <= SLO. Pure functions over latency curves (index b - 1 holds batch b).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

Curve = Sequence[float]
EPS = 1e-9


def batch_for(rate_rps: float, duty_ms: float) -> int:
    """Smallest batch that carries ``rate_rps`` when one batch runs per ``duty_ms``."""
    return max(1, math.ceil(rate_rps * duty_ms / 1000.0 - EPS))


def saturated(curve: Curve, slo_ms: float, alpha: float) -> tuple[int, float]:
    """(batch, rate) of the variant alone at full speed: the largest b with 2*alpha*L(b) <= SLO.
    (0, 0.0) when even batch 1 misses the SLO."""
    b = bisect.bisect_right(curve, slo_ms * (1 + EPS) / (2.0 * alpha))
    if b == 0:
        return 0, 0.0
    return b, 1000.0 * b / (alpha * curve[b - 1])


def max_single(curve: Curve, slo_ms: float, alpha: float, upper: float = math.inf) -> float:
    """Highest rate the variant alone can carry (capped at ``upper``); the saturated point bounds it,
    and any lower rate fits too (fewer requests per cycle never need a bigger batch)."""
    return min(upper, saturated(curve, slo_ms, alpha)[1])


def fit_cycle(items: Sequence[tuple[Curve, float]], slo_ms: float, alpha: float) -> tuple[float, tuple[int, ...]] | None:
    """The feasible duty cycle for ``items`` = (curve, rate > 0) with the lowest occupancy S / D,
    and its batches; None when no cycle fits. ``slo_ms`` is the tightest SLO among the items.

    Batches change only at D = 1000 k / r_i. Between two consecutive breakpoints (lo, hi] they are
    fixed (those at ``hi``), so S is fixed and the feasible D there form [max(S, lo), min(hi, SLO - S)];
    the longest one has the lowest occupancy. The lowest occupancy leaves the most room for
    temporal sharing and for bursts (gpu-let's residue rule picks the largest batch the same way).
    """
    if not items:
        return None
    if len(items) == 1:
        return _fit_single(items[0][0], items[0][1], slo_ms, alpha)
    horizon = min(min(1000.0 * len(c) / r for c, r in items), slo_ms)
    points = _breakpoints(items, horizon)
    lo = 0.0
    best: tuple[float, float] | None = None  # (occupancy, D)
    for hi in points:
        s = alpha * sum(c[batch_for(r, hi) - 1] for c, r in items)
        if s + lo > slo_ms * (1 + EPS):
            break  # S and lo only grow with hi
        d_min, d_max = max(s, lo), min(hi, slo_ms - s)
        if d_min <= d_max * (1 + EPS):
            d = min(max(d_min, d_max), hi)
            if best is None or s / d < best[0] * (1 - EPS):
                best = (s / d, d)
        lo = hi
    if best is None:
        return None
    d = best[1]
    return d, tuple(batch_for(r, d) for _, r in items)


def _fit_single(curve: Curve, rate: float, slo_ms: float, alpha: float) -> tuple[float, tuple[int, ...]] | None:
    """fit_cycle for one variant: batch k owns the interval (1000 (k-1) / r, 1000 k / r]."""
    step = 1000.0 / rate
    limit = slo_ms * (1 + EPS)
    best: tuple[float, float, int] | None = None
    for k in range(1, len(curve) + 1):
        lo, hi = step * (k - 1), step * k
        s = alpha * curve[k - 1]
        if s + lo > limit:
            break
        d_min, d_max = max(s, lo), min(hi, slo_ms - s)
        if d_min <= d_max * (1 + EPS):
            d = min(max(d_min, d_max), hi)
            if best is None or s / d < best[0] * (1 - EPS):
                best = (s / d, d, k)
    if best is None:
        return None
    return best[1], (batch_for(rate, best[1]),)


def _breakpoints(items: Sequence[tuple[Curve, float]], horizon: float) -> list[float]:
    """Cycle lengths where some batch grows, up to ``horizon`` (itself included: a tiny rate may
    have no breakpoint below the SLO yet still fit with batch 1)."""
    found = {horizon}
    for c, r in items:
        step = 1000.0 / r
        for k in range(1, len(c) + 1):
            d = step * k
            if d > horizon:
                break
            found.add(d)
    return sorted(found)


def round_time(items: Sequence[tuple[Curve, float]], batches: Sequence[int], alpha: float) -> float:
    return alpha * sum(c[b - 1] for (c, _), b in zip(items, batches, strict=True))


def max_extra(
    existing: Sequence[tuple[Curve, float]],
    slo_ms: float,
    new: Curve,
    alpha: float,
    upper: float = math.inf,
) -> float:
    """Highest rate of a new variant (latency curve ``new``) that can join ``existing`` in one cycle.

    ``slo_ms`` is the tightest SLO of all, the new variant included. Per interval of the existing
    items' breakpoints, the largest new batch b with S <= hi and S + max(S, lo) <= SLO carries
    1000 b / max(S, lo) per second.
    """
    if not existing:
        return max_single(new, slo_ms, alpha, upper)
    max_b = len(new)
    horizon = min(min(1000.0 * len(c) / r for c, r in existing), slo_ms)
    points = _breakpoints(existing, horizon)
    best, lo = 0.0, 0.0
    limit = slo_ms * (1 + EPS)
    for hi in points:
        s_e = alpha * sum(c[batch_for(r, hi) - 1] for c, r in existing)
        if s_e + max(s_e, lo) > limit:
            break
        # largest b meeting both conditions (each monotone in b)
        good, bad = 0, max_b + 1
        while bad - good > 1:
            mid = (good + bad) // 2
            s = s_e + alpha * new[mid - 1]
            if s <= hi * (1 + EPS) and s + max(s, lo) <= limit:
                good = mid
            else:
                bad = mid
        if good:
            s = s_e + alpha * new[good - 1]
            best = max(best, 1000.0 * good / max(s, lo))
            if best >= upper:
                return upper
        lo = hi
    return min(best, upper)


def scale_to_fit(items: Sequence[tuple[Curve, float]], slo_ms: float, alpha: float, *, steps: int = 40) -> float:
    """Largest s in [0, 1] such that the items at rates s * r_i fit one cycle (bisection)."""
    if fit_cycle(items, slo_ms, alpha) is not None:
        return 1.0
    good, bad = 0.0, 1.0
    for _ in range(steps):
        mid = (good + bad) / 2
        if fit_cycle([(c, r * mid) for c, r in items], slo_ms, alpha) is not None:
            good = mid
        else:
            bad = mid
    return good
