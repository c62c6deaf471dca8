"""Make-before-break moves from the running workers to a new layout. Pure and synchronous.

A transition starts the workers the new layout adds and waits until every one is ready; only
then does routing switch (the workers it retires are marked draining: they finish what they
hold and take nothing new), and after a drain period they are stopped. Workers that the new
layout keeps unchanged are never touched. If a new worker does not come up in time the
transition is abandoned: the new workers are stopped and the old layout keeps serving, so a
re-plan never drops a request. A transition may start from a mesh whose previous move had not
finished: workers still starting that the new layout keeps are waited for like new ones.

Where a device's memory cannot hold the leaving workers beside the new ones (``room_first``, chosen
by ``controller.make_room``), the move breaks before it makes on that device only: those leaving
workers drain and stop first, and the new workers there start once they, and any worker told to
stop before the move (``departing``), are gone. Their variants
may have no worker meanwhile (requests for them are refused as unavailable, not lost); starting
beside them instead would have the kernel kill workers, kept ones included, until memory frees.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.placement import PlannedWorker
from protocol.types import Partition


@dataclass(frozen=True, slots=True)
class DesiredWorker:
    """One gpu-let of a plan: a partition of ``size`` (cores, or MPS %) serving these variants."""

    agent_id: str
    device_id: str
    kind: str
    size: int
    variants: tuple[str, ...]
    batches: tuple[tuple[str, int], ...] = ()  # the plan's batch size per variant
    # The request rate per variant the plan routes to this gpu-let; not part of its shape, so a
    # plan that only moves load between replicas changes routing weights, not workers.
    rates: tuple[tuple[str, float], ...] = ()
    # The batch per variant the plan's rates need (``batches`` may allow more: see
    # ``replanner.worker_batches``); a worker capped at no less carries them. Empty: ``batches``.
    need: tuple[tuple[str, int], ...] = ()


class Phase(enum.Enum):
    MAKING_ROOM = "making room"  # leaving workers of ``room_first`` drain and stop before new ones start
    STARTING = "starting"
    DRAINING = "draining"
    DONE = "done"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class Actions:
    start: tuple[PlannedWorker, ...] = ()
    drain: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()


def _shape(w: PlannedWorker) -> tuple:
    size = len(w.partition.cores) if w.partition.kind != "cuda" else w.partition.mps_percent
    return (w.agent_id, w.partition.device_id, w.partition.kind, size, tuple(sorted(w.variants)))


def as_desired(w: PlannedWorker) -> DesiredWorker:
    """The gpu-let a running worker is, in the plan's terms (for a planner to keep it); its
    ``batches``: the largest it was started to run."""
    _, device_id, kind, size, variants = _shape(w)
    return DesiredWorker(w.agent_id, device_id, kind, size, variants, tuple(sorted(w.batches)))


def _desired_shape(d: DesiredWorker) -> tuple:
    return (d.agent_id, d.device_id, d.kind, d.size, tuple(sorted(d.variants)))


# While making room the leaving workers' variants may have no other worker: from their drain's start
# until the new workers are ready, requests for them are answered 503. So their drain lasts only as
# long as the routing table takes to reach the gateways and the requests already sent to reach the
# worker (a stopping worker answers every request it has read), at most ``drain_s``.
ROOM_DRAIN_S = 0.5


@dataclass(slots=True)
class Transition:
    keep: tuple[str, ...]
    new: tuple[PlannedWorker, ...]
    retire: tuple[str, ...]
    started_at: float
    start_timeout_s: float
    drain_s: float
    phase: Phase = Phase.STARTING
    drain_started: float = 0.0
    issued: set[str] = field(default_factory=set)
    awaiting: tuple[str, ...] = ()  # kept workers that were still starting when it began
    discard: tuple[str, ...] = ()  # workers still starting that the new layout does not want
    rates: dict[str, dict[str, float]] = field(default_factory=dict)  # the new layout's split (plan_rates)
    # Leaving workers that go before the new workers on their devices start (see the module), and
    # those new workers; set by ``make_room`` before the first step.
    room_first: tuple[str, ...] = ()
    held: tuple[str, ...] = ()
    room_stopped: bool = False
    departing: tuple[str, ...] = ()  # workers stopping already (not of this move) that are waited for too

    def make_room(self, leaving: Sequence[PlannedWorker], departing: Sequence[PlannedWorker] = ()) -> None:
        """Stop ``leaving`` (workers of ``retire`` or ``discard``), and wait for ``departing`` (workers
        asked to stop before this move) to exit, before starting the new workers on their devices."""
        leaving = [w for w in leaving if w.worker_id in self.retire or w.worker_id in self.discard]
        if not (leaving or departing) or self.issued:
            return
        devices = {(w.agent_id, w.partition.device_id) for w in (*leaving, *departing)}
        self.room_first = tuple(sorted(w.worker_id for w in leaving))
        self.departing = tuple(sorted(w.worker_id for w in departing))
        self.held = tuple(w.worker_id for w in self.new if (w.agent_id, w.partition.device_id) in devices)
        if self.held:
            self.phase = Phase.MAKING_ROOM

    @property
    def room_serving(self) -> tuple[str, ...]:
        """Workers of ``room_first`` that serve until they drain (the others were still starting)."""
        return tuple(w for w in self.room_first if w not in self.discard)

    def routing(self, serving: Mapping[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """worker id -> {variant: rate} for the gateways now, given the split routed so far. Until the
        switch the old layout serves as it was planned (a new worker gets its new rate, used once it
        is ready); from the switch on, the new layout's; an abandoned move leaves the old one."""
        if self.phase in (Phase.DRAINING, Phase.DONE):
            return self.rates
        before = {w: r for w, r in serving.items()
                  if (w in self.keep or w in self.retire) and w not in self.room_first}
        return {**self.rates, **before}

    def step(self, ready: set[str], now: float, present: set[str] | frozenset[str] = frozenset()) -> Actions:
        """Advance with the set of ready worker ids (and, while making room, which workers of
        ``room_first`` and ``departing`` are still there); returns what to do now (each action once)."""
        if self.phase is Phase.MAKING_ROOM:
            return self._make_room(ready, now, present)
        if self.phase is Phase.STARTING:
            pending = [w for w in self.new if w.worker_id not in self.issued]
            discard = tuple(w for w in self.discard if w not in self.issued)  # they serve nothing yet
            self.issued.update(w.worker_id for w in pending)
            self.issued.update(discard)
            if all(w.worker_id in ready for w in self.new) and all(w in ready for w in self.awaiting):
                self.phase = Phase.DRAINING
                self.drain_started = now
                return Actions(start=tuple(pending), drain=self._draining(), stop=discard)
            if now - self.started_at > self.start_timeout_s:
                self.phase = Phase.ABANDONED
                stuck = tuple(w for w in self.awaiting if w not in ready)
                return Actions(stop=tuple(w.worker_id for w in self.new) + stuck + discard)
            return Actions(start=tuple(pending), stop=discard)
        if self.phase is Phase.DRAINING and now - self.drain_started >= self.drain_s:
            self.phase = Phase.DONE
            return Actions(stop=self._draining())
        return Actions()

    def _make_room(self, ready: set[str], now: float, present: set[str] | frozenset[str]) -> Actions:
        """Drain ``room_first`` (at once), stop it (after ROOM_DRAIN_S at most), then start the held
        new workers once all of it, and ``departing``, is gone; the others start at once. The start
        timeout counts from then: a leaving worker slow to exit is no new worker slow to start."""
        drain: tuple[str, ...] = ()
        stop = tuple(w for w in self.discard if w not in self.issued)  # (those of room_first too: at once)
        if not self.issued:
            drain, self.drain_started = self.room_serving, now
        pending = tuple(w for w in self.new if w.worker_id not in self.issued and w.worker_id not in self.held)
        self.issued.update(w.worker_id for w in pending)
        self.issued.update(stop)
        self.issued.update(self.room_first)
        if not self.room_stopped and (now - self.drain_started >= min(self.drain_s, ROOM_DRAIN_S)
                                      or not self.room_serving):
            self.room_stopped = True
            stop += self.room_serving
        if self.room_stopped and not present & {*self.room_first, *self.departing}:
            self.phase, self.started_at = Phase.STARTING, now
            later = self.step(ready, now)
            return Actions(start=pending + later.start, drain=drain + later.drain, stop=stop + later.stop)
        if now - self.started_at > self.drain_s + self.start_timeout_s:
            self.phase = Phase.ABANDONED  # the leaving workers did not go: what was started goes
            stuck = tuple(w for w in self.awaiting if w not in ready)
            return Actions(drain=drain, stop=tuple(dict.fromkeys((*stop, *(w.worker_id for w in self.new), *stuck))))
        return Actions(start=pending, drain=drain, stop=stop)

    def _draining(self) -> tuple[str, ...]:
        return tuple(w for w in self.retire if w not in self.room_first)

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.ABANDONED)


def plan_rates(workers: Sequence[PlannedWorker], desired: Sequence[DesiredWorker]) -> dict[str, dict[str, float]]:
    """worker id -> {variant: the rate the plan routes to it}, matching each gpu-let of the plan to
    a worker of the same shape (replicas of one shape in worker-id order). Workers with no
    matching gpu-let, and gpu-lets the plan gave no rates, are left out."""
    pool = sorted(workers, key=lambda w: w.worker_id)
    out: dict[str, dict[str, float]] = {}
    for d in sorted(desired, key=_desired_shape):
        match = next((w for w in pool if _shape(w) == _desired_shape(d)), None)
        if match is None:
            continue
        pool.remove(match)
        rates = {v: r for v, r in d.rates if r > 0}
        if rates:
            out[match.worker_id] = rates
    return out


def begin(
    current: Sequence[PlannedWorker],
    desired: Sequence[DesiredWorker],
    device_cores: Mapping[tuple[str, str], int],
    *,
    generation: int,
    now: float,
    ready: set[str] | None = None,
    start_timeout_s: float = 60.0,
    drain_s: float = 2.0,
) -> Transition | None:
    """The transition from ``current`` to ``desired``; None when they are the same layout.
    ``ready``: the ids of ``current`` that serve now (all of them when None); a kept worker that
    is not ready yet is waited for before anything is retired."""
    remaining = list(current)
    keep: list[PlannedWorker] = []
    todo: list[DesiredWorker] = []
    # Among gpu-lets of one shape, those needing the largest batches choose first, each taking the
    # least capped worker that runs them: first come, a small need could take the only worker a
    # larger one fits.
    for d in sorted(desired, key=lambda d: (_desired_shape(d), sorted((-b for _, b in d.need or d.batches)))):
        # Never two kept workers on one core: a worker started on a leaving worker's cores, in a
        # move superseded before it switched, would share them with it for good.
        fits = [(i, w) for i, w in enumerate(remaining) if _shape(w) == _desired_shape(d) and _batches_fit(w, d)
                and not _overlaps(w, keep)]
        match = min(fits, key=lambda f: (_cap_total(f[1]), f[0]), default=(0, None))[1]
        if match is None:
            todo.append(d)
        else:
            remaining.remove(match)
            keep.append(match)
    if not todo and not remaining:
        return None
    new = _assign(todo, keep, remaining, device_cores, generation)
    return Transition(
        keep=tuple(w.worker_id for w in keep),
        new=tuple(new),
        retire=tuple(sorted(w.worker_id for w in remaining if ready is None or w.worker_id in ready)),
        started_at=now,
        start_timeout_s=start_timeout_s,
        drain_s=drain_s,
        awaiting=tuple(sorted(w.worker_id for w in keep if ready is not None and w.worker_id not in ready)),
        discard=tuple(sorted(w.worker_id for w in remaining if ready is not None and w.worker_id not in ready)),
        rates=plan_rates([*keep, *new], desired),
    )


def _batches_fit(worker: PlannedWorker, d: DesiredWorker) -> bool:
    """Does the worker run batches as large as the plan's rates need? Its start capped them; one
    capped below that would carry less than planned (and a re-plan for the misses would keep it
    again), so it is replaced, not kept."""
    caps = dict(worker.batches)
    return all(batch <= caps.get(v, batch) for v, batch in d.need or d.batches)


def _cap_total(worker: PlannedWorker) -> float:
    return sum(b for _, b in worker.batches) if worker.batches else float("inf")


def _overlaps(worker: PlannedWorker, kept: Sequence[PlannedWorker]) -> bool:
    cores = set(worker.partition.cores)
    return bool(cores) and any(k.agent_id == worker.agent_id and k.partition.device_id == worker.partition.device_id
                               and cores & set(k.partition.cores) for k in kept)


def _assign(
    todo: Sequence[DesiredWorker], keep: Sequence[PlannedWorker], retire: Sequence[PlannedWorker],
    device_cores: Mapping[tuple[str, str], int], generation: int,
) -> list[PlannedWorker]:
    """Partitions for the new workers: free cores first, then cores of workers being retired
    (shared only while the transition runs), never cores of workers that stay."""
    out = []
    taken: dict[tuple[str, str], set[int]] = {}
    for w in keep:
        taken.setdefault((w.agent_id, w.partition.device_id), set()).update(w.partition.cores)
    leaving: dict[tuple[str, str], list[int]] = {}
    for w in retire:
        leaving.setdefault((w.agent_id, w.partition.device_id), []).extend(w.partition.cores)
    for i, d in enumerate(todo):
        key = (d.agent_id, d.device_id)
        if d.kind == "cuda":
            partition = Partition(device_id=d.device_id, kind="cuda", mps_percent=d.size)
        else:
            total = device_cores.get(key, d.size)
            used = taken.setdefault(key, set())
            free = [c for c in range(total) if c not in used and c not in leaving.get(key, [])]
            free += [c for c in leaving.get(key, []) if c not in used and c not in free]
            free += [c for c in range(total) if c not in free]  # oversubscribe rather than fail
            cores = tuple(sorted(free[: d.size]))
            used.update(cores)
            partition = Partition(device_id=d.device_id, kind=d.kind, cores=cores)
        out.append(PlannedWorker(
            worker_id=f"{d.agent_id}.g{generation}.w{i}",
            agent_id=d.agent_id,
            partition=partition,
            variants=tuple(sorted(d.variants)),
            batches=tuple(sorted(d.batches)),
        ))
    return out
