"""Deadline-aware batching: which waiting requests a worker runs together now, and which are late.

Four policies behind one interface (:class:`Batcher`), chosen per variant deployment by name
with :func:`make_batcher`: "edf" (work-conserving, the default), "proteus" (adaptive batching
that waits to fill a batch), and the baselines "aimd" (Clipper) and "nexus". A pure,
synchronous core: time is always passed in as ``now`` (seconds on the caller's monotonic
clock). Batch sizes, ``max_batch`` and the latency model count rows: a request of 8 rows fills
8 of a batch's places (one that alone holds more than ``max_batch`` runs alone). Used by
gpu-let workers and by the simulators (with :func:`serving_options`, as a worker builds them).
Imports only the standard library and :mod:`mesh.batch_queue`: no clock, no asyncio, no zmq, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mesh.batch_queue import BatchDecision, Batcher, DeadlineQueue, Queued, power_of_two_sizes

POLICIES = ("edf", "proteus", "aimd", "nexus")
# What a worker's "edf" batcher lets a batch shrunk to save its head cost per row over the full
# batch before it sheds the head instead (see DeadlineBatcher's ``shed_margin``).
SHED_MARGIN = 0.1
# A worker is behind its arrivals, for shedding, while this many full batches of rows wait.
BEHIND_BATCHES = 2

__all__ = ["POLICIES", "SHED_MARGIN", "serving_options", "AIMDBatcher", "BatchDecision", "Batcher", "DeadlineBatcher", "NexusBatcher",
           "ProteusBatcher", "Queued", "make_batcher", "power_of_two_sizes"]


def _check_sizes(sizes: Sequence[int] | None, max_batch: int) -> tuple[int, ...]:
    if sizes is None:
        return power_of_two_sizes(max_batch)
    ordered = tuple(sorted(set(sizes)))
    if not ordered or ordered[0] != 1 or ordered[-1] != max_batch:
        raise ValueError(f"batch sizes must run from 1 to max_batch={max_batch}, got {tuple(sizes)}")
    return ordered


class DeadlineBatcher(DeadlineQueue):
    """Policy "edf": earliest-deadline-first, work-conserving, shrinking the batch to fit.

    Not thread-safe: one owner pushes and polls. Invariants of every decision returned by
    :meth:`poll` at ``now``:

    * ``len(batch) <= max_batch`` and the batch is a prefix of the queue in deadline order;
    * every batched request fits: ``now <= deadline - latency_s(len(batch))``;
    * every late request could not have fitted alone: ``now > deadline - latency_s(1)``, or (with
      ``shed_margin``) it was shed: it could not have fitted a full batch;
    * each pushed request leaves the batcher exactly once, in a batch or as late.

    With ``shed_margin`` (a worker's), while ``BEHIND_BATCHES`` full batches wait and the head cannot
    afford a full one, the head goes late if the batch it affords costs over ``1 + shed_margin``
    times as much per row: shrinking a worker's batches while it is behind makes it fall further behind.

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
        wake_slack_s: float = 0.0,
        shed_margin: float | None = None,
    ) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        if shed_margin is not None and not shed_margin >= 0:
            raise ValueError(f"shed_margin must not be negative, got {shed_margin}")
        super().__init__(max_batch=max_batch, latency_s=latency_s, max_queue=max_queue, wake_slack_s=wake_slack_s)
        self._max_wait_s = max_wait_s
        self._shed_margin = shed_margin

    def poll(self, now: float) -> BatchDecision:
        """Decide at ``now``: the batch to run, the requests already late, when to look again."""
        heap = self._heap
        # Hopeless requests have the earliest deadlines, so they sit at the front of the heap.
        late = self._drop_heads(now)
        if self._shed_margin is not None:
            late += self._shed_for_full_batch(now, self._shed_margin)
        if not heap:
            return BatchDecision(batch=(), late=late, wake_at=None)

        # Every candidate's deadline is at least the head's, so fitting the head fits them all.
        # Search down from the cap rather than bisecting, so a latency model that is not
        # monotonic still yields the largest batch that fits.
        head_deadline = heap[0][0]
        prefix = self._prefix_rows()
        alone = self._latency_s(prefix[0])
        size = self._largest_fit(now, prefix, head_deadline)

        if self._dispatch_now(now, size, prefix, alone, head_deadline):
            return BatchDecision(batch=self._take(size), late=late, wake_at=None)
        return BatchDecision(batch=(), late=late, wake_at=self._wake_at(prefix[size - 1], alone, head_deadline))

    def _largest_fit(self, now: float, prefix: list[int], head_deadline: float) -> int:
        """How many of the first requests the head can afford to run with (at least one)."""
        size = len(prefix)
        while size > 1 and now > head_deadline - self._latency_s(prefix[size - 1]):
            size -= 1
        return size

    def _shed_for_full_batch(self, now: float, margin: float) -> tuple[Queued, ...]:
        """The heads shed so that a full waiting batch runs full (see the class docstring), and any
        request that cannot finish alone found behind them."""
        heap, shed = self._heap, []
        while heap:
            if self.rows < BEHIND_BATCHES * self._max_batch:
                break  # not behind: a burst that one batch or two clear, for which a batch shrinks as ever
            prefix = self._prefix_rows()
            # The full batch, head included: with requests of several rows it may hold fewer than
            # max_batch rows (the next request would not fit), and the batch run after a shed differs.
            head_deadline, full = heap[0][0], prefix[-1]
            if now <= head_deadline - self._latency_s(full):
                break  # the head affords the full batch
            rows = prefix[self._largest_fit(now, prefix, head_deadline) - 1]
            if self._latency_s(rows) * full <= (1.0 + margin) * self._latency_s(full) * rows:
                break  # saving the head costs the batch little
            shed.append(self._pop())
            shed.extend(self._drop_heads(now))
        return tuple(shed)

    def _dispatch_now(self, now: float, size: int, prefix: list[int], alone: float, head_deadline: float) -> bool:
        if self._max_wait_s == 0 or self._full(prefix, size):
            return True
        # The deadline, not a lack of requests, limits the batch: later it can only shrink.
        if size < len(prefix):
            return True
        return now >= self._wake_at(prefix[size - 1], alone, head_deadline)

    def _wake_at(self, rows: int, alone: float, head_deadline: float) -> float:
        # Every waiting request is in the candidate batch here (the batch is not full), so the
        # oldest arrival among them is the oldest in the queue.
        oldest = min(entry[2].arrived for entry in self._heap)
        # Waking no later than the head's deadline minus the slower of running alone and
        # running the current batch keeps both the head and the batch feasible at wake-up.
        last_start = head_deadline - max(alone, self._latency_s(rows))
        return min(oldest + self._max_wait_s, last_start - self._wake_slack_s)


class ProteusBatcher(DeadlineQueue):
    """Policy "proteus": fill the largest allowed batch the queue can, waiting as long as the head allows.

    Allowed sizes default to 1, 2, 4, ... and ``max_batch``. At each poll: requests that
    cannot finish even alone are answered late; the candidate is the largest allowed size the
    queue fills completely; while the queue holds less than ``max_batch`` the batcher waits
    until the head's latest start (its deadline minus the candidate's latency) for more
    requests, then runs the largest allowed batch that still fits the head. A full
    ``max_batch`` runs at once. A request queued for twice its budget is past its deadline, so
    the hopeless-head rule drops it too.

    Not thread-safe. Invariants: batched requests fit (``now <= deadline - latency_s(len(batch))``)
    and ``len(batch)`` is an allowed size; late requests could not have fitted alone; polling
    at ``wake_at``, or up to ``wake_slack_s`` after it, with no new arrival runs the batch it
    waited for; each pushed request leaves exactly once.
    """

    def __init__(
        self,
        *,
        max_batch: int,
        latency_s: Callable[[int], float],
        sizes: Sequence[int] | None = None,
        max_queue: int = 10_000,
        wake_slack_s: float = 0.0,
    ) -> None:
        super().__init__(max_batch=max_batch, latency_s=latency_s, max_queue=max_queue, wake_slack_s=wake_slack_s)
        self._sizes = _check_sizes(sizes, max_batch)

    def poll(self, now: float) -> BatchDecision:
        late = self._drop_heads(now)
        if not self._heap:
            return BatchDecision(batch=(), late=late, wake_at=None)
        head = self._heap[0][0]
        prefix = self._prefix_rows()
        alone = self._latency_s(prefix[0])
        # The largest allowed size (in rows) the waiting requests fill, and those requests.
        fill = max(s for s in self._sizes if s <= prefix[-1])
        count = self._within(prefix, fill)
        if not self._full(prefix, len(prefix)) and fill < self._max_batch:
            # Also never past the head's own last start alone, so waiting cannot make it late.
            wake = head - max(alone, self._latency_s(prefix[count - 1])) - self._wake_slack_s
            if now < wake:
                return BatchDecision(batch=(), late=late, wake_at=wake)
        # Due now: an arrival (or the timer) made the filled batch too slow for the head, so run
        # the largest allowed size that still fits it. The head alone always does, or it was late.
        for size in reversed(self._sizes):
            count = self._within(prefix, min(size, fill))
            if now <= head - self._latency_s(prefix[count - 1]):
                break
        return BatchDecision(batch=self._take(count), late=late, wake_at=None)


class NexusBatcher(DeadlineQueue):
    """Policy "nexus" (baseline): run only full batches or when the batch it has is about to expire.

    Early drop with a sliding window: the window is the batch the queue would run now,
    ``min(len(queue), max_batch)``; while the head cannot finish within that batch's latency it
    is answered late, rather than the batch being shrunk to fit it (so an arrival that grows a
    waiting batch past what its head can afford costs the head). A full ``max_batch`` runs at
    once; a partial batch runs when its timer fires at the head's deadline minus the batch's
    latency.

    Not thread-safe. Invariants: batched requests fit (``now <= deadline - latency_s(len(batch))``);
    a late request did not fit the window it was judged in; each pushed request leaves exactly
    once.
    """

    def __init__(
        self, *, max_batch: int, latency_s: Callable[[int], float], max_queue: int = 10_000, wake_slack_s: float = 0.0
    ) -> None:
        super().__init__(max_batch=max_batch, latency_s=latency_s, max_queue=max_queue, wake_slack_s=wake_slack_s)

    def poll(self, now: float) -> BatchDecision:
        heap = self._heap
        late: list[Queued] = []
        while heap:
            window = self._prefix_rows()
            if now <= heap[0][0] - max(self._latency_s(window[0]), self._latency_s(window[-1])):
                break
            late.append(self._pop())
        if not heap:
            return BatchDecision(batch=(), late=tuple(late), wake_at=None)
        wake = heap[0][0] - max(self._latency_s(window[0]), self._latency_s(window[-1])) - self._wake_slack_s
        if self._full(window, len(window)) or now >= wake:
            return BatchDecision(batch=self._take(len(window)), late=tuple(late), wake_at=None)
        return BatchDecision(batch=(), late=tuple(late), wake_at=wake)


class AIMDBatcher(DeadlineQueue):
    """Policy "aimd" (Clipper baseline): a batch cap tuned by feedback, no waiting, lazy drop.

    The cap climbs a ladder of allowed sizes (default 1, 2, 4, ... ``max_batch``) starting at
    the bottom: one rung up after an on-time batch that filled the cap, one rung down after a
    batch that finished late. A poll answers late only the requests already past their
    deadline, then runs the earliest ``min(len(queue), cap)`` at once; it never waits, so a
    batched request may still finish late.

    Not thread-safe. Invariants: ``len(batch) <= cap <= max_batch``; ``wake_at`` is always
    None; late requests are past their deadline (``now > deadline``); each pushed request
    leaves exactly once.
    """

    def __init__(
        self,
        *,
        max_batch: int,
        latency_s: Callable[[int], float],
        sizes: Sequence[int] | None = None,
        max_queue: int = 10_000,
    ) -> None:
        super().__init__(max_batch=max_batch, latency_s=latency_s, max_queue=max_queue)
        self._sizes = _check_sizes(sizes, max_batch)
        self._rung = 0

    @property
    def cap(self) -> int:
        """The largest batch the next poll may run."""
        return self._sizes[self._rung]

    def poll(self, now: float) -> BatchDecision:
        late = self._drop_heads(now, alone=False)  # lazy: only those already past their deadline
        if not self._heap:
            return BatchDecision(batch=(), late=late, wake_at=None)
        return BatchDecision(batch=self._take(self._within(self._prefix_rows(), self.cap)), late=late, wake_at=None)

    def feedback(self, batch_size: int, finished_late: bool) -> None:
        if finished_late:
            self._rung = max(0, self._rung - 1)
        elif batch_size >= self.cap:
            # A smaller batch than the cap says nothing about whether the cap is too low.
            self._rung = min(len(self._sizes) - 1, self._rung + 1)


def serving_options(policy: str) -> dict[str, float]:
    """What a worker passes :func:`make_batcher` beside its policy (the simulators pass the same)."""
    return {"shed_margin": SHED_MARGIN} if policy == "edf" else {}


def make_batcher(
    policy: str,
    *,
    max_batch: int,
    latency_s: Callable[[int], float],
    max_queue: int = 10_000,
    max_wait_s: float = 0.0,
    wake_slack_s: float = 0.0,
    shed_margin: float | None = None,
) -> Batcher:
    """The batcher for ``policy`` (one of :data:`POLICIES`).

    ``max_wait_s`` and ``shed_margin`` apply to "edf" only. ``wake_slack_s`` is how long before the last instant a
    waiting batch still fits the batcher asks to be woken (a real timer fires late; the
    simulator's does not); "aimd" never waits, so it has no use for it.
    """
    if policy == "edf":
        return DeadlineBatcher(max_batch=max_batch, latency_s=latency_s, max_wait_s=max_wait_s, max_queue=max_queue,
                               wake_slack_s=wake_slack_s, shed_margin=shed_margin)
    if policy not in POLICIES:
        raise ValueError(f"unknown batching policy {policy!r}; known: {', '.join(POLICIES)}")
    if max_wait_s:
        raise ValueError(f"max_wait_s applies only to the edf policy, not {policy!r}")
    if shed_margin is not None:
        raise ValueError(f"shed_margin applies only to the edf policy, not {policy!r}")
    if policy == "proteus":
        return ProteusBatcher(max_batch=max_batch, latency_s=latency_s, max_queue=max_queue, wake_slack_s=wake_slack_s)
    if policy == "aimd":
        return AIMDBatcher(max_batch=max_batch, latency_s=latency_s, max_queue=max_queue)
    return NexusBatcher(max_batch=max_batch, latency_s=latency_s, max_queue=max_queue, wake_slack_s=wake_slack_s)
