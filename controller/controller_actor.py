"""The controller actor: binds the control ROUTER and turns messages into registry changes.

Decisions live in the registry and the placement function; this actor only receives, calls
them, and sends what they return. A peer's identity is its ZeroMQ routing id
(``agent:<id>``, ``gateway:<id>``, ``worker:<id>``), never a field of the message body.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq.asyncio

from controller.config import ControllerConfig
from controller.placement import PlannedWorker, extend_placement, initial_placement
from controller.demand import DemandTracker
from controller.layout_manager import LayoutManager, LayoutPolicy
from controller.learner import Learner
from controller.planning import POLICIES
from controller.profiling import ProfilingRuns
from controller.registry import LEAVING, Registry
from controller.repository import Variant, load_repository
from controller.store import StateStore
from mesh.actor import Actor
from mesh.clock import Clock, SystemClock
from mesh.lifecycle import feed, tick
from mesh.transport import Endpoint, Incoming, PeerUnreachable
from protocol.codec import ARTIFACT_CHUNK_BYTES
from protocol.message import (
    ArtifactChunkReply,
    DecisionRecords,
    DemandReport,
    ErrorReply,
    FetchArtifact,
    GatewayListChanged,
    GetProfiles,
    GetStatus,
    Heartbeat,
    PolicySnapshot,
    ProfileProgress,
    ProfilesReply,
    Replan,
    ReplanReply,
    RegisterAgent,
    RegisterAgentReply,
    RegisterGateway,
    RegisterGatewayReply,
    StartWorker,
    StatusReply,
    WorkerCrashed,
    WorkerReady,
    WorkerStarted,
    WorkerStopped,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tick:
    """Local timer message: expire peers, send heartbeats."""


class ControllerActor(Actor):
    """Owns the control socket, the registry and the state store.

    Concurrency: one receive task and one timer task feed the mailbox; all state is touched
    only from ``handle``, one message at a time.
    """

    def __init__(self, config: ControllerConfig, *, ctx: zmq.asyncio.Context, clock: Clock | None = None) -> None:
        super().__init__(name="controller", mailbox_size=10_000)
        self.config = config
        self._ctx = ctx
        self._clock = clock or SystemClock()
        self._endpoint: Endpoint | None = None
        self._store: StateStore | None = None
        self._registry: Registry | None = None
        self._by_sha: dict[str, Variant] = {}
        self._tasks: list[asyncio.Task] = []
        self._learner: Learner | None = None
        self._layout: LayoutManager | None = None
        self._agent_pids: dict[str, int] = {}
        self._profiling = ProfilingRuns()
        self._demand = DemandTracker(half_life_s=config.demand_half_life_s, history_s=config.demand_history_s)
        self._last_publish = float("-inf")
        self._epoch = 0
        self._seq = 0
        self._last_tick = float("inf")
        self.address = ""

    async def on_start(self) -> None:
        variants = load_repository(self.config.repository)
        self._by_sha = {v.sha256: v for v in variants.values()}
        self._store = StateStore(Path(self.config.state_dir) / "controller.sqlite3")
        self._epoch = self._store.next_epoch()
        self._registry = Registry(
            variants,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            missed_heartbeats=self.config.missed_heartbeats,
            epoch=self._epoch,
        )
        for plan in self._store.placements():
            kept = tuple(n for n in plan.variants if n in variants)
            if kept:
                self._registry.plan_worker(dataclasses.replace(plan, variants=kept))
        self._registry.routing_table()  # version 1 of this epoch: every model, no worker yet
        # Request ids unique across controller restarts, so an agent never mistakes a new run for a re-send.
        self._profiling = ProfilingRuns(next_id=self._epoch * 100_000 + 1)
        self._learner = Learner(self.config.state_dir)
        self._layout = LayoutManager(
            LayoutPolicy(policy=self.config.planner, replan_period_s=self.config.replan_period_s,
                         accuracy_scaling=self.config.accuracy_scaling,
                         scaling_time_limit_s=self.config.scaling_time_limit_s, fast_replan_s=self.config.fast_replan_s,
                         scaling_beta=self.config.scaling_beta, scaling_horizon_s=self.config.scaling_horizon_s,
                         live_slowdown_hold_s=self.config.live_slowdown_hold_s,
                         scaling_beta_max=self.config.scaling_beta_max,
                         drain_s=self.config.stop_drain_s, start_timeout_s=self.config.worker_start_timeout_s),
            self._registry, self._store, self._demand, self._start_command, generation=self._epoch,
        )
        self._endpoint = Endpoint.router(self._ctx, self.config.bind)
        self.address = self._endpoint.address
        self._tasks = [
            asyncio.create_task(feed(self._endpoint, self), name="controller-recv"),
            asyncio.create_task(tick(self, self.config.heartbeat_interval_s, Tick()), name="controller-tick"),
        ]
        log.info("controller listening", extra={"address": self.address, "epoch": self._epoch})

    async def on_stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._learner is not None:
            self._learner.publish()  # save what was learned since the last publish
            self._learner.close()
        if self._endpoint is not None:
            self._endpoint.close()
        if self._store is not None:
            self._store.close()

    async def handle(self, msg: object) -> object:
        if isinstance(msg, Tick):
            await self._on_tick()
            return None
        if isinstance(msg, GetStatus):  # in-process status asks (tests, embedding)
            return self._status()
        assert isinstance(msg, Incoming)
        await self._dispatch(msg)
        await self._publish_routing()
        return None

    async def _dispatch(self, incoming: Incoming) -> None:
        reg = self._registry
        assert reg is not None and incoming.peer is not None
        peer = incoming.peer
        kind, _, peer_id = peer.decode(errors="replace").partition(":")
        now = self._clock.monotonic()
        match incoming.msg:
            case Heartbeat():
                if not reg.beat(kind, peer_id, now):
                    await self._send(peer, ErrorReply(code="unknown_peer", message="register again", retryable=True))
            case RegisterAgent(hostname=hostname, devices=devices, pid=pid) if kind == "agent":
                await self._on_register_agent(peer, peer_id, hostname, devices, pid, now)
            case RegisterGateway(data_endpoint=data_endpoint) if kind == "gateway":
                changed = reg.gateway_registered(peer_id, data_endpoint, now)
                await self._send(
                    peer,
                    RegisterGatewayReply(
                        gateway_id=peer_id,
                        heartbeat_interval_s=self.config.heartbeat_interval_s,
                        controller_epoch=self._epoch,
                    ),
                )
                await self._send(peer, reg.current_table())
                assert self._learner is not None
                families = sorted({v.family for v in reg.variants.values()})
                for family, version, model in self._learner.snapshots(families):
                    await self._send_policy(peer, family, version, model)
                if changed:
                    await self._broadcast_gateways()
            case WorkerStarted(worker_id=worker_id, pid=pid) if kind == "agent":
                reg.worker_started(worker_id, pid)
            case WorkerStopped(worker_id=worker_id) if kind == "agent":
                assert self._layout is not None
                self._layout.worker_stopped(worker_id)
                reg.worker_down(worker_id, "stopped")
            case WorkerCrashed(worker_id=worker_id, restarts=restarts, will_restart=again) if kind == "agent":
                reg.worker_down(worker_id, "crashed" if not again else "restarting", restarts)
                log.warning("worker crashed", extra={"worker": worker_id, "restarts": restarts})
            case WorkerReady(pid=pid, batch_latency_ms=latency, slowdown=slowdown) if kind == "worker":
                first = peer_id in reg.workers and reg.workers[peer_id].state != "ready"
                if not reg.worker_ready(peer_id, pid, latency, now, slowdown):
                    log.info("ready worker is not in the plan", extra={"worker": peer_id})
                elif first:
                    # It may have started before a gateway joined: tell it every gateway.
                    await self._send(peer, GatewayListChanged(gateways=reg.gateway_endpoints()))
            case ProfileProgress() as progress if kind == "agent":
                self._on_profile_progress(peer_id, progress)
            case GetProfiles(rerun=rerun):
                if rerun:
                    for agent_id in list(reg.agents):
                        if reg.agent_alive(agent_id, now):
                            await self._profile_agent(agent_id, everything=True)
                assert self._store is not None
                await self._send(peer, ProfilesReply(samples=tuple(self._store.profiles()),
                                                     colocations=tuple(self._store.colocations()),
                                                     running=self._profiling.describe()))
            case Replan(policy=policy):
                assert self._layout is not None
                known = (*POLICIES, "static")
                if policy and policy not in known:
                    await self._send(peer, ReplanReply(policy=policy, accepted=False,
                                                       message=f"unknown policy; known: {', '.join(known)}"))
                else:
                    self._layout.force(policy)
                    await self._send(peer, ReplanReply(policy=self._layout.settings.policy, accepted=True))
            case DemandReport(window_s=window_s, counts=counts, missed=missed) if kind == "gateway":
                self._demand.observe(counts, window_s, now, source=peer_id, missed=missed)
            case DecisionRecords(records=records) if kind == "gateway":
                assert self._learner is not None and self._store is not None
                fresh = self._store.log_decisions(records, self._clock.time())
                self._learner.learn(r for r in fresh if r.family in {v.family for v in reg.variants.values()})
            case FetchArtifact(sha256=sha, offset=offset, length=length):
                await self._send(peer, self._chunk(sha, offset, length))
            case GetStatus():
                await self._send(peer, self._status())
            case other:
                await self._send(
                    peer, ErrorReply(code="unexpected", message=f"{type(other).__name__} is not for the controller from {kind}")
                )

    async def _on_register_agent(
        self, peer: bytes, agent_id: str, hostname: str, devices, pid: int, now: float
    ) -> None:
        reg = self._registry
        store = self._store
        assert reg is not None and store is not None
        reg.agent_registered(agent_id, hostname, devices, now)
        store.save_agent(agent_id, hostname, self._clock.time())
        if self._agent_pids.get(agent_id) != pid:  # a new agent process has no run of ours in progress
            self._profiling.forget_agent(agent_id)
        self._agent_pids[agent_id] = pid
        await self._send(
            peer,
            RegisterAgentReply(
                agent_id=agent_id, heartbeat_interval_s=self.config.heartbeat_interval_s, controller_epoch=self._epoch
            ),
        )
        costs = {name: v.cost_ms for name, v in reg.variants.items()}
        planned = [w.plan for w in reg.workers_of(agent_id)]
        placed = {name for w in reg.workers.values() for name in w.plan.variants}
        missing = [name for name in reg.variants if name not in placed]
        if planned and missing:  # variants added to the repository since this placement was made
            planned = extend_placement(planned, costs, missing)
            for plan in planned:
                store.save_placement(plan)
                reg.plan_worker(plan)
        if not planned:
            planned = initial_placement(
                agent_id,
                devices,
                costs,
                cores_per_partition=self.config.cpu_cores_per_partition,
                max_partitions_per_device=self.config.max_partitions_per_device,
            )
            for plan in planned:
                store.save_placement(plan)
                reg.plan_worker(plan)
        for plan in planned:
            if reg.workers[plan.worker_id].state not in LEAVING:
                await self._send(peer, self._start_command(plan))
        if self.config.auto_profile:
            await self._profile_agent(agent_id)

    def _start_command(self, plan: PlannedWorker) -> StartWorker:
        reg = self._registry
        assert reg is not None
        batches = dict(plan.batches)
        specs = []
        for name in plan.variants:
            spec = reg.variants[name].spec()
            spec = dataclasses.replace(spec, batching=reg.variants[name].batching or self.config.batching)
            if name in batches:  # the plan's batch size caps the manifest's
                spec = dataclasses.replace(spec, max_batch=max(1, min(spec.max_batch, batches[name])))
            specs.append(spec)
        return StartWorker(
            worker_id=plan.worker_id,
            partition=plan.partition,
            variants=tuple(specs),
            gateways=reg.gateway_endpoints(),
            controller=self.advertised_address,
        )

    async def _profile_agent(self, agent_id: str, *, everything: bool = False) -> None:
        reg, store = self._registry, self._store
        assert reg is not None and store is not None
        agent = reg.agents[agent_id]
        for cmd in self._profiling.commands(
            agent_id, agent.devices, list(reg.variants.values()), store.profiles(), everything=everything,
            colocation=self.config.profile_colocation, repeats=self.config.profile_repeats,
        ):
            log.info("asking %s to profile %d variants on %s", agent_id, len(cmd.variants), cmd.device_id)
            await self._send(f"agent:{agent_id}".encode(), cmd)

    def _on_profile_progress(self, agent_id: str, progress: ProfileProgress) -> None:
        assert self._store is not None
        if progress.samples or progress.colocations:
            self._store.save_profiles(progress.samples, progress.colocations, self._clock.time())
        self._profiling.progress(agent_id, progress.request_id, progress.completed, progress.total, progress.done)
        if progress.error:
            log.warning("profiling on %s failed: %s", agent_id, progress.error)
        elif progress.done:
            log.info("profiling on %s finished (%d measurements)", agent_id, progress.total)

    @property
    def advertised_address(self) -> str:
        """The address workers dial: configured, or the bound one with a wildcard host made concrete."""
        if self.config.advertise:
            return self.config.advertise
        if "0.0.0.0" in self.address or "*" in self.address:
            host = socket.gethostname()
            return self.address.replace("0.0.0.0", host).replace("*", host)
        return self.address

    def _chunk(self, sha: str, offset: int, length: int) -> ArtifactChunkReply | ErrorReply:
        variant = self._by_sha.get(sha)
        if variant is None:
            return ErrorReply(code="unknown_artifact", message=f"no variant in the repository has artifact {sha}")
        if offset < 0 or length <= 0:
            return ErrorReply(code="bad_range", message=f"bad range {offset}+{length}")
        with variant.artifact.open("rb") as f:
            f.seek(offset)
            data = f.read(min(length, ARTIFACT_CHUNK_BYTES))
        return ArtifactChunkReply(sha256=sha, offset=offset, total_size=variant.size_bytes, data=data)

    def _status(self) -> StatusReply:
        reg = self._registry
        assert reg is not None
        agents, workers, models = reg.status(self._clock.monotonic())
        return StatusReply(
            controller_epoch=self._epoch,
            routing_version=reg.routing_version,
            agents=agents,
            workers=workers,
            models=models,
            gateways=reg.gateway_endpoints(),
        )

    async def _on_tick(self) -> None:
        reg = self._registry
        assert reg is not None
        now = self._clock.monotonic()
        # Ticks come every heartbeat interval; a longer gap means this loop was busy (a re-plan on
        # a starved host) and heartbeats may sit unread in the socket: that silence is ours.
        reg.liveness.excuse(now - self._last_tick - self.config.heartbeat_interval_s, now)
        self._last_tick = now
        lost = reg.expire(now)
        if lost:
            log.warning("peers lost: %s", ", ".join(f"{k} (silent {now - (reg.liveness.last_seen(k) or now):.1f} s)"
                                                     for k in lost))
            if any(k.startswith("gateway:") for k in lost):
                await self._broadcast_gateways()
        assert self._layout is not None
        for agent_id, command in self._layout.tick(now):
            await self._send(f"agent:{agent_id}".encode(), command)
        if now - self._last_publish >= self.config.policy_publish_interval_s:
            self._last_publish = now
            assert self._learner is not None
            for family, version, model in self._learner.publish():
                for gateway_id in list(reg.gateways):
                    await self._send_policy(f"gateway:{gateway_id}".encode(), family, version, model)
        self._seq += 1
        beat = Heartbeat(sender="controller", role="controller", seq=self._seq)
        for agent_id in list(reg.agents):
            await self._send(f"agent:{agent_id}".encode(), beat)
        for gateway_id in list(reg.gateways):
            await self._send(f"gateway:{gateway_id}".encode(), beat)
        await self._publish_routing()

    async def _publish_routing(self) -> None:
        reg = self._registry
        assert reg is not None
        table = reg.routing_table()
        if table is None:
            return
        log.info("routing table changed", extra={"version": table.version, "workers": len(table.workers)})
        for gateway_id in list(reg.gateways):
            await self._send(f"gateway:{gateway_id}".encode(), table)

    async def _broadcast_gateways(self) -> None:
        reg = self._registry
        assert reg is not None
        msg = GatewayListChanged(gateways=reg.gateway_endpoints())
        for worker_id, record in reg.workers.items():
            if record.state in ("ready", "starting"):
                await self._send(f"worker:{worker_id}".encode(), msg)

    async def _send_policy(self, peer: bytes, family: str, version: int, model: bytes) -> None:
        snapshot = PolicySnapshot(family=family, version=version, vw_args=self._learner.vw_args, model_bytes=len(model))
        await self._send(peer, snapshot, [np.frombuffer(model, dtype=np.uint8)])

    async def _send(self, peer: bytes, msg: object, tensors: list | tuple = ()) -> None:
        assert self._endpoint is not None
        try:
            self._endpoint.send_nowait(msg, tensors, to=peer)
        except PeerUnreachable:
            log.debug("peer unreachable", extra={"peer": peer})
        except zmq.Again:
            log.warning("send queue full", extra={"peer": peer})
