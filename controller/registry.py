"""What the controller knows about the mesh: agents, workers, gateways, and the routing table.

Pure and synchronous: every method takes ``now`` and returns what changed, so the controller
actor only moves messages. Invariant: the routing table lists exactly the workers that
reported ready, whose agent is alive and who heartbeated within the liveness window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.placement import PlannedWorker
from controller.repository import Variant
from mesh.liveness import Liveness
from protocol.message import RoutingTable
from protocol.types import AgentStatus, DeviceInfo, ModelStatus, WorkerRoute, WorkerStatus


# States of a worker that a new layout retires: it answers what it holds but takes nothing new.
LEAVING = frozenset({"draining", "stopping"})


@dataclass(slots=True)
class AgentRecord:
    agent_id: str
    hostname: str
    devices: tuple[DeviceInfo, ...]


@dataclass(slots=True)
class WorkerRecord:
    plan: PlannedWorker
    state: str = "starting"  # starting | ready | crashed | stopped
    pid: int = 0
    restarts: int = 0
    batch_latency_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    slowdown: dict[str, float] = field(default_factory=dict)  # observed / warm-up, per variant


class Registry:
    """Agents, workers and gateways with liveness. Not thread-safe; one owner."""

    def __init__(
        self, variants: dict[str, Variant], *, heartbeat_interval_s: float, missed_heartbeats: int, epoch: int = 0
    ) -> None:
        self.variants = variants
        self.agents: dict[str, AgentRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.gateways: dict[str, str] = {}  # gateway id -> data endpoint
        self.liveness = Liveness(interval_s=heartbeat_interval_s, missed_limit=missed_heartbeats)
        # The epoch sits in the high bits so versions keep growing across controller restarts,
        # and gateways, which ignore tables older than the one they hold, accept the new ones.
        self.routing_version = epoch << 32
        self.family_fractions: dict[str, dict[str, float]] = {}
        self.shed: dict[str, float] = {}
        self._published: tuple = ()

    # --- agents -----------------------------------------------------------------------------

    def agent_registered(self, agent_id: str, hostname: str, devices: tuple[DeviceInfo, ...], now: float) -> None:
        self.agents[agent_id] = AgentRecord(agent_id, hostname, devices)
        self.liveness.beat(f"agent:{agent_id}", now)

    def agent_alive(self, agent_id: str, now: float) -> bool:
        return agent_id in self.agents and self.liveness.alive(f"agent:{agent_id}", now)

    # --- workers ----------------------------------------------------------------------------

    def plan_worker(self, plan: PlannedWorker) -> None:
        record = self.workers.get(plan.worker_id)
        if record is None or record.plan != plan:
            self.workers[plan.worker_id] = WorkerRecord(plan)

    def worker_started(self, worker_id: str, pid: int) -> None:
        record = self.workers.get(worker_id)
        if record is not None:
            record.pid = pid
            if record.state != "ready":
                record.state = "starting"

    def worker_ready(self, worker_id: str, pid: int, latency: dict[str, tuple[float, ...]], now: float,
                     slowdown: dict[str, float] | None = None) -> bool:
        """A WorkerReady (also the worker's periodic heartbeat). True if the worker is known."""
        record = self.workers.get(worker_id)
        if record is None:
            return False
        if record.state in LEAVING:  # a retiring worker stays retiring while it finishes
            self.liveness.beat(f"worker:{worker_id}", now)
            return True
        if not self.agent_alive(record.plan.agent_id, now):
            record.state = "lost"  # routed again once its agent heartbeats
            return True
        record.state = "ready"
        record.pid = pid
        record.batch_latency_ms = latency
        record.slowdown = dict(slowdown or {})
        self.liveness.beat(f"worker:{worker_id}", now)
        return True

    def worker_down(self, worker_id: str, state: str, restarts: int = 0) -> None:
        record = self.workers.get(worker_id)
        if record is not None:
            record.state = state
            record.restarts = restarts
            self.liveness.forget(f"worker:{worker_id}")

    def retire(self, worker_id: str, state: str) -> None:
        """Mark a worker draining (takes nothing new) or stopping (asked to exit)."""
        record = self.workers.get(worker_id)
        if record is not None:
            record.state = state

    def remove_worker(self, worker_id: str) -> None:
        self.workers.pop(worker_id, None)
        self.liveness.forget(f"worker:{worker_id}")

    def ready_ids(self) -> set[str]:
        return {w for w, r in self.workers.items() if r.state == "ready"}

    def workers_of(self, agent_id: str) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.plan.agent_id == agent_id]

    # --- gateways ---------------------------------------------------------------------------

    def gateway_registered(self, gateway_id: str, data_endpoint: str, now: float) -> bool:
        """True if the set of gateway endpoints changed."""
        changed = self.gateways.get(gateway_id) != data_endpoint
        self.gateways[gateway_id] = data_endpoint
        self.liveness.beat(f"gateway:{gateway_id}", now)
        return changed

    def gateway_endpoints(self) -> tuple[str, ...]:
        return tuple(sorted(self.gateways.values()))

    # --- liveness ---------------------------------------------------------------------------

    def beat(self, kind: str, peer_id: str, now: float) -> bool:
        """A heartbeat; False if the peer is not registered (it must register again)."""
        known = {"agent": self.agents, "gateway": self.gateways, "worker": self.workers}.get(kind, {})
        if peer_id not in known:
            return False
        self.liveness.beat(f"{kind}:{peer_id}", now)
        return True

    def expire(self, now: float) -> list[str]:
        """Drop peers whose heartbeats stopped; returns their liveness keys."""
        lost = self.liveness.lost(now)
        for key in lost:
            kind, _, peer_id = key.partition(":")
            if kind == "agent":
                for worker in self.workers_of(peer_id):
                    if worker.state == "ready":
                        worker.state = "lost"
            elif kind == "worker" and peer_id in self.workers and self.workers[peer_id].state not in LEAVING:
                self.workers[peer_id].state = "lost"
            elif kind == "gateway":
                self.gateways.pop(peer_id, None)
        return lost

    # --- routing ----------------------------------------------------------------------------

    def routing_table(self) -> RoutingTable | None:
        """The current table if it differs from the last one returned, else None."""
        routes = tuple(
            WorkerRoute(worker_id=w.plan.worker_id, variants=w.plan.variants, latency_ms=w.batch_latency_ms,
                        draining=w.state in LEAVING)
            for w in sorted(self.workers.values(), key=lambda w: w.plan.worker_id)
            if w.state == "ready" or (w.state in LEAVING and w.batch_latency_ms)
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
                            shed={f: s for f, s in self.shed.items() if s > 0})

    # --- status -----------------------------------------------------------------------------

    def status(self, now: float) -> tuple[tuple[AgentStatus, ...], tuple[WorkerStatus, ...], tuple[ModelStatus, ...]]:
        agents = tuple(
            AgentStatus(
                agent_id=a.agent_id,
                hostname=a.hostname,
                alive=self.agent_alive(a.agent_id, now),
                devices=a.devices,
                last_seen_s=max(0.0, now - (self.liveness.last_seen(f"agent:{a.agent_id}") or now)),
            )
            for a in self.agents.values()
        )
        workers = tuple(
            WorkerStatus(
                worker_id=w.plan.worker_id,
                agent_id=w.plan.agent_id,
                state=w.state,
                partition=w.plan.partition,
                variants=w.plan.variants,
                pid=w.pid,
                restarts=w.restarts,
                slowdown=dict(w.slowdown),
            )
            for w in sorted(self.workers.values(), key=lambda w: w.plan.worker_id)
        )
        models = []
        for v in sorted(self.variants.values(), key=lambda v: v.name):
            serving = tuple(
                w.plan.worker_id for w in self.workers.values() if w.state == "ready" and v.name in w.plan.variants
            )
            models.append(
                ModelStatus(
                    name=v.name,
                    family=v.family,
                    accuracy=v.accuracy,
                    state="READY" if serving else "UNAVAILABLE",
                    workers=serving,
                )
            )
        return agents, workers, tuple(models)
