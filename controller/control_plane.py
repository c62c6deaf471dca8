"""What the controller does with each control message and each tick, as messages to send.

The controller's state (registry, store, layout, membership, trust, learner, profiling runs,
demand) and the rules that turn one message into registry changes and replies. Synchronous: the
caller passes ``now`` via the injected clock and sends :attr:`ControlPlane.outbox` afterwards,
so the controller actor only moves messages. Imports no socket.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controller.artifact_serving import ArtifactFiles, artifact_chunk
from controller.config import ControllerConfig
from controller.demand import DemandTracker
from controller.layout_manager import LayoutManager
from controller.layout_policy import LayoutPolicy
from controller.learner import Learner
from controller.load_failures import LoadFailures
from controller.membership import Membership
from controller.metrics import ControllerMetrics
from controller.placement import PlannedWorker
from controller.planning import POLICIES
from controller.profile_control import ProfileControl, keep_profiles_of_served
from controller.profiling import ProfilingRuns, first_run_id
from controller.registry import Joined, Registry
from controller.repository import Variant, scan_repository
from controller.store import StateStore
from controller.trust import Trust
from mesh.clock import Clock
from mesh.keys import Keyring
from protocol.message import (
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
    RegisterAgent,
    RegisterAgentReply,
    RegisterGateway,
    RegisterGatewayReply,
    Replan,
    ReplanReply,
    StartWorker,
    StatusReply,
    VariantLoadFailed,
    WorkerCrashed,
    WorkerReady,
    WorkerStarted,
    WorkerStopped,
)
from protocol.types import ReplanRecord, WorkerState

log = logging.getLogger(__name__)

# Workers not in the plan that were said to be ready, remembered to say so once each (up to this many).
UNPLANNED_REMEMBERED = 1024

REFUSAL_LOG_EVERY_S = 60.0  # a refused peer's messages are logged at most this often


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for one peer (its routing id), with the tensors that travel beside it."""

    peer: bytes
    msg: object
    tensors: tuple = ()


class ControlPlane:
    """The controller's state and rules. Owned by the controller actor; not thread-safe.

    Opening it reads the repository and the state store (and restores the plan of record from
    it); every later change comes from :meth:`receive` or :meth:`tick`. Each appends what must be
    sent to :attr:`outbox`, in order, for the caller to send and clear.
    """

    def __init__(self, config: ControllerConfig, clock: Clock, metrics: ControllerMetrics,
                 controller_address: Callable[[], str]) -> None:
        self.config = config
        self._clock = clock
        self._controller_address = controller_address  # the address workers dial, once bound
        self.outbox: list[Outgoing] = []
        self._unplanned_seen: set[str] = set()
        self._refusals_logged: dict[bytes, float] = {}  # peer -> when its last refusal was logged
        self._last_publish = float("-inf")
        self._seq = 0
        self._replan_failure = ""  # repr of the error the last re-plan attempt raised, if it raised
        self._last_tick = float("inf")
        self.demand = DemandTracker(half_life_s=config.demand_half_life_s, history_s=config.demand_history_s)
        # The part of it that named a variant rather than its family (kept deployed while scaling).
        self.named = DemandTracker(half_life_s=config.demand_half_life_s, history_s=config.demand_history_s)

        read_ns = time.time_ns()  # files changed after this are checked again when held open
        repository = scan_repository(config.repository)
        variants = repository.variants
        for name, reason in repository.unavailable.items():
            log.error("variant %s is unavailable: %s", name, reason)
        self._by_sha: dict[str, Variant] = {v.sha256: v for v in variants.values()}
        self._files = ArtifactFiles(variants.values(), read_ns)  # the bytes read now, whatever replaces them
        self.demand.known = self.named.known = frozenset(variants)
        self.store = StateStore(Path(config.state_dir) / "controller.sqlite3", retention=config.decision_retention())
        self.epoch = self.store.next_epoch()
        measured_since = keep_profiles_of_served(self.store, variants, self.epoch, auto_profile=config.auto_profile)
        self.instance = secrets.token_hex(8)
        self.registry = reg = Registry(variants, heartbeat_interval_s=config.heartbeat_interval_s,
                                       missed_heartbeats=config.missed_heartbeats, epoch=self.epoch)
        reg.unavailable.update(repository.unavailable)
        self.load_failures = LoadFailures(reg)  # variants a worker could not load: tried again on a re-plan
        for plan in self.store.placements():
            kept = tuple(n for n in plan.variants if n in variants)
            if kept:
                reg.plan_worker(dataclasses.replace(plan, variants=kept))
        now = clock.monotonic()
        for gateway_id, endpoint in self.store.gateways().items():
            reg.restore_gateway(gateway_id, endpoint, now)
        reg.routing_table()  # version 1 of this epoch: every model, no worker yet
        reg.await_restored(now)  # gateways keep their table until the workers report
        self.profiling = ProfilingRuns(next_id=first_run_id(self.epoch),
                                       profiled={(s.variant, s.device_kind) for s in self.store.profiles()})
        self.learner = Learner(config.state_dir)
        self.layout = LayoutManager(
            LayoutPolicy(policy=config.planner, replan_period_s=config.replan_period_s,
                         accuracy_scaling=config.accuracy_scaling,
                         scaling_time_limit_s=config.scaling_time_limit_s, fast_replan_s=config.fast_replan_s,
                         scaling_beta=config.scaling_beta, scaling_horizon_s=config.scaling_horizon_s,
                         live_slowdown_hold_s=config.live_slowdown_hold_s,
                         scaling_beta_max=config.scaling_beta_max,
                         drain_s=config.stop_drain_s, start_timeout_s=config.worker_start_timeout_s,
                         min_layout_dwell_s=config.min_layout_dwell_s,
                         rejoin_settle_s=config.rejoin_settle_s, cpu_worker_memory_bytes=config.cpu_worker_memory_mb << 20),
            reg, self.store, self.demand, self.start_command, generation=self.epoch, named=self.named,
        )
        self.profiles = ProfileControl(self.profiling, reg, self.store, self.layout, self._send, clock.time,
                                       colocation=config.profile_colocation, repeats=config.profile_repeats,
                                       measured_since=measured_since)
        self.membership = Membership(
            reg, self.store, self.layout, self.start_command,
            cores_per_partition=config.cpu_cores_per_partition,
            max_partitions_per_device=config.max_partitions_per_device,
            drain_s=config.stop_drain_s, forget_after_s=config.lost_agent_forget_s, profilers=config.profiling_processes())
        self.membership.place_added_variants(variants)
        self.metrics = metrics
        metrics.bind(reg, self.layout, self.demand, clock.monotonic)
        self.layout.joined(now)  # agents of the plan of record get time to come back
        if any(w.in_plan for w in reg.workers.values()):
            self.layout.restored(now)
        self.trust = Trust(Keyring(config.keys_dir) if config.keys_dir else None, reg, self.store)

    def close(self) -> None:
        self.learner.publish()  # save what was learned since the last publish
        self.learner.close()
        self.store.close()
        self._files.close()

    # --- messages -------------------------------------------------------------------------

    def receive(self, peer: bytes, peer_name: str | None, msg: object) -> None:
        """Apply one control message from ``peer`` (a routing id ``kind:id``); then publish routing."""
        self._dispatch(peer, peer_name, msg)
        self.publish_routing()

    def _dispatch(self, peer: bytes, peer_name: str | None, msg: object) -> None:
        reg = self.registry
        kind, _, peer_id = peer.decode(errors="replace").partition(":")
        now = self._clock.monotonic()
        refusal = self.trust.refused(peer, peer_name, msg)
        if refusal is not None:
            # Once a minute per peer: a revoked peer retries every beat until someone stops it.
            if now - self._refusals_logged.get(peer, float("-inf")) >= REFUSAL_LOG_EVERY_S:
                if len(self._refusals_logged) >= 1024:  # names come from the wire: bounded
                    self._refusals_logged.clear()
                self._refusals_logged[peer] = now
                log.warning("refused %s from %s %r: %s (said once a minute per peer)", type(msg).__name__, kind,
                            peer_id, refusal.message)
            self._send(peer, refusal)
            return
        match msg:
            case Heartbeat():
                if not reg.beat(kind, peer_id, now):
                    self._send(peer, ErrorReply(code="unknown_peer", message="register again", retryable=True))
            case RegisterAgent() as register if kind == "agent":
                self._on_register_agent(peer, peer_id, register, now)
            case DeregisterAgent() if kind == "agent":
                self.membership.left(peer_id)
            case DeregisterGateway() if kind == "gateway":
                self.store.delete_gateway(peer_id)
                if reg.gateway_left(peer_id):
                    log.info("gateway left", extra={"gateway": peer_id})
                    self._broadcast_gateways()
            case RegisterGateway(data_endpoint=data_endpoint) if kind == "gateway":
                self._on_register_gateway(peer, peer_id, self.trust.gateway_endpoint(data_endpoint, peer_name), now)
            case WorkerStarted(worker_id=worker_id, pid=pid, public_key=key) if kind == "agent":
                reg.worker_started(worker_id, pid)
                if self.trust.worker_reported(peer_id, worker_id, key):
                    self._tell_gateways()
            case WorkerStopped(worker_id=worker_id) if kind == "agent":
                self.layout.worker_stopped(worker_id)
                reg.worker_down(worker_id, "stopped")
            case WorkerCrashed(worker_id=worker_id, restarts=restarts, will_restart=again) if kind == "agent":
                reg.worker_down(worker_id, WorkerState.CRASHED if not again else WorkerState.RESTARTING, restarts)
                log.warning("worker crashed", extra={"worker": worker_id, "restarts": restarts})
            case WorkerReady(pid=pid, batch_latency_ms=latency, slowdown=slowdown, runtimes=runtimes) if kind == "worker":
                first = peer_id in reg.workers and reg.workers[peer_id].state != WorkerState.READY
                if not reg.worker_ready(peer_id, pid, latency, now, slowdown, runtimes, msg.memory_peak_bytes):
                    if peer_id not in self._unplanned_seen:  # it heartbeats; say so once
                        if len(self._unplanned_seen) >= UNPLANNED_REMEMBERED:
                            self._unplanned_seen.clear()  # names from the wire: bounded, at the cost of a repeat
                        self._unplanned_seen.add(peer_id)
                        log.info("ready worker is not in the plan", extra={"worker": peer_id})
                elif first and reg.gateway_endpoints() and not reg.routing_held(now):
                    # It may have started before a gateway joined: tell it every gateway. Not while
                    # this controller is still hearing from the mesh again (after a restart or its own
                    # partition, gateways re-register one by one): a list without a gateway that is
                    # serving would make the worker drop its link to it. Gateways registering send
                    # the full list anyway.
                    self._send(peer, GatewayListChanged(gateways=reg.gateway_endpoints()))
            case ProfileProgress() as progress if kind == "agent":
                self.profiles.report(peer_id, progress, reg.agent_alive(peer_id, now))
            case GetProfiles(rerun=rerun):
                if rerun:
                    for agent_id in list(reg.agents):
                        if reg.agent_alive(agent_id, now):
                            self.profiles.ask(agent_id, everything=True)
                self._send(peer, ProfilesReply(samples=tuple(self.store.profiles()),
                                               colocations=tuple(self.store.colocations()),
                                               running=self.profiling.describe()))
            case Replan(policy=policy):
                known = (*POLICIES, "static")
                if policy and policy not in known:
                    self._send(peer, ReplanReply(policy=policy, accepted=False,
                                                 message=f"unknown policy; known: {', '.join(known)}"))
                else:
                    if retried := self.load_failures.restore():  # the operator may have fixed their hosts
                        self._remeasure(now)
                    self.layout.force(policy)
                    message = f"trying again variants a worker could not load: {', '.join(retried)}" if retried else ""
                    self._send(peer, ReplanReply(policy=self.layout.settings.policy, accepted=True, message=message))
            case DemandReport(window_s=window_s, counts=counts, missed=missed, named=named) if kind == "gateway":
                self.demand.observe(counts, window_s, now, source=peer_id, missed=missed)
                self.named.observe(named, window_s, now, source=peer_id)
            case DecisionRecords(records=records) if kind == "gateway":
                admitted = self.learner.admit(records, {v.family for v in reg.variants.values()})
                self.learner.learn(self.store.log_decisions(admitted, self._clock.time()))
            case VariantLoadFailed(variant=variant, reason=reason) if kind in ("worker", "agent"):
                self._on_load_failed(kind, peer_id, variant, reason, now)
            case FetchArtifact(sha256=sha, offset=offset, length=length):
                self._send(peer, artifact_chunk(self._by_sha.get(sha), sha, offset, length, self._files))
            case GetStatus():
                self._send(peer, self.status())
            case other:
                self._send(peer, ErrorReply(code="unexpected",
                                            message=f"{type(other).__name__} is not for the controller from {kind}"))

    def _on_register_agent(self, peer: bytes, agent_id: str, msg: RegisterAgent, now: float) -> None:
        registration = self.membership.register(agent_id, msg, now)
        for running in msg.workers:
            self.trust.worker_reported(agent_id, running.worker_id, running.public_key)
        self._tell_gateways()
        self._send(peer, RegisterAgentReply(agent_id=agent_id, heartbeat_interval_s=self.config.heartbeat_interval_s,
                                            controller_epoch=self.epoch))
        if registration.joined is not Joined.NEW:
            self.profiles.resend(agent_id)
        if registration.joined is Joined.REPEAT:
            return
        self.store.save_agent(agent_id, msg.hostname, self._clock.time())
        if registration.joined is not Joined.RETURNED:
            self.profiles.forget(agent_id)
        for command in registration.commands:
            self._send(peer, command)
        if self.config.auto_profile:
            self.profiles.ask(agent_id)
        else:  # an operator's re-run may have devices waiting their turn
            self.profiles.ask_next(agent_id)

    def _on_register_gateway(self, peer: bytes, gateway_id: str, data_endpoint: str, now: float) -> None:
        reg = self.registry
        if (told := self.trust.told()) is not None:
            self._send(peer, told)
        changed = reg.gateway_registered(gateway_id, data_endpoint, now)
        if changed:
            self.store.save_gateway(gateway_id, data_endpoint, self._clock.time())
        self._send(peer, RegisterGatewayReply(gateway_id=gateway_id,
                                              heartbeat_interval_s=self.config.heartbeat_interval_s,
                                              controller_epoch=self.epoch, controller_instance=self.instance))
        if not reg.routing_held(now):  # held: it keeps the table it has (or waits for the first)
            self._send(peer, reg.current_table())
        families = sorted({v.family for v in reg.variants.values()})
        for family, version, model in self.learner.snapshots(families):
            self._send_policy(peer, family, version, model)
        if changed:
            self._broadcast_gateways()

    def _on_load_failed(self, kind: str, peer_id: str, variant: str, reason: str, now: float) -> None:
        if not self.load_failures.report(kind, peer_id, variant, reason, self.profiling.in_flight(peer_id)):
            return
        log.error("variant %s failed to load on %s and is now unavailable: %s", variant, peer_id, reason)
        self.layout.force(fresh=False)  # re-place its healthy neighbours without it
        self._remeasure(now)  # a run that failed on it left the rest unmeasured

    def _remeasure(self, now: float) -> None:
        """Ask every live agent to measure again what is unmeasured (after the variants changed)."""
        reg = self.registry
        for agent_id in list(reg.agents) if self.config.auto_profile else ():
            if reg.agent_alive(agent_id, now):
                self.profiles.retry(agent_id)

    # --- the timer ------------------------------------------------------------------------

    def tick(self) -> None:
        """Expire silent peers, advance the layout, publish policies, beat to agents and gateways."""
        reg = self.registry
        now = self._clock.monotonic()
        for agent_id in self.trust.tick(now):
            log.warning("agent %s's key was revoked: its workers leave routing and the plan", agent_id)
        if revoked := self.trust.revoked_gateways():
            for gateway_id in revoked:
                log.warning("gateway %s's key was revoked: workers stop dialling it", gateway_id)
                reg.gateway_left(gateway_id)
                self.store.delete_gateway(gateway_id)
            self._broadcast_gateways()
        self._tell_gateways()
        # Ticks come every heartbeat interval; a longer gap means this loop was busy (a re-plan on
        # a starved host) and heartbeats may sit unread in the socket: that silence is ours.
        reg.liveness.excuse(now - self._last_tick - self.config.heartbeat_interval_s, now)
        self._last_tick = now
        lost = reg.expire(now)
        if lost:
            log.warning("peers lost: %s", ", ".join(f"{k} (silent {now - (reg.liveness.last_seen(k) or now):.1f} s)"
                                                     for k in lost))
        for agent_id in self.membership.forget_lost(now):
            self.profiles.forget(agent_id)
        if forgotten := reg.forget_lost_gateways(now, self.config.lost_agent_forget_s):
            for gateway_id in forgotten:
                self.store.delete_gateway(gateway_id)
            self._broadcast_gateways()  # workers stop dialling a gateway gone this long
        self.store.retain(self._clock.time())  # a no-op until a check is due
        planned_before, started = self.layout.current, time.perf_counter()
        try:
            commands = self.layout.tick(now)
        except Exception as exc:
            # Serving goes on on the current placement, and so do heartbeats and routing below; a
            # re-plan that keeps failing is said once per cause, not every tick.
            commands = []
            if repr(exc) != self._replan_failure:
                log.exception("re-planning failed; the current placement serves on")
            self._replan_failure = repr(exc)
        else:
            self._replan_failure = ""
        if self.layout.current is not planned_before:  # a layout was computed this tick
            self.metrics.plan_duration.observe(time.perf_counter() - started)
        for agent_id, command in commands:
            self._send(f"agent:{agent_id}".encode(), command)
        if now - self._last_publish >= self.config.policy_publish_interval_s:
            self._last_publish = now
            for family, version, model in self.learner.publish():
                for gateway_id in list(reg.gateways):
                    self._send_policy(f"gateway:{gateway_id}".encode(), family, version, model)
        self._seq += 1
        beat = Heartbeat(sender="controller", role="controller", seq=self._seq)
        for agent_id in list(reg.agents):
            self._send(f"agent:{agent_id}".encode(), beat)
        for gateway_id in list(reg.gateways):
            self._send(f"gateway:{gateway_id}".encode(), beat)
        self.publish_routing()

    # --- what the controller tells -------------------------------------------------------

    def start_command(self, plan: PlannedWorker) -> StartWorker:
        reg = self.registry
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
        return StartWorker(worker_id=plan.worker_id, partition=plan.partition, variants=tuple(specs),
                           gateways=reg.gateway_endpoints(), controller=self._controller_address())

    def status(self) -> StatusReply:
        reg = self.registry
        now = self._clock.monotonic()
        agents, workers, models = reg.status(now, self.config.lost_agent_forget_s)
        return StatusReply(
            controller_epoch=self.epoch,
            routing_version=reg.routing_version,
            agents=agents,
            workers=workers,
            models=models,
            gateways=reg.gateway_endpoints(),
            unavailable=dict(reg.unavailable),
            replans=tuple(ReplanRecord(ago_s=max(0.0, now - e.at), reason=e.reason, policy=e.policy, kept=e.kept,
                                       started=e.started, retired=e.retired, scaled=e.scaled,
                                       effective_accuracy=e.effective_accuracy, shed=dict(e.shed),
                                       finished=e.finished) for e in self.layout.history),
        )

    def publish_routing(self) -> None:
        reg = self.registry
        if reg.routing_held(self._clock.monotonic()):
            return
        table = reg.routing_table()
        if table is None:
            return
        log.info("routing table changed", extra={"version": table.version, "workers": len(table.workers)})
        for gateway_id in list(reg.gateways):
            self._send(f"gateway:{gateway_id}".encode(), table)

    def _tell_gateways(self) -> None:
        """Tell the gateways when a key was added or revoked or a worker's credential changed."""
        if (msg := self.trust.changes()) is None:
            return
        for gateway_id in list(self.registry.gateways):
            self._send(f"gateway:{gateway_id}".encode(), msg)

    def _broadcast_gateways(self) -> None:
        reg = self.registry
        msg = GatewayListChanged(gateways=reg.gateway_endpoints())
        for worker_id, record in reg.workers.items():
            if record.state in (WorkerState.READY, WorkerState.STARTING):
                self._send(f"worker:{worker_id}".encode(), msg)

    def _send_policy(self, peer: bytes, family: str, version: int, model: bytes) -> None:
        snapshot = PolicySnapshot(family=family, version=version, vw_args=self.learner.vw_args, model_bytes=len(model))
        self._send(peer, snapshot, (np.frombuffer(model, dtype=np.uint8),))

    def _send(self, peer: bytes, msg: object, tensors: tuple = ()) -> None:
        self.outbox.append(Outgoing(peer, msg, tensors))
