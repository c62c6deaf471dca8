"""Demand per variant from the gateways' reports: smoothed rates, a forecast, planning targets,
hysteresis.

Pure and synchronous (``now`` passed in). Each gateway's reports are smoothed per variant on
their own (a variant missing from a gateway's report counted zero) and the gateways add up, so
reports that arrive at different instants do not stand in for each other. Three views:

- ``rates()``: the smoothed rate per variant;
- ``forecast(horizon_s)``: the rate expected ``horizon_s`` ahead — the larger of the smoothed rate
  and the rate of the last ``recent_s``, plus the rise since ``trend_s`` before that, extrapolated
  (a fall is not: capacity is cheap to keep a little longer, a missed deadline is not). Accuracy
  scaling plans for this, the horizon being the time a new plan needs to take effect;
- ``target()``: the recent maximum with gpu-let's headroom (x1.5 below 125 req/s, x1.2 above),
  what the full-accuracy planner sizes for; a re-plan is due only when a target rises by more
  than 5 % or 10 req/s, or falls by more than 10 %, so noise does not churn the mesh.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from protocol.bounds import MAX_NAME_LEN, MAX_WINDOW_S, counts_defect


@dataclass(slots=True)
class _Stream:
    """One gateway's reports of one variant."""

    rate: float = 0.0  # smoothed
    windows: collections.deque[tuple[float, float, float]] = field(default_factory=collections.deque)  # (end, count, length)

    def rate_between(self, start: float, end: float) -> float | None:
        """The rate over the windows that ended in (start, end]; None if none did."""
        count = length = 0.0
        for t, c, w in self.windows:
            if start < t <= end:
                count += c
                length += w
        return count / length if length > 0 else None


class DemandTracker:
    """Request rates per variant, summed over gateways. Not thread-safe; the controller actor owns it."""

    def __init__(self, *, half_life_s: float = 5.0, history_s: float = 60.0, min_rate_rps: float = 0.0,
                 recent_s: float = 1.0, trend_s: float = 2.0, stale_s: float = 10.0) -> None:
        if min(half_life_s, history_s, recent_s, trend_s, stale_s) <= 0:
            raise ValueError("half_life_s, history_s, recent_s, trend_s and stale_s must be positive")
        self.half_life_s = half_life_s
        self.history_s = history_s
        self.min_rate_rps = min_rate_rps
        self.recent_s = recent_s
        self.trend_s = trend_s
        self.stale_s = stale_s
        self._streams: dict[tuple[str, str], _Stream] = {}  # (source, variant)
        self._heard: dict[str, float] = {}  # source -> last report
        self._peaks: dict[str, collections.deque[tuple[float, float]]] = {}  # variant -> (time, summed rate)
        self._outcomes: collections.deque[tuple[float, int, int]] = collections.deque()  # (time, requests, missed)
        self._now = 0.0
        # Variants the repository holds; counts of any other name are dropped (None: take every name).
        self.known: frozenset[str] | None = None
        self.rejected = 0  # reports (or unknown names in them) dropped

    def observe(self, counts: Mapping[str, int], window_s: float, now: float, source: str = "",
                missed: Mapping[str, int] | None = None) -> None:
        """One gateway's counts over the ``window_s`` that ended at ``now`` (and how many missed their deadline).

        A report with a window or count out of range is dropped whole; names outside ``known`` are
        dropped from it; both are counted in ``rejected``, never raised. A gateway silent for longer
        than ``history_s`` is forgotten, streams and all.
        """
        missed = missed or {}
        if (not (0 < window_s <= MAX_WINDOW_S) or isinstance(window_s, bool)
                or counts_defect(counts) or counts_defect(missed) or len(source) > MAX_NAME_LEN):
            self.rejected += 1
            return
        if self.known is not None:
            unknown = sum(1 for v in counts if v not in self.known) + sum(1 for v in missed if v not in self.known)
            if unknown:
                self.rejected += unknown
                counts = {v: n for v, n in counts.items() if v in self.known}
                missed = {v: n for v, n in missed.items() if v in self.known}
        self._forget_silent(now)
        self._outcomes.append((now, sum(counts.values()), sum(missed.values())))
        while self._outcomes and self._outcomes[0][0] < now - self.history_s:
            self._outcomes.popleft()
        self._now = max(self._now, now)
        self._heard[source] = now
        weight = 1.0 - math.pow(0.5, window_s / self.half_life_s)
        known = {v for (src, v) in self._streams if src == source}
        for variant in known | set(counts):
            count = counts.get(variant, 0)
            rate = count / window_s
            stream = self._streams.get((source, variant))
            if stream is None:
                stream = self._streams[(source, variant)] = _Stream(rate=rate)
            else:
                stream.rate = (1.0 - weight) * stream.rate + weight * rate
            stream.windows.append((now, float(count), window_s))
            while stream.windows and stream.windows[0][0] <= now - self.trend_s - self.recent_s:
                stream.windows.popleft()
        for variant in known | set(counts):
            peaks = self._peaks.setdefault(variant, collections.deque())
            peaks.append((now, sum(s.rate for v, s in self._live() if v == variant)))
            while peaks and peaks[0][0] < now - self.history_s:
                peaks.popleft()

    def _forget_silent(self, now: float) -> None:
        silent = {src for src, heard in self._heard.items() if heard < now - self.history_s}
        if not silent:
            return
        for src in silent:
            del self._heard[src]
        for key in [k for k in self._streams if k[0] in silent]:
            del self._streams[key]
        for variant in [v for v, peaks in self._peaks.items() if not peaks or peaks[-1][0] < now - self.history_s]:
            del self._peaks[variant]

    def _live(self) -> Iterable[tuple[str, _Stream]]:
        for (source, variant), stream in self._streams.items():
            if self._now - self._heard.get(source, -math.inf) <= self.stale_s:
                yield variant, stream

    def rates(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for variant, stream in self._live():
            out[variant] = out.get(variant, 0.0) + stream.rate
        return {v: r for v, r in sorted(out.items()) if r > self.min_rate_rps}

    def forecast(self, horizon_s: float) -> dict[str, float]:
        """The rate expected ``horizon_s`` ahead (see the module docstring)."""
        out: dict[str, float] = {}
        now = self._now
        for variant, stream in self._live():
            latest = stream.rate_between(now - self.recent_s, now)
            earlier = stream.rate_between(now - self.trend_s - self.recent_s, now - self.trend_s)
            rise = 0.0
            if latest is not None and earlier is not None:
                rise = max(0.0, (latest - earlier) / self.trend_s)
            out[variant] = out.get(variant, 0.0) + max(stream.rate, latest or 0.0) + rise * horizon_s
        return {v: r for v, r in sorted(out.items()) if r > self.min_rate_rps}

    def outcomes_since(self, start: float) -> tuple[int, int]:
        """(requests, deadline misses) reported after ``start``, over every gateway and variant."""
        requests = missed = 0
        for t, n, m in self._outcomes:
            if t > start:
                requests += n
                missed += m
        return requests, missed

    def target(self) -> dict[str, float]:
        """The rate to plan for at full accuracy: the recent maximum with gpu-let's headroom."""
        out = {}
        for variant, peaks in sorted(self._peaks.items()):
            peak = max((r for _, r in peaks), default=0.0)
            if peak > self.min_rate_rps:
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


class PeakWindow:
    """The highest rate per key over the last ``span_s`` of observations. Pure; the caller's clock."""

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self._seen: collections.deque[tuple[float, dict[str, float]]] = collections.deque()

    def observe(self, now: float, rates: Mapping[str, float]) -> None:
        self._seen.append((now, dict(rates)))
        while self._seen and self._seen[0][0] < now - self.span_s:
            self._seen.popleft()

    def peak(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, rates in self._seen:
            for key, rate in rates.items():
                out[key] = max(out.get(key, 0.0), rate)
        return out
