"""The queue every batching policy keeps: waiting requests in deadline order, and the types a
policy speaks (``Queued`` in, ``BatchDecision`` out, the ``Batcher`` interface). The policies are in
:mod:`mesh.batching`. Imports only the standard library.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Queued:
    """One waiting request. ``deadline`` and ``arrived`` are on the caller's monotonic clock;
    ``rows`` is how many rows (samples) it brings to a batch: batch sizes and latencies count rows."""

    request_id: int
    deadline: float
    arrived: float
    payload: Any = None  # opaque to the batcher
    rows: int = 1


@dataclass(frozen=True, slots=True)
class BatchDecision:
    """What to do after one poll.

    ``batch``: run these now, together (may be empty). ``late``: answer these "late" without
    computing; the policy judged they cannot finish in time (for "proteus", and "edf" unless it
    shed them for a full batch: not even alone). ``wake_at``: set only when ``batch`` is empty and requests are still waiting; poll
    again no later than this instant.
    """

    batch: tuple[Queued, ...]
    late: tuple[Queued, ...]
    wake_at: float | None


class Batcher(Protocol):
    """What a worker (or the simulator) drives, whatever the policy.

    The caller pushes requests as they arrive, polls whenever it is idle (and at ``wake_at``),
    runs each returned batch, and reports how the batch went with :meth:`feedback` (its rows, and
    whether it finished after a deadline).
    """

    def push(self, item: Queued) -> bool: ...

    def poll(self, now: float) -> BatchDecision: ...

    def head_deadline(self) -> float | None: ...

    def __len__(self) -> int: ...

    def feedback(self, batch_size: int, finished_late: bool) -> None: ...


def power_of_two_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes 1, 2, 4, ... below ``max_batch``, then ``max_batch`` itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return (*sizes, max_batch)


class DeadlineQueue:
    """The waiting requests in deadline order, ties in arrival order, at most ``max_queue``.

    Every policy keeps its queue this way, so each batch is the earliest-deadline prefix and
    the requests that can no longer make it sit at the front. With one SLO per variant this is
    also arrival order.
    """

    def __init__(
        self, *, max_batch: int, latency_s: Callable[[int], float], max_queue: int, wake_slack_s: float = 0.0
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if wake_slack_s < 0:
            raise ValueError(f"wake_slack_s must not be negative, got {wake_slack_s}")
        self._max_batch = max_batch
        self._latency_s = latency_s
        self._max_queue = max_queue
        # A waiting policy plans to wake this long before the last instant its batch still
        # fits, so a timer that fires a little late does not turn the wait into a miss.
        self._wake_slack_s = wake_slack_s
        # (deadline, push order, item): ties on deadline go in arrival order; the item itself
        # is never compared because push order is unique.
        self._heap: list[tuple[float, int, Queued]] = []
        self._seq = itertools.count()
        self._multi_row = 0  # queued requests of more than one row: while none, rows are requests
        self.rows = 0  # rows waiting in all

    def push(self, item: Queued) -> bool:
        """Queue ``item``; False (and nothing queued) when the queue is full."""
        if len(self._heap) >= self._max_queue:
            return False
        heapq.heappush(self._heap, (item.deadline, next(self._seq), item))
        self.rows += item.rows
        if item.rows > 1:
            self._multi_row += 1
        return True

    def head_deadline(self) -> float | None:
        """The earliest deadline waiting, or None when the queue is empty."""
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def feedback(self, batch_size: int, finished_late: bool) -> None:
        """How the last batch went; only a policy that adapts to it overrides this."""

    def _drop_heads(self, now: float, alone: bool = True) -> tuple[Queued, ...]:
        """Remove, in deadline order, every request that cannot finish by its deadline if run
        alone from ``now`` (with ``alone`` False: every request past its deadline). Written
        ``now > deadline - latency``, as every fit test is, so that polling at a ``wake_at``
        computed the same way never rounds into a drop."""
        heap, dropped = self._heap, []
        while heap and now > heap[0][0] - (self._latency_s(heap[0][2].rows) if alone else 0.0):
            dropped.append(self._pop())
        return tuple(dropped)

    def _pop(self) -> Queued:
        item = heapq.heappop(self._heap)[2]
        self.rows -= item.rows
        if item.rows > 1:
            self._multi_row -= 1
        return item

    def _take(self, size: int) -> tuple[Queued, ...]:
        return tuple(self._pop() for _ in range(size))

    def _prefix_rows(self) -> list[int]:
        """Rows of the first 1, 2, ... waiting requests in deadline order, for as many as fit
        ``max_batch`` rows together (always the first, however many rows it has). Not empty
        while a request waits."""
        heap = self._heap
        if not self._multi_row:
            return list(range(1, min(self._max_batch, len(heap)) + 1))
        # Only requests of several rows make the prefix differ from a count: look at the first
        # max_batch in order (no more can fit) and put them back.
        first = [heapq.heappop(heap) for _ in range(min(self._max_batch, len(heap)))]
        for entry in first:
            heapq.heappush(heap, entry)
        rows: list[int] = []
        for _, _, item in first:
            total = (rows[-1] if rows else 0) + item.rows
            if rows and total > self._max_batch:
                break
            rows.append(total)
        return rows

    def _within(self, prefix: list[int], rows: int) -> int:
        """How many of the first requests fit ``rows`` rows together (at least one)."""
        return max(1, sum(1 for r in prefix if r <= rows))

    def _full(self, prefix: list[int], count: int) -> bool:
        """Whether the first ``count`` requests make a full batch: ``max_batch`` rows, or the next
        waiting request would not fit beside them."""
        return prefix[count - 1] >= self._max_batch or (count == len(prefix) < len(self._heap))
