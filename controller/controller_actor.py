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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq.asyncio

from controller.config import ControllerConfig
from controller.membership import Membership
from controller.trust import Trust
from controller.placement import PlannedWorker
from controller.demand import DemandTracker
from controller.layout_manager import LayoutManager, LayoutPolicy
from controller.learner import Learner
from controller.metrics import ControllerMetrics
from controller.planning import POLICIES
from controller.profiling import ProfilingRuns
from controller.registry import Joined, Registry
from controller.repository import Variant, scan_repository, set_aside
from controller.store import StateStore
from mesh.actor import Actor
from mesh.clock import Clock, SystemClock
from mesh.lifecycle import feed, tick
from mesh.keys import Keyring
from mesh.metrics_http import MetricsServer
from mesh.links import link_options
from mesh.transport import Endpoint, Incoming, PeerUnreachable
from mesh.transport_metrics import EndpointCollector
from protocol.types import ReplanRecord, WorkerState
from protocol.codec import ARTIFACT_CHUNK_BYTES
from protocol.message import (
    ArtifactChunkReply,
    DecisionRecords,
    DemandReport,
    DeregisterAgent,
    DeregisterGateway,
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
    VariantLoadFailed,
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
        self._trust: Trust | None = None
        self._learner: Learner | None = None
        self._layout: LayoutManager | None = None
        self._membership: Membership | None = None
        self._unplanned_seen: set[str] = set()
        self._profiling = ProfilingRuns()
        self._demand = DemandTracker(half_life_s=config.demand_half_life_s, history_s=config.demand_history_s)
        # The part of it that named a variant rather than its family (kept deployed while scaling).
        self._named = DemandTracker(half_life_s=config.demand_half_life_s, history_s=config.demand_history_s)
        self._last_publish = float("-inf")
        self._epoch = 0
        self._seq = 0
        self._last_tick = float("inf")
        self.address = ""
        self.metrics = ControllerMetrics()
        self.metrics.registry.register(EndpointCollector(lambda: {"control": self._endpoint}))
        self._metrics_server: MetricsServer | None = None

    @property
    def metrics_url(self) -> str:
        return self._metrics_server.url if self._metrics_server is not None else ""

    async def on_start(self) -> None:
        if self.config.metrics_port:  # first: a taken port fails the start before anything else is held
            self._metrics_server = MetricsServer(self.metrics.registry, self.config.metrics_host,
                                                 self.config.metrics_port)
            await self._metrics_server.start()
        repository = scan_repository(self.config.repository)
        variants = repository.variants
        for name, reason in repository.unavailable.items():
            log.error("variant %s is unavailable: %s", name, reason)
        self._by_sha = {v.sha256: v for v in variants.values()}
        self._demand.known = self._named.known = frozenset(variants)
        self._store = StateStore(Path(self.config.state_dir) / "controller.sqlite3",
                                 retention=self.config.decision_retention())
        self._epoch = self._store.next_epoch()
        self._registry = Registry(
            variants,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            missed_heartbeats=self.config.missed_heartbeats,
            epoch=self._epoch,
        )
        self._registry.unavailable.update(repository.unavailable)
        for plan in self._store.placements():
            kept = tuple(n for n in plan.variants if n in variants)
            if kept:
                self._registry.plan_worker(dataclasses.replace(plan, variants=kept))
        for gateway_id, endpoint in self._store.gateways().items():
            self._registry.restore_gateway(gateway_id, endpoint, self._clock.monotonic())
        self._registry.routing_table()  # version 1 of this epoch: every model, no worker yet
        self._registry.await_restored(self._clock.monotonic())  # gateways keep their table until the workers report
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
                         drain_s=self.config.stop_drain_s, start_timeout_s=self.config.worker_start_timeout_s,
                         min_layout_dwell_s=self.config.min_layout_dwell_s,
                         rejoin_settle_s=self.config.rejoin_settle_s),
            self._registry, self._store, self._demand, self._start_command, generation=self._epoch,
            named=self._named,
        )
        self._membership = Membership(
            self._registry, self._store, self._layout, self._start_command,
            cores_per_partition=self.config.cpu_cores_per_partition,
            max_partitions_per_device=self.config.max_partitions_per_device,
            drain_s=self.config.stop_drain_s, forget_after_s=self.config.lost_agent_forget_s,
        )
        self._membership.place_added_variants(variants)
        self.metrics.bind(self._registry, self._layout, self._demand, self._clock.monotonic)
        self._layout.joined(self._clock.monotonic())  # agents of the plan of record get time to come back
        if any(w.in_plan for w in self._registry.workers.values()):
            self._layout.restored(self._clock.monotonic())
        self._trust = Trust(Keyring(self.config.keys_dir) if self.config.keys_dir else None, self._registry,
                            self._store)
        ring = self._trust.keyring
        self._endpoint = Endpoint.router(self._ctx, self.config.bind, security=ring.server_keys() if ring else None,
                                         refresh=ring.refresh if ring else None, link=link_options(self.config))
        self.address = self._endpoint.address
        self._tasks = [
            asyncio.create_task(feed(self._endpoint, self), name="controller-recv"),
            asyncio.create_task(tick(self, self.config.heartbeat_interval_s, Tick()), name="controller-tick"),
        ]
        log.info("controller listening", extra={"address": self.address, "epoch": self._epoch})

    async def on_stop(self) -> None:
        if self._metrics_server is not None:
            await self._metrics_server.stop()
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
        if self._refused(incoming):
            return
        match incoming.msg:
            case Heartbeat():
                if not reg.beat(kind, peer_id, now):
                    await self._send(peer, ErrorReply(code="unknown_peer", message="register again", retryable=True))
            case RegisterAgent() as register if kind == "agent":
                await self._on_register_agent(peer, peer_id, register, now)
            case DeregisterAgent() if kind == "agent":
                assert self._membership is not None
                self._membership.left(peer_id)
            case DeregisterGateway() if kind == "gateway":
                self._store.delete_gateway(peer_id)
                if reg.gateway_left(peer_id):
                    log.info("gateway left", extra={"gateway": peer_id})
                    await self._broadcast_gateways()
            case RegisterGateway(data_endpoint=data_endpoint) if kind == "gateway":
                data_endpoint = self._trust.gateway_endpoint(data_endpoint, incoming.peer_name)
                if (told := self._trust.told()) is not None:
                    await self._send(peer, told)
                changed = reg.gateway_registered(peer_id, data_endpoint, now)
                if changed:
                    self._store.save_gateway(peer_id, data_endpoint, self._clock.time())
                await self._send(
                    peer,
                    RegisterGatewayReply(
                        gateway_id=peer_id,
                        heartbeat_interval_s=self.config.heartbeat_interval_s,
                        controller_epoch=self._epoch,
                    ),
                )
                if not reg.routing_held(now):  # held: it keeps the table it has (or waits for the first)
                    await self._send(peer, reg.current_table())
                assert self._learner is not None
                families = sorted({v.family for v in reg.variants.values()})
                for family, version, model in self._learner.snapshots(families):
                    await self._send_policy(peer, family, version, model)
                if changed:
                    await self._broadcast_gateways()
            case WorkerStarted(worker_id=worker_id, pid=pid, public_key=key) if kind == "agent":
                reg.worker_started(worker_id, pid)
                if self._trust.worker_reported(peer_id, worker_id, key):
                    await self._tell_gateways()
            case WorkerStopped(worker_id=worker_id) if kind == "agent":
                assert self._layout is not None
                self._layout.worker_stopped(worker_id)
                reg.worker_down(worker_id, "stopped")
            case WorkerCrashed(worker_id=worker_id, restarts=restarts, will_restart=again) if kind == "agent":
                reg.worker_down(worker_id, WorkerState.CRASHED if not again else WorkerState.RESTARTING, restarts)
                log.warning("worker crashed", extra={"worker": worker_id, "restarts": restarts})
            case WorkerReady(pid=pid, batch_latency_ms=latency, slowdown=slowdown, runtimes=runtimes) if kind == "worker":
                first = peer_id in reg.workers and reg.workers[peer_id].state != WorkerState.READY
                if not reg.worker_ready(peer_id, pid, latency, now, slowdown, runtimes):
                    if peer_id not in self._unplanned_seen:  # it heartbeats; say so once
                        self._unplanned_seen.add(peer_id)
                        log.info("ready worker is not in the plan", extra={"worker": peer_id})
                elif first and reg.gateway_endpoints() and not reg.routing_held(now):
                    # It may have started before a gateway joined: tell it every gateway. Not while
                    # this controller is still hearing from the mesh again (after a restart or its own
                    # partition, gateways re-register one by one): a list without a gateway that is
                    # serving would make the worker drop its link to it. Gateways registering send
                    # the full list anyway.
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
            case DemandReport(window_s=window_s, counts=counts, missed=missed, named=named) if kind == "gateway":
                self._demand.observe(counts, window_s, now, source=peer_id, missed=missed)
                self._named.observe(named, window_s, now, source=peer_id)
            case DecisionRecords(records=records) if kind == "gateway":
                assert self._learner is not None and self._store is not None
                admitted = self._learner.admit(records, {v.family for v in reg.variants.values()})
                self._learner.learn(self._store.log_decisions(admitted, self._clock.time()))
            case VariantLoadFailed(variant=variant, reason=reason) if kind in ("worker", "agent"):
                # Only a peer the variant was placed on may set it aside.
                placed = reg.workers_of(peer_id) if kind == "agent" else [reg.workers.get(peer_id)]
                if any(w is not None and variant in w.plan.variants for w in placed) and set_aside(
                        reg.variants, reg.unavailable, variant, reason):
                    log.error("variant %s failed to load on %s and is now unavailable: %s", variant, peer_id, reason)
                    assert self._layout is not None
                    self._layout.force()  # re-place its healthy neighbours without it
                    for agent_id in list(reg.agents) if self.config.auto_profile else ():
                        if reg.agent_alive(agent_id, now):  # a run that failed on it left the rest unmeasured
                            await self._profile_agent(agent_id)
            case FetchArtifact(sha256=sha, offset=offset, length=length):
                await self._send(peer, self._chunk(sha, offset, length))
            case GetStatus():
                await self._send(peer, self._status())
            case other:
                await self._send(
                    peer, ErrorReply(code="unexpected", message=f"{type(other).__name__} is not for the controller from {kind}")
                )

    async def _tell_gateways(self) -> None:
        """Tell the gateways when a key was added or revoked or a worker's credential changed."""
        reg = self._registry
        if reg is None or (msg := self._trust.changes()) is None:
            return
        for gateway_id in list(reg.gateways):
            await self._send(f"gateway:{gateway_id}".encode(), msg)

    def _refused(self, incoming: Incoming) -> bool:
        """True (and the sender told why) when the sender's key does not allow this message."""
        assert incoming.peer is not None
        answer = self._trust.refused(incoming.peer, incoming.peer_name, incoming.msg)
        if answer is None:
            return False
        log.warning("refused %s from %r: %s", type(incoming.msg).__name__, incoming.peer, answer.message)
        self._endpoint_reply(incoming.peer, answer)
        return True

    def _endpoint_reply(self, peer: bytes, msg: object) -> None:
        assert self._endpoint is not None
        try:
            self._endpoint.send_nowait(msg, to=peer)
        except (PeerUnreachable, zmq.Again):
            pass

    async def _on_register_agent(self, peer: bytes, agent_id: str, msg: RegisterAgent, now: float) -> None:
        assert self._membership is not None and self._store is not None
        registration = self._membership.register(agent_id, msg, now)
        for running in msg.workers:
            self._trust.worker_reported(agent_id, running.worker_id, running.public_key)
        await self._tell_gateways()
        await self._send(
            peer,
            RegisterAgentReply(
                agent_id=agent_id, heartbeat_interval_s=self.config.heartbeat_interval_s, controller_epoch=self._epoch
            ),
        )
        if registration.joined is Joined.REPEAT:
            return
        self._store.save_agent(agent_id, msg.hostname, self._clock.time())
        if registration.joined is not Joined.RETURNED:  # a new agent process has no run of ours in progress
            self._profiling.forget_agent(agent_id)
        for command in registration.commands:
            await self._send(peer, command)
        if self.config.auto_profile:
            await self._profile_agent(agent_id)

    def _start_command(self, plan: PlannedWorker) -> StartWorker:
        reg = self._registry
        assert reg is not None
        batches = reg.run_batches(plan)
        specs = []
        for name in plan.variants:
            if name not in reg.variants:  # set aside since this plan was made
                continue
            spec = reg.variants[name].spec()
            spec = dataclasses.replace(spec, batching=reg.variants[name].batching or self.config.batching)
            if name in batches:  # the plan's batch size caps the manifest's
                spec = dataclasses.replace(spec, max_batch=batches[name])
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
        now = self._clock.monotonic()
        agents, workers, models = reg.status(now, self.config.lost_agent_forget_s)
        history = self._layout.history if self._layout is not None else ()
        return StatusReply(
            controller_epoch=self._epoch,
            routing_version=reg.routing_version,
            agents=agents,
            workers=workers,
            models=models,
            gateways=reg.gateway_endpoints(),
            unavailable=dict(reg.unavailable),
            replans=tuple(ReplanRecord(ago_s=max(0.0, now - e.at), reason=e.reason, policy=e.policy, kept=e.kept,
                                       started=e.started, retired=e.retired, scaled=e.scaled,
                                       effective_accuracy=e.effective_accuracy, shed=dict(e.shed),
                                       finished=e.finished) for e in history),
        )

    async def _on_tick(self) -> None:
        reg = self._registry
        assert reg is not None
        now = self._clock.monotonic()
        for agent_id in self._trust.tick(now):
            log.warning("agent %s's key was revoked: its workers leave routing and the plan", agent_id)
        await self._tell_gateways()
        # Ticks come every heartbeat interval; a longer gap means this loop was busy (a re-plan on
        # a starved host) and heartbeats may sit unread in the socket: that silence is ours.
        reg.liveness.excuse(now - self._last_tick - self.config.heartbeat_interval_s, now)
        self._last_tick = now
        lost = reg.expire(now)
        if lost:
            log.warning("peers lost: %s", ", ".join(f"{k} (silent {now - (reg.liveness.last_seen(k) or now):.1f} s)"
                                                     for k in lost))
        assert self._layout is not None and self._membership is not None
        self._membership.forget_lost(now)
        if forgotten := reg.forget_lost_gateways(now, self.config.lost_agent_forget_s):
            for gateway_id in forgotten:
                self._store.delete_gateway(gateway_id)
            await self._broadcast_gateways()  # workers stop dialling a gateway gone this long
        assert self._store is not None
        self._store.retain(self._clock.time())  # a no-op until a check is due
        planned_before, started = self._layout.current, time.perf_counter()
        commands = self._layout.tick(now)
        if self._layout.current is not planned_before:  # a layout was computed this tick
            self.metrics.plan_duration.observe(time.perf_counter() - started)
        for agent_id, command in commands:
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
        if reg.routing_held(self._clock.monotonic()):
            return
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
            if record.state in (WorkerState.READY, WorkerState.STARTING):
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
