"""Demand per variant from the gateways' reports: smoothed rates, a planning target, hysteresis.

Pure and synchronous (``now`` passed in). Rates are exponentially smoothed per variant (summed
over gateways); the target a plan is made for adds headroom to the recent maximum (gpu-let:
x1.5 below 125 req/s, x1.2 above), and a re-plan is due only when a target rises by more than
5 % or 10 req/s, or falls by more than 10 %, so noise does not churn the mesh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Rate:
    rate: float = 0.0
    updated: float = 0.0
    peak: list[tuple[float, float]] = field(default_factory=list)  # (time, rate) over the history window


class DemandTracker:
    """Smoothed request rates per variant. Not thread-safe; the controller actor owns it."""

    def __init__(self, *, half_life_s: float = 5.0, history_s: float = 60.0, min_rate_rps: float = 0.0) -> None:
        self.half_life_s = half_life_s
        self.history_s = history_s
        self.min_rate_rps = min_rate_rps
        self._rates: dict[str, _Rate] = {}
        self._gateway_seen: dict[str, float] = {}

    def observe(self, counts: Mapping[str, int], window_s: float, now: float) -> None:
        """One gateway's counts over ``window_s``; reports from several gateways add up."""
        if window_s <= 0:
            return
        for variant, count in counts.items():
            self._fold(variant, count / window_s, window_s, now)

    def _fold(self, variant: str, rate: float, window_s: float, now: float) -> None:
        entry = self._rates.setdefault(variant, _Rate(updated=now))
        # Several gateways report within one window: a report adds its rate to what is already
        # there for this instant; a new window decays the old estimate towards the new sample.
        weight = 1.0 - math.pow(0.5, window_s / self.half_life_s)
        if now - entry.updated < 1e-9 and entry.peak:
            entry.rate += weight * rate
        else:
            entry.rate = (1.0 - weight) * entry.rate + weight * rate
        entry.updated = now
        entry.peak.append((now, entry.rate))
        cutoff = now - self.history_s
        while entry.peak and entry.peak[0][0] < cutoff:
            entry.peak.pop(0)

    def rates(self) -> dict[str, float]:
        return {v: e.rate for v, e in sorted(self._rates.items()) if e.rate > self.min_rate_rps}

    def target(self) -> dict[str, float]:
        """The rate to plan for: the recent maximum with gpu-let's headroom."""
        out = {}
        for variant, entry in sorted(self._rates.items()):
            peak = max((r for _, r in entry.peak), default=entry.rate)
            if peak <= self.min_rate_rps:
                continue
            out[variant] = with_headroom(peak)
        return out


def with_headroom(peak_rps: float) -> float:
    """gpu-let's planning headroom over a recent peak: x1.5 below 125 req/s, x1.2 above."""
    return peak_rps * (1.5 if peak_rps < 125.0 else 1.2)


def replan_due(planned: Mapping[str, float], target: Mapping[str, float], *, rise: float = 0.05,
               rise_rps: float = 10.0, fall: float = 0.10) -> bool:
    """Hysteresis: has any variant's target moved enough from what the current plan carries?"""
    for variant in set(planned) | set(target):
        old, new = planned.get(variant, 0.0), target.get(variant, 0.0)
        if new > old and (new - old > rise_rps or (old > 0 and new > old * (1 + rise)) or old == 0):
            return True
        if new < old * (1 - fall):
            return True
    return False
