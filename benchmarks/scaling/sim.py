"""The accuracy-scaling benchmark's discrete-event simulator: slots running the workers'
batchers (``mesh.batching``, the code the workers run) one batch at a time, and variant switches
make-before-break or break-before-make."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks.scaling.workload import Fleet, Trace, VariantInfo

if TYPE_CHECKING:
    from benchmarks.scaling.schemes import Scheme
from mesh.batching import Queued, make_batcher, serving_options
from mesh.scheduler import GpuletScheduler

DEADLINE_SLACK_S = 1e-9  # a batch scheduled to end on its deadline is on time

# --- the simulator --------------------------------------------------------------------------------

FINISH, WAKE, LOADED, TICK, APPLY = range(5)


class Server:
    """One slot: the variant it serves (None while loading with nothing to serve), its batcher
    and clock state, and the variant it is switching to."""

    __slots__ = ("accepting", "batcher", "busy", "busy_until", "index", "info", "load_token", "loaded", "pending",
                 "running", "token")

    def __init__(self, index: int) -> None:
        self.index = index
        self.info: VariantInfo | None = None
        self.batcher = None
        self.pending: str | None = None  # the variant it switches to
        self.loaded = False  # make-before-break: the pending variant is loaded, the old one drains
        self.accepting = False
        self.busy = False
        self.busy_until = 0.0
        self.running: tuple[Queued, ...] = ()
        self.token = 0  # invalidates WAKE events
        self.load_token = 0  # invalidates LOADED events


@dataclass(slots=True)
class Counts:
    requests: int = 0
    on_time: int = 0
    late: int = 0  # served after the deadline
    dropped: int = 0  # answered late by the batcher (hopeless, or past the deadline when polled)
    shed: int = 0  # dropped at admission by the plan's shed share
    unrouted: int = 0  # no slot up for the family, or refused: none predicted to make the deadline
    accuracy_sum: float = 0.0  # normalised accuracy over on-time requests
    switches: int = 0
    load_s: float = 0.0  # slot-seconds spent loading


SWITCH_MODES = ("make-before-break", "break-before-make")


class Simulator:
    """A heap of events on a simulated clock; arrivals come from a sorted list. Schemes decide
    routing and deployments; the simulator runs the slots' batchers, exactly one batch at a time
    per slot, and the variant switches.

    A switch is make-before-break by default, as letmesh's reconciler does it: the new variant
    loads for ``load_s`` beside the old one, which keeps serving (its batches ``interference``
    times slower meanwhile); then the slot stops taking requests for the old variant, finishes
    its queue and serves the new one. ``break-before-make``: the slot stops taking requests,
    finishes its queue, then serves nothing while it loads."""

    def __init__(self, fleet: Fleet, policy: str, load_s: float, *, switch_mode: str = SWITCH_MODES[0],
                 interference: float = 1.0) -> None:
        if switch_mode not in SWITCH_MODES:
            raise ValueError(f"switch mode must be one of {SWITCH_MODES}")
        self.fleet = fleet
        self.policy = policy
        self.load_s = load_s
        self.make_before_break = switch_mode == SWITCH_MODES[0]
        self.interference = interference
        self.servers = [Server(i) for i in range(len(fleet.slots))]
        self.heap: list[tuple[float, int, int, int, int]] = []  # (time, seq, code, slot, token)
        self.seq = 0
        self.version = 0  # bumps whenever a slot starts or stops accepting
        self.counts = Counts()
        self.per_family = [Counts() for _ in fleet.families]
        self.served_by_variant: dict[str, int] = {}
        self.on_time_at: list[int] = []  # on-time requests by the second they arrived in
        self.accuracy_at: list[float] = []  # and the sum of their accuracies

    # --- deployment ---

    def deploy(self, i: int, variant: str) -> None:
        """Load ``variant`` on slot i instantly (the initial deployment, before any arrival)."""
        s = self.servers[i]
        self._install(s, variant)

    def _install(self, s: Server, variant: str) -> None:
        info = self.fleet.info[variant]
        s.info = info
        s.batcher = GpuletScheduler({variant: make_batcher(self.policy, max_batch=info.batch,
                                                           latency_s=info.latency_s.__getitem__,
                                                           **serving_options(self.policy))})
        s.accepting = True
        s.pending = None
        s.loaded = False
        self.version += 1

    def switch(self, i: int, variant: str, now: float) -> None:
        """Move slot i to ``variant`` (see the class docstring); a switch to what the slot serves
        cancels one in progress."""
        s = self.servers[i]
        if s.info is not None and s.info.variant == variant:
            if s.pending is not None:  # cancel a switch in progress
                s.pending, s.loaded = None, False
                s.load_token += 1
                if not s.accepting:
                    s.accepting = True
                    self.version += 1
            return
        if s.pending == variant:
            return
        if s.info is None:  # loading something else: start over
            s.pending = variant
            self._start_load(s, now)
            return
        if s.pending is None:
            self.counts.switches += 1
        s.pending, s.loaded = variant, False
        if self.make_before_break:
            if not s.accepting:  # was draining for another variant: serve on while this one loads
                s.accepting = True
                self.version += 1
            self._load(s, now)
            return
        if s.accepting:
            s.accepting = False
            self.version += 1
        if not s.busy and not len(s.batcher):
            self._start_load(s, now)

    def _load(self, s: Server, now: float) -> None:
        s.load_token += 1
        self.counts.load_s += self.load_s
        self.push(now + self.load_s, LOADED, s.index, s.load_token)

    def _start_load(self, s: Server, now: float) -> None:
        """Break-before-make: nothing served until the pending variant is loaded."""
        s.info, s.batcher, s.accepting, s.busy = None, None, False, False
        s.token += 1
        self.version += 1
        self._load(s, now)

    def _loaded(self, s: Server) -> None:
        if s.info is None:
            self._install(s, s.pending)
            return
        s.loaded = True
        s.accepting = False
        self.version += 1
        if not s.busy and not len(s.batcher):
            self._install(s, s.pending)

    def push(self, t: float, code: int, slot: int = -1, token: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, code, slot, token))

    # --- queries for schemes ---

    def up(self, i: int) -> str | None:
        """The variant slot i serves new requests with, or None."""
        s = self.servers[i]
        return s.info.variant if s.accepting and s.info is not None else None

    def finish_estimate(self, i: int, now: float) -> float:
        """When a request pushed now would finish: the running batch, then the queue in full batches."""
        s = self.servers[i]
        info = s.info
        start = s.busy_until if s.busy else now
        q = len(s.batcher) + 1
        full, rest = divmod(q, info.batch)
        return start + full * info.latency_s[info.batch] + (info.latency_s[rest] if rest else 0.0)

    # --- the run ---

    def run(self, trace: Trace, scheme: Scheme, duration_s: float) -> None:
        fam_counts = self.per_family
        total = self.counts
        slo_s = self.fleet.slo_s
        servers = self.servers
        heap, pop = self.heap, heapq.heappop
        window = [0] * len(self.fleet.families)
        for t in range(1, int(math.ceil(duration_s))):
            self.push(float(t), TICK)
        times, fams = trace.times, trace.families
        self.on_time_at = [0] * (int(math.ceil(duration_s)) + 1)
        self.accuracy_at = [0.0] * len(self.on_time_at)
        n, a = len(times), 0
        rid = 0
        route = scheme.route
        while a < n or heap:
            if a < n and (not heap or times[a] <= heap[0][0]):
                now, k = times[a], fams[a]
                a += 1
                window[k] += 1
                fc = fam_counts[k]
                fc.requests += 1
                i = route(self, now, k)
                if i < 0:
                    if i == -1:
                        fc.shed += 1
                    else:
                        fc.unrouted += 1
                    continue
                s = servers[i]
                rid += 1
                if not s.batcher.push(s.info.variant, Queued(rid, now + slo_s[k], now, k)):
                    fc.dropped += 1  # queue full
                    continue
                if not s.busy:
                    self.step(s, now)
                continue
            now, _, code, i, token = pop(heap)
            if code == FINISH:
                s = servers[i]
                self.finish(s, now)
                self.step(s, now)
            elif code == WAKE:
                s = servers[i]
                if token == s.token and not s.busy:
                    self.step(s, now)
            elif code == LOADED:
                s = servers[i]
                if token == s.load_token and s.pending is not None:
                    self._loaded(s)
            elif code == TICK:
                scheme.tick(self, now, window)
                window = [0] * len(window)
            elif code == APPLY:
                scheme.apply(self, now)
        for fc in fam_counts:
            total.requests += fc.requests
            total.on_time += fc.on_time
            total.late += fc.late
            total.dropped += fc.dropped
            total.shed += fc.shed
            total.unrouted += fc.unrouted
            total.accuracy_sum += fc.accuracy_sum

    def step(self, s: Server, now: float) -> None:
        """The worker's scheduling step (mesh.scheduler): run a batch, wait, or switch when empty."""
        decided = s.batcher.step(now)
        for _, item in decided.late:
            self.per_family[item.payload].dropped += 1
        if decided.batch:
            batch = decided.batch
            s.busy = True
            s.running = batch
            took = s.info.latency_s[len(batch)]
            if s.pending is not None and not s.loaded and self.make_before_break:
                took *= self.interference  # the next variant is loading beside it
            s.busy_until = now + took
            self.push(s.busy_until, FINISH, s.index)
            return
        s.busy = False
        if decided.wake_at is not None:
            s.token += 1
            self.push(decided.wake_at, WAKE, s.index, s.token)
            return
        if s.pending is not None:
            if not self.make_before_break:
                self._start_load(s, now)
            elif s.loaded:
                self._install(s, s.pending)

    def finish(self, s: Server, now: float) -> None:
        batch, s.running, s.busy = s.running, (), False
        info = s.info
        ok = 0
        for item in batch:
            fc = self.per_family[item.payload]
            if now <= item.deadline + DEADLINE_SLACK_S:
                ok += 1
                fc.on_time += 1
                fc.accuracy_sum += info.accuracy
                self.on_time_at[int(item.arrived)] += 1
                self.accuracy_at[int(item.arrived)] += info.accuracy
            else:
                fc.late += 1
        self.served_by_variant[info.variant] = self.served_by_variant.get(info.variant, 0) + ok
        s.batcher.finished(info.variant, len(batch), ok < len(batch))


