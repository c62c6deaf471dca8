"""One gpu-let's scheduling step: queue -> batch -> run, over the variants it serves.

A gpu-let holds one batcher per variant (time-shared partitions hold several). Each step
picks the variant whose earliest deadline comes first, asks its batcher what to do, answers
hopeless requests "late" without computing them, and says which batch runs now or when to
look again. The worker process, ``letmesh simulate`` and the benchmarks' simulators drive this
one object; none keeps a copy of the rule. Pure and synchronous: time comes in as ``now``.
Imports only the standard library and :mod:`mesh.batching`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from mesh.batching import Batcher, Queued

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Step(Generic[K]):
    """What one step decided.

    ``late``: (variant, request) pairs to answer "late" now, unrun. ``key`` and ``batch``: the
    batch to run now (``batch`` empty when none). ``wake_at``: when no batch runs but requests
    wait, step again no later than this. All three empty/None: nothing is queued.
    """

    late: tuple[tuple[K, Queued], ...]
    key: K | None
    batch: tuple[Queued, ...]
    wake_at: float | None

    @property
    def idle(self) -> bool:
        return not self.batch and self.wake_at is None


class GpuletScheduler(Generic[K]):
    """The batchers of one gpu-let, keyed by variant. Single-threaded; not safe to share."""

    def __init__(self, batchers: Mapping[K, Batcher] | None = None) -> None:
        self._batchers: dict[K, Batcher] = dict(batchers or {})

    def add(self, key: K, batcher: Batcher) -> None:
        self._batchers[key] = batcher

    def __contains__(self, key: object) -> bool:
        return key in self._batchers

    def __getitem__(self, key: K) -> Batcher:
        return self._batchers[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._batchers)

    def __len__(self) -> int:
        """Requests waiting across every variant."""
        return sum(len(b) for b in self._batchers.values())

    def push(self, key: K, item: Queued) -> bool:
        """Queue ``item`` for variant ``key``; False when that variant's queue is full."""
        return self._batchers[key].push(item)

    def next_key(self) -> K | None:
        """The variant whose earliest waiting deadline comes first, or None when all are empty."""
        best: K | None = None
        best_deadline = 0.0
        for key, b in self._batchers.items():
            head = b.head_deadline()
            if head is not None and (best is None or head < best_deadline):
                best, best_deadline = key, head
        return best

    def step(self, now: float) -> Step[K]:
        """Answer hopeless requests and pick the batch to run; repeats while a poll only drops."""
        late: list[tuple[K, Queued]] = []
        while True:
            key = self.next_key()
            if key is None:
                return Step(tuple(late), None, (), None)
            decision = self._batchers[key].poll(now)
            late.extend((key, item) for item in decision.late)
            if decision.batch:
                return Step(tuple(late), key, decision.batch, None)
            if not decision.late:
                return Step(tuple(late), None, (), decision.wake_at)
            # The poll only dropped hopeless requests (each poll removes some, so this ends):
            # the next head may be runnable now.

    def finished(self, key: K, batch_size: int, finished_late: bool) -> None:
        """How a batch of ``key`` went (adaptive policies learn from it)."""
        self._batchers[key].feedback(batch_size, finished_late)
