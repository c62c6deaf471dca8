"""What variant selection prefers per request context, tallied from the decisions it makes.

Pure and synchronous. Each family request's decision (the policy's probabilities over its
candidates) is folded into a moving average per (family, context); the dashboard shows the
variant with the most mass. Bounded: at most ``max_contexts`` contexts per family, the least
recently seen forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ContextValue = str | int | float | bool


@dataclass(slots=True)
class ContextTally:
    context: dict[str, ContextValue]
    decisions: int = 0
    mass: dict[str, float] = field(default_factory=dict)  # variant -> moving average of its probability


class PreferenceTally:
    """Per family and context, the recent mean probability of each variant. One owner; not thread-safe.

    The average is the plain mean over the first ``horizon`` decisions of a context and an
    exponential average over about the last ``horizon`` after that, so it follows a policy that learns.
    """

    def __init__(self, *, max_contexts: int = 12, horizon: int = 50) -> None:
        self.max_contexts = max_contexts
        self.horizon = horizon
        self._families: dict[str, OrderedDict[tuple, ContextTally]] = {}

    def record(self, family: str, context: Mapping[str, ContextValue], variants: Sequence[str],
               pmf: Sequence[float]) -> None:
        contexts = self._families.setdefault(family, OrderedDict())
        key = tuple(sorted((k, repr(v)) for k, v in context.items()))
        tally = contexts.get(key)
        if tally is None:
            tally = contexts[key] = ContextTally(context=dict(context))
            while len(contexts) > self.max_contexts:
                contexts.popitem(last=False)
        contexts.move_to_end(key)
        tally.decisions += 1
        rate = 1.0 / min(tally.decisions, self.horizon)
        chosen = dict(zip(variants, pmf))
        for variant in set(tally.mass) | set(chosen):
            old = tally.mass.get(variant, 0.0)
            tally.mass[variant] = old + rate * (chosen.get(variant, 0.0) - old)

    def view(self) -> dict[str, list[dict]]:
        """Per family, its contexts most decided first: the preferred variant, its probability, all of them."""
        out: dict[str, list[dict]] = {}
        for family, contexts in sorted(self._families.items()):
            rows = []
            for tally in sorted(contexts.values(), key=lambda t: -t.decisions):
                ranked = sorted(tally.mass.items(), key=lambda kv: (-kv[1], kv[0]))
                rows.append({
                    "context": tally.context,
                    "decisions": tally.decisions,
                    "preferred": ranked[0][0] if ranked else "",
                    "probability": round(ranked[0][1], 4) if ranked else 0.0,
                    "pmf": {v: round(p, 4) for v, p in ranked},
                })
            out[family] = rows
        return out
