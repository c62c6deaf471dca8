"""What the gateway has measured of each worker's speed: its compute time over its profiled curve
(per variant), the pace it answers rows at while work waits for it, and when it last answered. Pure
and synchronous; the dispatcher feeds it replies."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container

from mesh.slowdown import SlowdownEstimate, SlowdownTracker
from protocol.message import InferReply

# Replies a worker's speed is measured over before admission predicts with it.
MIN_OBSERVATIONS = 3
# A worker's pace is measured over its replies of the last PACE_WINDOW_S seconds while work waited
# for it, once they brought at least PACE_MIN_ROWS rows: an average over many batches, which one
# descheduled batch hardly moves.
PACE_WINDOW_S = 2.0
PACE_MIN_ROWS = 16
# How late a worker's answers came against admission's predictions, over the same window once it
# holds OVERRUN_MIN answers: admission keeps this quantile of it in hand (see :class:`Overrun`).
OVERRUN_MIN = 16
OVERRUN_QUANTILE = 0.9


class Pace:
    """Seconds a row over a sliding window of (when, seconds, rows) spans: a worker's drain rate.

    The window's totals are kept as spans come and go: admission asks for the pace on every
    request, and summing the window each time would cost as many steps as replies in 2 s."""

    __slots__ = ("_spans", "_seconds", "_rows")

    def __init__(self) -> None:
        self._spans: deque[tuple[float, float, int]] = deque()
        self._seconds = 0.0
        self._rows = 0

    def add(self, now: float, seconds: float, rows: int) -> None:
        self._spans.append((now, seconds, rows))
        self._seconds += seconds
        self._rows += rows

    def s_per_row(self, now: float) -> float | None:
        spans = self._spans
        while spans and now - spans[0][0] > PACE_WINDOW_S:
            _, seconds, rows = spans.popleft()
            self._seconds -= seconds
            self._rows -= rows
        return self._seconds / self._rows if self._rows >= PACE_MIN_ROWS else None


class Overrun:
    """How much later than admission predicted a worker's answers came (s), over a sliding window:
    the OVERRUN_QUANTILE of it, never below 0, and 0 until OVERRUN_MIN answers were timed.

    Admission predicts with means (the curve's median, the pace's average), so a request admitted
    just in time is answered late about as often as not. Keeping this much in hand, past
    capacity the queue stays short enough that what is admitted is answered in time, and the
    worker's time goes to those requests rather than to late ones. The quantile is worked out
    again only after a sixteenth of the window has come or gone (admission asks on every request)."""

    __slots__ = ("_late", "_changes", "_quantile")

    def __init__(self) -> None:
        self._late: deque[tuple[float, float]] = deque()
        self._changes = 0
        self._quantile = 0.0

    def add(self, now: float, late_s: float) -> None:
        self._late.append((now, late_s))
        self._changes += 1

    def margin_s(self, now: float) -> float:
        late = self._late
        while late and now - late[0][0] > PACE_WINDOW_S:
            late.popleft()
            self._changes += 1
        if len(late) < OVERRUN_MIN:
            return 0.0
        if self._changes * 16 >= len(late):
            ordered = sorted(x for _, x in late)
            self._quantile = max(0.0, ordered[min(len(ordered) - 1, int(OVERRUN_QUANTILE * len(ordered)))])
            self._changes = 0
        return self._quantile


class WorkerSpeeds:
    def __init__(self, **tracker_options: float) -> None:
        self._tracker_options = tracker_options  # for each (worker, variant)'s SlowdownTracker
        self._trackers: dict[tuple[str, str], SlowdownTracker] = {}
        self._answered_at: dict[str, float] = {}  # worker -> when its latest reply came
        self._waiting: dict[str, int] = {}  # worker -> requests still out on it after its latest reply
        self._paces: dict[str, Pace] = {}
        self._overruns: dict[str, Overrun] = {}

    def keep(self, pairs: Container[tuple[str, str]], workers: Container[str]) -> None:
        """Forget what was measured of (worker, variant) pairs and workers no longer routed."""
        self._trackers = {k: v for k, v in self._trackers.items() if k in pairs}
        self._answered_at = {w: t for w, t in self._answered_at.items() if w in workers}
        self._waiting = {w: n for w, n in self._waiting.items() if w in workers}
        self._paces = {w: p for w, p in self._paces.items() if w in workers}
        self._overruns = {w: o for w, o in self._overruns.items() if w in workers}

    def answered(self, worker_id: str, now: float, rows: int = 0, sent: float | None = None,
                 waiting: int = 0) -> None:
        """A reply from ``worker_id`` for a request ``sent`` then: ``rows`` it computed for it (0 for
        one it did not run) and ``waiting``, the requests still out on the worker after it.

        While requests waited on the worker since its previous reply it was at work all along, so
        the time between the two counts toward its pace, whatever slowed it: a gateway or a
        neighbour on its core takes its share of the time as the model does. One reply of a
        batch brings the batch's time, the others of the same batch their rows. The time counts
        from this request's sending at the latest: those that waited may have left unanswered
        (their deadline passed here) and the worker idled until it came."""
        last = self._answered_at.get(worker_id)
        if last is not None and self._waiting.get(worker_id, 0) > 0:
            pace = self._paces.get(worker_id)
            if pace is None:
                pace = self._paces[worker_id] = Pace()
            pace.add(now, now - max(last, sent if sent is not None else last), rows)
        self._answered_at[worker_id] = now
        self._waiting[worker_id] = waiting

    def s_per_row(self, worker_id: str, now: float) -> float | None:
        """Seconds a row the worker took over its latest busy spells (see :class:`Pace`); None
        until they brought enough rows, and again once they are older than the window."""
        pace = self._paces.get(worker_id)
        return pace.s_per_row(now) if pace is not None else None

    def overran(self, worker_id: str, now: float, late_s: float) -> None:
        """The worker answered a request ``late_s`` later than admission predicted (earlier: < 0).
        One it dropped unrun, as unable to finish in time, counts as answered at its deadline: it
        would have been later still, and leaving it out would measure only the predictions that
        held."""
        overrun = self._overruns.get(worker_id)
        if overrun is None:
            overrun = self._overruns[worker_id] = Overrun()
        overrun.add(now, late_s)

    def margin_s(self, worker_id: str, now: float) -> float:
        """How much later than predicted the worker's answers lately came (see :class:`Overrun`)."""
        overrun = self._overruns.get(worker_id)
        return overrun.margin_s(now) if overrun is not None else 0.0

    def silent_s(self, worker_id: str, now: float) -> float:
        """How long since the worker's latest reply (0 when it has not answered yet)."""
        return now - self._answered_at.get(worker_id, now)

    def observe(self, worker_id: str, reply: InferReply, curve: Callable[[int], float] | None, now: float) -> None:
        """Count one reply's compute time against what the worker's curve predicts for its batch."""
        if curve is None or reply.compute_us <= 0:
            return
        profiled_ms = curve(max(reply.batch_size, 1))
        if profiled_ms <= 0:
            return
        tracker = self._trackers.get((worker_id, reply.variant))
        if tracker is None:  # (not setdefault: a tracker built for every reply costs more than the filter)
            tracker = self._trackers[(worker_id, reply.variant)] = SlowdownTracker(**self._tracker_options)
        tracker.observe(reply.compute_us / 1e6, profiled_ms / 1e3, now)

    def measured(self, worker_id: str, variant: str, now: float) -> float | None:
        """The worker's compute time over its curve, once enough replies measured it; else None."""
        tracker = self._trackers.get((worker_id, variant))
        if tracker is None or tracker.observations < MIN_OBSERVATIONS:
            return None
        return tracker.estimate(now).mean

    def estimate(self, worker_id: str, variant: str, now: float) -> SlowdownEstimate:
        """The slowdown estimate at ``now`` (none measured: as profiled, no variance). What was
        measured returns toward the profile while the worker is sent nothing of the variant (see
        ``SlowdownTracker``): a chooser that avoids a worker measured slow, after a cold start or
        beside a passing neighbour, would otherwise avoid it for good."""
        tracker = self._trackers.get((worker_id, variant))
        return tracker.estimate(now) if tracker else SlowdownEstimate(mean=1.0, variance=0.0)
