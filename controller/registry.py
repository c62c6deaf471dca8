"""What the controller knows about the mesh: agents, workers, gateways, and the routing table.

Pure and synchronous: every method takes ``now`` and returns what changed, so the controller
actor only moves messages. Invariant: the routing table lists exactly the workers that
reported ready, whose agent is alive and who heartbeated within the liveness window.

An agent's loss is an event: its workers leave routing at once and it stays listed as lost
(with them) until it registers again or ``forget_lost`` drops it. A worker whose heartbeats
stop makes its agent suspect until the agent itself heartbeats again: a re-plan does not place
on a suspect agent, since a cut host's workers fall silent a moment before the host does.

Publication is held while the registry's view is incomplete (:meth:`routing_held`): after a start
that restored a plan of record, and while every agent is lost (this controller may be the one cut
off), until the workers it awaits report ready again or ``hold_s`` has passed. The gateways keep
serving on the table they hold meanwhile, rather than get one without the workers that serve them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from controller.placement import PlannedWorker
from controller.registry_status import LEAVING, StatusView, status_view
from controller.repository import Variant
from mesh.liveness import Liveness
from protocol.message import RoutingTable
from protocol.types import DeviceInfo, WorkerRoute, WorkerState


RUNTIME_CHARS = 300  # a worker's note on what runs a variant, as status shows it


class Joined(enum.Enum):
    """What a registration was, compared with what the registry knew of the agent."""

    NEW = "new"  # an agent id not known (or forgotten)
    RESTARTED = "restarted"  # a new process of a known agent: what the old one ran is gone
    RETURNED = "returned"  # the same process, back after it was lost
    REPEAT = "repeat"  # the same process, registered and alive: nothing changes


@dataclass(slots=True)
class AgentRecord:
    agent_id: str
    hostname: str
    devices: tuple[DeviceInfo, ...]
    instance: str = ""
    lost_at: float | None = None
    suspect: bool = False
    joins: int = 1


@dataclass(slots=True)
class WorkerRecord:
    plan: PlannedWorker
    state: WorkerState = WorkerState.STARTING
    # False once a re-plan replaced it (its agent was lost): it is shown until forgotten, and
    # stopped if its agent comes back still running it.
    in_plan: bool = True
    pid: int = 0
    restarts: int = 0
    batch_latency_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    slowdown: dict[str, float] = field(default_factory=dict)  # observed / warm-up, per variant
    runtimes: dict[str, str] = field(default_factory=dict)  # as the worker reports them
    memory_peak_bytes: int = 0  # as the worker reports it (WorkerReady), 0: not known


class Registry:
    """Agents, workers and gateways with liveness. Not thread-safe; one owner."""

    def __init__(
        self, variants: dict[str, Variant], *, heartbeat_interval_s: float, missed_heartbeats: int, epoch: int = 0
    ) -> None:
        self.variants = variants
        self.unavailable: dict[str, str] = {}  # repository variants set aside: name -> reason
        self.agents: dict[str, AgentRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.gateways: dict[str, str] = {}  # gateway id -> data endpoint
        # Gateways whose heartbeats stopped, and when: they stay in the list workers dial until
        # forgotten, since a gateway silent to the controller may well be serving (the controller
        # may be the one cut off), and a worker that dropped it would fail its requests.
        self.gateways_lost: dict[str, float] = {}
        self.liveness = Liveness(interval_s=heartbeat_interval_s, missed_limit=missed_heartbeats)
        # The epoch sits in the high bits so versions keep growing across controller restarts,
        # and gateways, which ignore tables older than the one they hold, accept the new ones.
        self.routing_version = epoch << 32
        self.family_fractions: dict[str, dict[str, float]] = {}
        # worker id -> {variant: the rate the plan routes to it}: the gateways' routing weights.
        self.route_rates: dict[str, dict[str, float]] = {}
        self.shed: dict[str, float] = {}
        self._published: tuple = ()
        # Workers the registry waits to hear from before it publishes again, and until when.
        self.hold_s = 2.0 * self.liveness.timeout_s
        self._awaiting: set[str] = set()
        self._isolated = False
        self._hold_until = float("inf")
        self._revoked: set[str] = set()  # agents whose keys were taken back: not a partition

    # --- agents -----------------------------------------------------------------------------

    def agent_registered(self, agent_id: str, hostname: str, devices: tuple[DeviceInfo, ...], now: float,
                         instance: str = "") -> Joined:
        """A registration. ``instance`` names the agent process; a repeat of an alive agent's
        registration changes nothing (queued copies replayed after a cut are harmless)."""
        record = self.agents.get(agent_id)
        alive = self.agent_alive(agent_id, now)
        if record is None:
            joined = Joined.NEW
        elif instance != record.instance:
            joined = Joined.RESTARTED
        elif alive:
            joined = Joined.REPEAT
        else:
            joined = Joined.RETURNED
        if joined is Joined.REPEAT:
            return joined
        self.agents[agent_id] = AgentRecord(agent_id, hostname, devices, instance,
                                            joins=1 if record is None else record.joins + 1)
        self.liveness.forget(f"agent:{agent_id}")
        self.liveness.beat(f"agent:{agent_id}", now)
        self._revoked.discard(agent_id)  # registered: its (new) key is authorised
        if self._isolated:  # the first agent heard from again: the others have hold_s to follow
            self._isolated = False
            self._hold_until = now + self.hold_s
        return joined

    def agent_alive(self, agent_id: str, now: float) -> bool:
        record = self.agents.get(agent_id)
        return record is not None and record.lost_at is None and self.liveness.alive(f"agent:{agent_id}", now)

    def overdue_agents(self, now: float) -> list[str]:
        """Agents not lost yet whose heartbeats are late: silent past half the loss timeout (and
        past one and a half intervals). When this controller is cut off from the network, every
        agent goes silent at once; at the moment the first is declared lost the others are
        already overdue (silent for at least the timeout less one interval)."""
        live = self.liveness
        late = max(1.5 * live.interval_s, live.timeout_s / 2)
        out = []
        for agent_id, record in sorted(self.agents.items()):
            seen = live.last_seen(f"agent:{agent_id}")
            if record.lost_at is None and seen is not None and late < now - seen <= live.timeout_s:
                out.append(agent_id)
        return out

    def placeable(self, now: float) -> dict[str, tuple[DeviceInfo, ...]]:
        """Agents a plan may place on: alive and not suspect."""
        return {a: r.devices for a, r in sorted(self.agents.items()) if not r.suspect and self.agent_alive(a, now)}

    def lost_agents(self) -> dict[str, float]:
        """Agent id -> when it was lost."""
        return {a: r.lost_at for a, r in self.agents.items() if r.lost_at is not None}

    def agent_left(self, agent_id: str) -> list[str]:
        """A clean stop: the agent and its workers go now; returns the ids of those workers."""
        self.agents.pop(agent_id, None)
        self.liveness.forget(f"agent:{agent_id}")
        gone = [w.plan.worker_id for w in self.workers_of(agent_id)]
        for worker_id in gone:
            self.remove_worker(worker_id)
        return gone

    def forget_lost(self, now: float, after_s: float) -> tuple[list[str], list[str]]:
        """Drop agents lost for longer than ``after_s``, with their workers; returns (agents, workers)."""
        agents, workers = [], []
        for agent_id, lost_at in sorted(self.lost_agents().items()):
            if now - lost_at >= after_s:
                agents.append(agent_id)
                workers.extend(self.agent_left(agent_id))
        return agents, workers

    # --- workers ----------------------------------------------------------------------------

    def plan_worker(self, plan: PlannedWorker) -> None:
        record = self.workers.get(plan.worker_id)
        if record is None or record.plan != plan or not record.in_plan:
            self.workers[plan.worker_id] = WorkerRecord(plan)

    def drop_from_plan(self, worker_id: str) -> None:
        """A re-plan replaced this worker of a lost agent: it stays listed as lost, outside the plan."""
        record = self.workers.get(worker_id)
        if record is not None:
            record.in_plan = False
            record.state = WorkerState.LOST
            self.liveness.forget(f"worker:{worker_id}")

    def planned_workers_of(self, agent_id: str) -> list[WorkerRecord]:
        """The agent's workers in the plan of record (those a re-plan retires included)."""
        return [w for w in self.workers_of(agent_id) if w.in_plan]

    def worker_started(self, worker_id: str, pid: int, now: float | None = None) -> None:
        """The agent runs the worker (it registered with it, or started it). The same process
        that was serving before its agent was lost (same pid, reported at ``now``) serves again
        at once; anything else is starting until its WorkerReady."""
        record = self.workers.get(worker_id)
        if record is None:
            return
        same = record.state == WorkerState.LOST and record.pid == pid and pid > 0 and bool(record.batch_latency_ms)
        record.pid = pid
        if same and now is not None and record.in_plan and self.agent_alive(record.plan.agent_id, now):
            record.state = WorkerState.READY
            self.liveness.beat(f"worker:{worker_id}", now)
            self._awaiting.discard(worker_id)
        elif record.state != WorkerState.READY:
            record.state = WorkerState.STARTING

    def worker_ready(self, worker_id: str, pid: int, latency: dict[str, tuple[float, ...]], now: float,
                     slowdown: dict[str, float] | None = None, runtimes: dict[str, str] | None = None,
                     memory_peak_bytes: int = 0) -> bool:
        """A WorkerReady (also the worker's periodic heartbeat). True if the worker is known."""
        record = self.workers.get(worker_id)
        if record is None or not record.in_plan:
            return False
        if record.state in LEAVING:  # a retiring worker stays retiring while it finishes
            self.liveness.beat(f"worker:{worker_id}", now)
            return True
        if not self.agent_alive(record.plan.agent_id, now):
            record.state = WorkerState.LOST  # routed again once its agent heartbeats
            return True
        record.state = WorkerState.READY
        self._awaiting.discard(worker_id)
        record.pid = pid
        record.batch_latency_ms = latency
        record.slowdown = dict(slowdown or {})
        record.runtimes = {v: r[:RUNTIME_CHARS] for v, r in (runtimes or {}).items() if v in record.plan.variants}
        record.memory_peak_bytes = max(0, memory_peak_bytes)
        self.liveness.beat(f"worker:{worker_id}", now)
        return True

    def worker_down(self, worker_id: str, state: WorkerState, restarts: int = 0) -> None:
        record = self.workers.get(worker_id)
        if record is not None:
            record.state = state
            record.restarts = restarts
            self.liveness.forget(f"worker:{worker_id}")

    def retire(self, worker_id: str, state: WorkerState) -> None:
        """Mark a worker draining (takes nothing new) or stopping (asked to exit)."""
        record = self.workers.get(worker_id)
        if record is not None:
            record.state = state

    def remove_worker(self, worker_id: str) -> None:
        self.workers.pop(worker_id, None)
        self._awaiting.discard(worker_id)
        self.liveness.forget(f"worker:{worker_id}")

    def ready_ids(self) -> set[str]:
        return {w for w, r in self.workers.items() if r.state == WorkerState.READY}

    def workers_of(self, agent_id: str) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.plan.agent_id == agent_id]

    # --- gateways ---------------------------------------------------------------------------

    def gateway_registered(self, gateway_id: str, data_endpoint: str, now: float) -> bool:
        """True if the set of gateway endpoints changed."""
        changed = self.gateways.get(gateway_id) != data_endpoint
        self.gateways[gateway_id] = data_endpoint
        self.gateways_lost.pop(gateway_id, None)
        self.liveness.beat(f"gateway:{gateway_id}", now)
        return changed

    def restore_gateway(self, gateway_id: str, data_endpoint: str, now: float) -> None:
        """A gateway known before a restart: listed to workers, as a lost one is, until it
        registers again or is forgotten. Without it, the first list a restarted controller sent
        named only the gateways back so far, and workers dropped their links to the others."""
        self.gateways[gateway_id] = data_endpoint
        self.gateways_lost[gateway_id] = now

    def gateway_left(self, gateway_id: str) -> bool:
        """A clean stop: forget the gateway now. True if it was registered."""
        self.liveness.forget(f"gateway:{gateway_id}")
        self.gateways_lost.pop(gateway_id, None)
        return self.gateways.pop(gateway_id, None) is not None

    def forget_lost_gateways(self, now: float, after_s: float) -> list[str]:
        """Drop gateways silent for longer than ``after_s``; returns their ids."""
        gone = [g for g, lost_at in sorted(self.gateways_lost.items()) if now - lost_at >= after_s]
        for gateway_id in gone:
            self.gateway_left(gateway_id)
        return gone

    def gateway_endpoints(self) -> tuple[str, ...]:
        return tuple(sorted(self.gateways.values()))

    # --- liveness ---------------------------------------------------------------------------

    def beat(self, kind: str, peer_id: str, now: float) -> bool:
        """A heartbeat; False if the peer is not registered (it must register again), as is an
        agent that was declared lost: it comes back by registering, with what it runs."""
        if kind == "agent":
            record = self.agents.get(peer_id)
            if record is None or record.lost_at is not None:
                return False
            record.suspect = False
        elif peer_id not in {"gateway": self.gateways, "worker": self.workers}.get(kind, {}):
            return False
        elif kind == "gateway" and peer_id in self.gateways_lost:
            return False  # back after it was lost: it registers again (and gets the table)
        self.liveness.beat(f"{kind}:{peer_id}", now)
        return True

    def expire(self, now: float) -> list[str]:
        """Mark peers whose heartbeats stopped; returns their liveness keys. A lost agent's
        workers leave routing at once; a lost worker makes its agent suspect. A worker a re-plan
        retired falling silent is its exit, not a loss: it is forgotten and not returned."""
        lost = self.liveness.lost(now)
        leaving = [k for k in lost if k.startswith("worker:")
                   and (record := self.workers.get(k.removeprefix("worker:"))) is not None and record.state in LEAVING]
        for key in leaving:
            self.liveness.forget(key)
        lost = [k for k in lost if k not in leaving]
        for key in lost:
            kind, _, peer_id = key.partition(":")
            if kind == "agent" and peer_id in self.agents:
                self._agent_lost(peer_id, now)
            elif kind == "worker" and peer_id in self.workers:
                record = self.workers[peer_id]
                if record.state not in LEAVING:
                    record.state = WorkerState.LOST
                agent = self.agents.get(record.plan.agent_id)
                if agent is not None and agent.lost_at is None:
                    agent.suspect = True
            elif kind == "gateway" and peer_id in self.gateways:
                self.gateways_lost.setdefault(peer_id, now)
        heard_of = [a for a in self.agents.values() if a.agent_id not in self._revoked]
        if heard_of and not self._isolated and all(a.lost_at is not None for a in heard_of):
            # Nothing heard from any agent: more likely this controller is cut off than every host
            # failed at once. The workers that were serving are awaited before publishing again.
            self._isolated = True
            self._awaiting |= {w.plan.worker_id for w in self.workers.values()
                               if w.in_plan and w.state == WorkerState.LOST and w.batch_latency_ms}
        return lost

    def _agent_lost(self, agent_id: str, now: float) -> None:
        self.agents[agent_id].lost_at = now
        for worker in self.workers_of(agent_id):
            if worker.state not in (WorkerState.STOPPED, WorkerState.CRASHED):
                worker.state = WorkerState.LOST
                self.liveness.forget(f"worker:{worker.plan.worker_id}")

    def revoked(self, agent_ids: list[str], now: float) -> list[str]:
        """Agents whose keys were revoked are lost now, not a heartbeat timeout later: their
        workers leave routing and a re-plan moves their work. Returns those newly lost."""
        out = []
        for agent_id in agent_ids:
            record = self.agents.get(agent_id)
            if record is not None and record.lost_at is None:
                self._revoked.add(agent_id)
                self.liveness.forget(f"agent:{agent_id}")  # its heartbeats are refused from now on
                self._agent_lost(agent_id, now)
                out.append(agent_id)
        return out

    def await_restored(self, now: float) -> None:
        """After a start that restored the plan of record: hold publication until its workers
        report ready, or ``hold_s`` from ``now``."""
        self._awaiting = {w.plan.worker_id for w in self.workers.values() if w.in_plan}
        self._hold_until = now + self.hold_s

    def routing_held(self, now: float) -> bool:
        """Is publication held? (See the module docstring.)"""
        self._awaiting &= {w for w, r in self.workers.items() if r.in_plan and r.state not in LEAVING}
        if not self._awaiting:
            return False
        if self._isolated:
            return True
        if now >= self._hold_until:
            self._awaiting.clear()
            return False
        return True

    # --- routing ----------------------------------------------------------------------------

    def run_batches(self, plan: PlannedWorker) -> dict[str, int]:
        """The largest batch the worker runs per variant, where the plan caps the model's (as its start command does)."""
        return {name: max(1, min(self.variants[name].max_batch, b)) for name, b in plan.batches
                if name in self.variants and b < self.variants[name].max_batch}

    def routing_table(self) -> RoutingTable | None:
        """The current table if it differs from the last one returned, else None."""
        routes = tuple(
            WorkerRoute(worker_id=w.plan.worker_id, variants=w.plan.variants, latency_ms=w.batch_latency_ms,
                        draining=w.state in LEAVING, weights=dict(self.route_rates.get(w.plan.worker_id, {})),
                        agent_id=w.plan.agent_id, max_batch=self.run_batches(w.plan))
            for w in sorted(self.workers.values(), key=lambda w: w.plan.worker_id)
            if w.state == WorkerState.READY or (w.state in LEAVING and w.batch_latency_ms)
        )
        models = tuple(v.info() for v in sorted(self.variants.values(), key=lambda v: v.name))
        fractions = {f: dict(sorted(v.items())) for f, v in sorted(self.family_fractions.items())}
        shed = dict(sorted((f, s) for f, s in self.shed.items() if s > 0))
        key = (routes, models, repr(fractions), repr(shed))
        if key == self._published:
            return None
        self._published = key
        self.routing_version += 1
        return self.current_table()

    def current_table(self) -> RoutingTable:
        routes, models, _, _ = self._published or ((), (), "", "")
        return RoutingTable(version=self.routing_version, models=models, workers=routes,
                            family_fractions={f: dict(v) for f, v in self.family_fractions.items()},
                            shed={f: s for f, s in self.shed.items() if s > 0}, unavailable=dict(self.unavailable))

    # --- status -----------------------------------------------------------------------------

    def status(self, now: float, forget_after_s: float | None = None) -> StatusView:
        return status_view(self, now, forget_after_s)
