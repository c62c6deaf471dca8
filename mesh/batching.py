"""Deadline-aware batching: which waiting requests a worker runs together now, and which are late.

A pure, synchronous core: time is always passed in as ``now`` (seconds on the caller's
monotonic clock). Used by gpu-let workers and by the simulator. Imports only the standard
library: no clock, no asyncio, no zmq, no torch.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Queued:
    """One waiting request. ``deadline`` and ``arrived`` are on the caller's monotonic clock."""

    request_id: int
    deadline: float
    arrived: float
    payload: Any = None  # opaque to the batcher


@dataclass(frozen=True, slots=True)
class BatchDecision:
    """What to do after one poll.

    ``batch``: run these now, together (may be empty). ``late``: answer these "late" without
    computing; they cannot finish in time even alone. ``wake_at``: set only when ``batch`` is
    empty and requests are still waiting; poll again no later than this instant.
    """

    batch: tuple[Queued, ...]
    late: tuple[Queued, ...]
    wake_at: float | None


class DeadlineBatcher:
    """Earliest-deadline-first batching under a predicted batch latency.

    Not thread-safe: one owner pushes and polls. Invariants of every decision returned by
    :meth:`poll` at ``now``:

    * ``len(batch) <= max_batch`` and the batch is a prefix of the queue in deadline order;
    * every batched request fits: ``now <= deadline - latency_s(len(batch))``;
    * every late request could not have fitted alone: ``now > deadline - latency_s(1)``;
    * each pushed request leaves the batcher exactly once, in a batch or as late.

    "Fits" is written ``now <= deadline - latency`` throughout (rather than
    ``now + latency <= deadline``) so that polling exactly at a returned ``wake_at`` finds the
    batch it waited for still fitting, with no rounding surprise.
    """

    def __init__(
        self,
        *,
        max_batch: int,
        latency_s: Callable[[int], float],
        max_wait_s: float = 0.0,
        max_queue: int = 10_000,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self._max_batch = max_batch
        self._latency_s = latency_s
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        # (deadline, push order, item): ties on deadline go in arrival order; the item itself
        # is never compared because push order is unique.
        self._heap: list[tuple[float, int, Queued]] = []
        self._seq = itertools.count()

    def push(self, item: Queued) -> bool:
        """Queue ``item``; False (and nothing queued) when the queue is full."""
        if len(self._heap) >= self._max_queue:
            return False
        heapq.heappush(self._heap, (item.deadline, next(self._seq), item))
        return True

    def poll(self, now: float) -> BatchDecision:
        """Decide at ``now``: the batch to run, the requests already late, when to look again."""
        heap = self._heap
        # Hopeless requests have the earliest deadlines, so they sit at the front of the heap.
        alone = self._latency_s(1)
        late: list[Queued] = []
        while heap and now > heap[0][0] - alone:
            late.append(heapq.heappop(heap)[2])
        if not heap:
            return BatchDecision(batch=(), late=tuple(late), wake_at=None)

        # Every candidate's deadline is at least the head's, so fitting the head fits them all.
        # Search down from the cap rather than bisecting, so a latency model that is not
        # monotonic still yields the largest batch that fits.
        head_deadline = heap[0][0]
        cap = min(self._max_batch, len(heap))
        size = cap
        while size > 1 and now > head_deadline - self._latency_s(size):
            size -= 1

        if self._dispatch_now(now, size, cap, alone, head_deadline):
            batch = tuple(heapq.heappop(heap)[2] for _ in range(size))
            return BatchDecision(batch=batch, late=tuple(late), wake_at=None)
        return BatchDecision(batch=(), late=tuple(late), wake_at=self._wake_at(size, alone, head_deadline))

    def _dispatch_now(self, now: float, size: int, cap: int, alone: float, head_deadline: float) -> bool:
        if size == self._max_batch or self._max_wait_s == 0:
            return True
        # The deadline, not a lack of requests, limits the batch: later it can only shrink.
        if size < cap:
            return True
        return now >= self._wake_at(size, alone, head_deadline)

    def _wake_at(self, size: int, alone: float, head_deadline: float) -> float:
        # Every waiting request is in the candidate batch here (size == len(queue)), so the
        # oldest arrival among them is the oldest in the queue.
        oldest = min(entry[2].arrived for entry in self._heap)
        # Waking no later than the head's deadline minus the slower of running alone and
        # running the current batch keeps both the head and the batch feasible at wake-up.
        last_start = head_deadline - max(alone, self._latency_s(size))
        return min(oldest + self._max_wait_s, last_start)

    def head_deadline(self) -> float | None:
        """The earliest deadline waiting, or None when the queue is empty."""
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
