"""What the gateway has measured of each worker's speed: its compute time over its profiled curve
(per variant) and when it last answered. Pure and synchronous; the dispatcher feeds it replies."""

from __future__ import annotations

from collections.abc import Callable, Container

from mesh.slowdown import SlowdownEstimate, SlowdownTracker
from protocol.message import InferReply

# Replies a worker's speed is measured over before admission predicts with it.
MIN_OBSERVATIONS = 3


class WorkerSpeeds:
    def __init__(self) -> None:
        self._trackers: dict[tuple[str, str], SlowdownTracker] = {}
        self._answered_at: dict[str, float] = {}  # worker -> when its latest reply came

    def keep(self, pairs: Container[tuple[str, str]], workers: Container[str]) -> None:
        """Forget what was measured of (worker, variant) pairs and workers no longer routed."""
        self._trackers = {k: v for k, v in self._trackers.items() if k in pairs}
        self._answered_at = {w: t for w, t in self._answered_at.items() if w in workers}

    def answered(self, worker_id: str, now: float) -> None:
        self._answered_at[worker_id] = now

    def silent_s(self, worker_id: str, now: float) -> float:
        """How long since the worker's latest reply (0 when it has not answered yet)."""
        return now - self._answered_at.get(worker_id, now)

    def observe(self, worker_id: str, reply: InferReply, curve: Callable[[int], float] | None) -> None:
        """Count one reply's compute time against what the worker's curve predicts for its batch."""
        if curve is None or reply.compute_us <= 0:
            return
        profiled_ms = curve(max(reply.batch_size, 1))
        if profiled_ms <= 0:
            return
        tracker = self._trackers.get((worker_id, reply.variant))
        if tracker is None:  # (not setdefault: a tracker built for every reply costs more than the filter)
            tracker = self._trackers[(worker_id, reply.variant)] = SlowdownTracker()
        tracker.observe(reply.compute_us / 1e6, profiled_ms / 1e3)

    def measured(self, worker_id: str, variant: str) -> float | None:
        """The worker's compute time over its curve, once enough replies measured it; else None."""
        tracker = self._trackers.get((worker_id, variant))
        if tracker is None or tracker.observations < MIN_OBSERVATIONS:
            return None
        return tracker.estimate().mean

    def estimate(self, worker_id: str, variant: str) -> SlowdownEstimate:
        """The slowdown estimate so far (none measured: as profiled, no variance)."""
        tracker = self._trackers.get((worker_id, variant))
        return tracker.estimate() if tracker else SlowdownEstimate(mean=1.0, variance=0.0)
