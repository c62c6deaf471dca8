"""The gateway's one recording point for request outcomes: counters, histograms and a rolling window.

:class:`Telemetry` is pure and synchronous (an injected epoch clock, no I/O). The request path
calls one recording method per answered request (:meth:`Telemetry.answered` for a 200, met or
late; :meth:`Telemetry.failed` for everything else); Prometheus' ``/metrics``
(:mod:`gateway.exposition`), Triton's statistics extension (:meth:`Telemetry.stats`) and the
dashboard (:meth:`Telemetry.recent`) all read these same counters. Imports nothing of the
gateway's I/O.
"""

from __future__ import annotations

import enum
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Request latency (seconds) around the SLOs letmesh serves: 1 ms models up to 10 s deadlines.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Labels come only from names the routing table knows; this caps them anyway (a repository that
# churns for months), so memory stays bounded whatever happens.
MAX_SERIES = 10_000
# Gauges computed from the window (goodput, effective accuracy, exploration) cover this much.
RATE_WINDOW_S = 60


class Outcome(enum.StrEnum):
    """How a request was answered, as the dashboard and the SLO counters group it."""

    MET = "met"  # 200 within its deadline
    LATE = "late"  # 200 after its deadline
    DEADLINE_MISSED = "deadline_missed"  # 504
    SHED = "shed"  # 503 or 429: turned away
    ERROR = "error"  # any other failure of the server's (a set-aside variant, a backend error)
    # 4xx: the request itself was wrong (body, name, credentials) or asked for what no deployed
    # variant has; counted, but not against SLO attainment, which judges the requests accepted.
    INVALID = "invalid"


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (the last one is +Inf) and the sum; ``observe`` is a bisect and two adds."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus writes it, count at or below it), ending with +Inf."""
        out, running = [], 0
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


@dataclass(slots=True)
class ModelSeries:
    """Requests under one model name (a family or a variant) that one variant answered or failed.

    Durations are microseconds, as Triton's cumulative counters; ``executions`` adds rows/batch
    per request, so summed over every gateway it is the number of batches the workers ran."""

    success: int = 0
    failure: dict[str, int] = field(default_factory=dict)
    inferences: int = 0
    executions: float = 0.0
    success_us: int = 0
    failure_us: int = 0
    queue_us: int = 0
    compute_infer_us: int = 0
    last_inference_ms: int = 0
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    batch: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))


@dataclass(slots=True)
class FamilySeries:
    """One family's requests: outcomes, the variants chosen for it, and the bandit's exploration."""

    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    chosen: dict[str, int] = field(default_factory=dict)
    decisions: int = 0
    explored: int = 0
    accuracy_sum: float = 0.0


@dataclass(slots=True)
class _FamilySecond:
    requests: int = 0
    slo_met: int = 0
    answered: int = 0
    accuracy_sum: float = 0.0
    decisions: int = 0
    explored: int = 0
    variants: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Second:
    t: int
    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    accuracy_sum: float = 0.0
    accuracy_n: int = 0
    families: dict[str, _FamilySecond] = field(default_factory=dict)


_WINDOW_KEYS = {Outcome.MET: "ok", Outcome.LATE: "late", Outcome.DEADLINE_MISSED: "deadline_missed",
                Outcome.SHED: "shed", Outcome.ERROR: "errors", Outcome.INVALID: "invalid"}


class Telemetry:
    """Counters of one gateway. One event loop; not thread-safe. Every method is O(1) but the readers.

    Invariants: each recording adds exactly one request to the window and to at most one
    (model, variant) series and one family; the window holds at most ``window_s`` one-second
    buckets; series and families are created only for names given by the request path (which
    takes them from the routing table) and at most ``max_series`` of them together.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, window_s: int = 300,
                 max_series: int = MAX_SERIES) -> None:
        if window_s < 1:
            raise ValueError("window_s must be at least 1")
        self.clock = clock
        self.window_s = int(window_s)
        self.max_series = max_series
        self.series: dict[tuple[str, str], ModelSeries] = {}
        self.families: dict[str, FamilySeries] = {}
        self.dropped_labels = 0  # recordings past MAX_SERIES, counted in the window only
        self._window: deque[_Second] = deque()

    # --- recording: one call per answered request -------------------------------------------

    def answered(self, *, model: str, family: str, variant: str, met: bool, latency_s: float, accuracy: float,
                 queue_us: int = 0, compute_us: int = 0, rows: int = 1, batch_size: int = 0,
                 selected: bool = False, explored: bool | None = None) -> None:
        """A 200: ``variant`` answered a request for ``model`` (the name the client used).

        ``selected``: the mesh chose the variant for a family request; ``explored``: the bandit's
        choice was not its most likely one (None when no bandit chose)."""
        now = self.clock()
        outcome = Outcome.MET if met else Outcome.LATE
        s = self._series(model, variant)
        if s is not None:
            s.success += 1
            s.inferences += rows
            s.executions += rows / batch_size if batch_size > 0 else 1.0
            s.success_us += int(latency_s * 1e6)
            s.queue_us += queue_us
            s.compute_infer_us += compute_us
            s.last_inference_ms = int(now * 1000)
            s.latency.observe(latency_s)
            if batch_size > 0:
                s.batch.observe(batch_size)
        f = self._family(family)
        if f is not None:
            f.outcomes[outcome] += 1
            f.accuracy_sum += accuracy
            self._choice(f, variant, selected, explored)
        second = self._second(now)
        second.counts[outcome] += 1
        second.accuracy_sum += accuracy
        second.accuracy_n += 1
        if f is not None:
            fs = self._family_second(second, family)
            fs.requests += 1
            fs.slo_met += met
            fs.answered += 1
            fs.accuracy_sum += accuracy
            self._choice_second(fs, variant, selected, explored)

    def failed(self, *, model: str, family: str, variant: str, outcome: Outcome, reason: str, latency_s: float = 0.0,
               selected: bool = False, explored: bool | None = None) -> None:
        """Anything but a 200. ``model`` "" for a name the routing table does not know (counted
        in the window only); ``variant`` "" when none was chosen; ``reason`` from a fixed set."""
        if outcome in (Outcome.MET, Outcome.LATE):
            raise ValueError(f"{outcome} is not a failure")
        now = self.clock()
        s = self._series(model, variant) if model else None
        if s is not None:
            s.failure[reason] = s.failure.get(reason, 0) + 1
            s.failure_us += int(latency_s * 1e6)
            s.last_inference_ms = int(now * 1000)
        f = self._family(family) if family else None
        if f is not None:
            f.outcomes[outcome] += 1
            self._choice(f, variant, selected, explored)
        second = self._second(now)
        second.counts[outcome] += 1
        if f is not None:
            fs = self._family_second(second, family)
            fs.requests += outcome is not Outcome.INVALID  # the family's SLO judges requests it accepted
            self._choice_second(fs, variant, selected, explored)

    # --- readers ----------------------------------------------------------------------------

    def recent(self) -> dict[str, Any]:
        """The last ``window_s`` seconds, JSON-ready: per-second counts (contiguous, oldest first,
        from the oldest second held through now) and per-family totals over the window."""
        now = int(self.clock())
        self._expire(now)
        series = []
        held = {b.t: b for b in self._window}
        start = self._window[0].t if self._window else now + 1
        for t in range(start, now + 1):
            b = held.get(t)
            entry = {"t": t, "requests": 0, **{k: 0 for k in _WINDOW_KEYS.values()},
                     "accuracy_sum": 0.0, "accuracy_n": 0}
            if b is not None:
                for outcome, key in _WINDOW_KEYS.items():
                    entry[key] = b.counts[outcome]
                entry["requests"] = sum(b.counts.values())
                entry["accuracy_sum"], entry["accuracy_n"] = b.accuracy_sum, b.accuracy_n
            series.append(entry)
        families: dict[str, dict[str, Any]] = {}
        for b in self._window:
            for name, fs in b.families.items():
                total = families.setdefault(name, {"requests": 0, "slo_met": 0, "variants": {}})
                total["requests"] += fs.requests
                total["slo_met"] += fs.slo_met
                for variant, n in fs.variants.items():
                    total["variants"][variant] = total["variants"].get(variant, 0) + n
        return {"interval_s": 1, "series": series, "families": families}

    def rates(self, span_s: int = RATE_WINDOW_S) -> dict[str, dict[str, float]]:
        """Per family requests named (in or before the window): over the last ``span_s`` seconds,
        goodput (req/s answered within deadline; 0 when none), effective accuracy of the answers (NaN when none) and the bandit's exploration share (NaN
        when it decided nothing)."""
        now = int(self.clock())
        self._expire(now)
        sums: dict[str, _FamilySecond] = {}
        for b in self._window:
            if b.t <= now - span_s:
                continue
            for name, fs in b.families.items():
                acc = sums.setdefault(name, _FamilySecond())
                acc.slo_met += fs.slo_met
                acc.answered += fs.answered
                acc.accuracy_sum += fs.accuracy_sum
                acc.decisions += fs.decisions
                acc.explored += fs.explored
        for name in self.families:  # a family gone quiet reads 0 req/s, not no series (an alert on it still fires)
            sums.setdefault(name, _FamilySecond())
        nan = float("nan")
        return {name: {"goodput_rps": acc.slo_met / span_s,
                       "effective_accuracy": acc.accuracy_sum / acc.answered if acc.answered else nan,
                       "exploration": acc.explored / acc.decisions if acc.decisions else nan}
                for name, acc in sums.items()}

    def stats(self, model: str, version: str) -> dict[str, Any]:
        """Triton's statistics extension entry for ``model`` (all variants that served it summed)."""
        parts = [(variant, s) for (name, variant), s in self.series.items() if name == model]
        failures = sum(sum(s.failure.values()) for _, s in parts)
        successes = sum(s.success for _, s in parts)

        def duration(count: int, us: int) -> dict[str, int]:
            return {"count": count, "ns": us * 1000}

        entry: dict[str, Any] = {
            "name": model,
            "version": version,
            "last_inference": max((s.last_inference_ms for _, s in parts), default=0),
            "inference_count": sum(s.inferences for _, s in parts),
            "execution_count": round(sum(s.executions for _, s in parts)),
            "inference_stats": {
                "success": duration(successes, sum(s.success_us for _, s in parts)),
                "fail": duration(failures, sum(s.failure_us for _, s in parts)),
                "queue": duration(successes, sum(s.queue_us for _, s in parts)),
                "compute_input": duration(successes, 0),
                "compute_infer": duration(successes, sum(s.compute_infer_us for _, s in parts)),
                "compute_output": duration(successes, 0),
                "cache_hit": duration(0, 0),
                "cache_miss": duration(0, 0),
            },
            "batch_stats": [],
            "memory_usage": [],
            # letmesh: which variants answered (or failed) requests under this name.
            "letmesh_variants": {variant: {"success": s.success, "fail": sum(s.failure.values())}
                                 for variant, s in sorted(parts) if variant},
        }
        return entry

    # --- internals --------------------------------------------------------------------------

    def _series(self, model: str, variant: str) -> ModelSeries | None:
        key = (model, variant)
        s = self.series.get(key)
        if s is None:
            if len(self.series) + len(self.families) >= self.max_series:
                self.dropped_labels += 1
                return None
            s = self.series[key] = ModelSeries()
        return s

    def _family(self, family: str) -> FamilySeries | None:
        f = self.families.get(family)
        if f is None:
            if not family or len(self.series) + len(self.families) >= self.max_series:
                return None
            f = self.families[family] = FamilySeries()
        return f

    @staticmethod
    def _choice(f: FamilySeries, variant: str, selected: bool, explored: bool | None) -> None:
        if selected and variant:
            f.chosen[variant] = f.chosen.get(variant, 0) + 1
        if explored is not None:
            f.decisions += 1
            f.explored += explored

    @staticmethod
    def _choice_second(fs: _FamilySecond, variant: str, selected: bool, explored: bool | None) -> None:
        if selected and variant:
            fs.variants[variant] = fs.variants.get(variant, 0) + 1
        if explored is not None:
            fs.decisions += 1
            fs.explored += explored

    def _family_second(self, second: _Second, family: str) -> _FamilySecond:
        fs = second.families.get(family)
        if fs is None:
            fs = second.families[family] = _FamilySecond()
        return fs

    def _second(self, now: float) -> _Second:
        t = int(now)
        if self._window and self._window[-1].t >= t:
            return self._window[-1]  # this second (or a clock that stepped back: the newest)
        self._expire(t)
        second = _Second(t)
        self._window.append(second)
        return second

    def _expire(self, now: int) -> None:
        while self._window and self._window[0].t <= now - self.window_s:
            self._window.popleft()
