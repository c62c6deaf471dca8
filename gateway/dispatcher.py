"""The gateway's data plane: send requests to workers over ZeroMQ and match their replies.

An in-flight table per worker guarantees exactly one outcome per request: the worker's reply,
or a failure when the worker is lost (missed heartbeats, or gone from the routing table), or
the deadline timer. A request whose worker is lost is retried once on another worker of the
same variant when its deadline still allows; inference has no side effects, so a retry is safe.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import zmq
import zmq.asyncio

from mesh.latency import LatencyCurve, warmup_batches
from mesh.liveness import Liveness
from mesh.slowdown import SlowdownEstimate, SlowdownTracker
from mesh.transport import Endpoint, EndpointClosed, PeerUnreachable
from protocol.codec import tensor_meta, tensors_from_frames
from protocol.error import ProtocolError
from protocol.message import Heartbeat, InferReply, InferRequest, RoutingTable, WorkerHello
from protocol.types import ModelInfo

log = logging.getLogger(__name__)


class DispatchError(Exception):
    """Root of data-plane failures; ``retry_after_s`` set when the client should come back."""

    retry_after_s: float | None = None


class NoWorkerReady(DispatchError):
    retry_after_s = 1.0


class Overloaded(DispatchError):
    retry_after_s = 1.0


class WorkerLost(DispatchError):
    retry_after_s = 1.0


class DeadlineExceeded(DispatchError):
    """No usable reply before the deadline, or the worker dropped the request as hopeless."""


class WorkerFailed(DispatchError):
    """The worker answered with an error (the model raised, or bad tensors)."""


@dataclass(slots=True)
class Result:
    variant: str
    worker_id: str
    reply: InferReply
    outputs: dict[str, np.ndarray]
    latency_s: float


@dataclass(frozen=True, slots=True)
class VariantEstimate:
    """What the gateway predicts for one more request of a variant on its least loaded worker."""

    worker_id: str
    profiled_ms: float  # the worker's measured latency of a batch of one
    queue_ms: float  # the extra time the requests already in flight there add
    slowdown: SlowdownEstimate


@dataclass(slots=True)
class Pending:
    future: asyncio.Future
    variant: str
    worker_id: str
    deadline: float
    sent: float
    inputs: dict[str, np.ndarray]
    retried: bool = False


@dataclass(slots=True)
class WorkerState:
    worker_id: str
    variants: tuple[str, ...]
    weight: float = 1.0
    inflight: set[int] = field(default_factory=set)


class Dispatcher:
    """Owns the data ROUTER. Used from one event loop; not thread-safe."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        bind: str,
        *,
        gateway_id: str,
        heartbeat_interval_s: float = 0.1,
        missed_heartbeats: int = 5,
        max_outstanding_per_worker: int = 512,
        deadline_grace_s: float = 0.05,
        reply_margin_s: float = 0.002,
    ) -> None:
        self._endpoint = Endpoint.router(ctx, bind)
        self.address = self._endpoint.address
        self.gateway_id = gateway_id
        self.models: dict[str, ModelInfo] = {}
        self.families: dict[str, list[ModelInfo]] = {}
        self.routing_version = 0
        self.family_fractions: dict[str, dict[str, float]] = {}
        self.shed: dict[str, float] = {}
        self._workers: dict[str, WorkerState] = {}
        self._by_variant: dict[str, list[str]] = {}
        self._pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)
        self._liveness = Liveness(interval_s=heartbeat_interval_s, missed_limit=missed_heartbeats)
        self._heartbeat_interval_s = heartbeat_interval_s
        self._max_outstanding = max_outstanding_per_worker
        self._grace_s = deadline_grace_s
        self._reply_margin_s = reply_margin_s
        self._tasks: list[asyncio.Task] = []
        self._curves: dict[tuple[str, str], LatencyCurve] = {}
        self._demand: dict[str, int] = {}
        self._missed: dict[str, int] = {}
        self._slowdown: dict[tuple[str, str], SlowdownTracker] = {}
        self.counters = {"replies": 0, "late_replies_ignored": 0, "retries": 0, "lost": 0}

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._receive(), name="dispatcher-recv"),
            asyncio.create_task(self._watch(), name="dispatcher-watch"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for rid in list(self._pending):
            self._fail(rid, WorkerLost("gateway is shutting down"))
        self._endpoint.close()

    # --- routing --------------------------------------------------------------------------

    def apply_routing(self, table: RoutingTable) -> None:
        if table.version < self.routing_version:
            return
        self.routing_version = table.version
        self.models = {m.name: m for m in table.models}
        self.family_fractions = {f: dict(v) for f, v in table.family_fractions.items()}
        self.shed = dict(table.shed)
        families: dict[str, list[ModelInfo]] = {}
        for m in table.models:
            families.setdefault(m.family, []).append(m)
        self.families = {f: sorted(ms, key=lambda m: -m.accuracy) for f, ms in families.items()}
        routes = {r.worker_id: r for r in table.workers}
        gone = [self._workers.pop(w) for w in list(self._workers) if w not in routes]
        for worker_id, route in routes.items():
            state = self._workers.get(worker_id)
            if state is None:
                self._workers[worker_id] = WorkerState(worker_id, route.variants, route.weight)
            else:
                state.variants, state.weight = route.variants, route.weight
        curves = {}
        for route in table.workers:
            for variant, latencies in route.latency_ms.items():
                model = self.models.get(variant)
                batches = warmup_batches(model.max_batch) if model else []
                if model and len(batches) == len(latencies):
                    curves[(route.worker_id, variant)] = LatencyCurve(batches, latencies)
        self._curves = curves
        self._slowdown = {k: v for k, v in self._slowdown.items() if k in curves}
        by_variant: dict[str, list[str]] = {}
        for state in self._workers.values():
            if routes[state.worker_id].draining:
                continue  # finishes what it has; takes nothing new
            for v in state.variants:
                by_variant.setdefault(v, []).append(state.worker_id)
        self._by_variant = by_variant
        # Only now, with the new table in place, may requests of departed workers be retried.
        for state in gone:
            self._worker_lost(state, "worker left the routing table")

    def ready_workers(self, variant: str) -> list[str]:
        now = time.monotonic()
        return [w for w in self._by_variant.get(variant, ()) if w in self._workers and self._liveness.alive(w, now)]

    def outstanding(self) -> int:
        return len(self._pending)

    def record_demand(self, variant: str) -> None:
        self._demand[variant] = self._demand.get(variant, 0) + 1

    def take_demand(self) -> dict[str, int]:
        """Requests sent per variant since the last call (the controller's demand signal)."""
        counts, self._demand = self._demand, {}
        return counts

    def record_miss(self, variant: str) -> None:
        """A request of ``variant`` that did not get an answer within its deadline."""
        self._missed[variant] = self._missed.get(variant, 0) + 1

    def take_misses(self) -> dict[str, int]:
        misses, self._missed = self._missed, {}
        return misses

    def load(self) -> float:
        """Requests in flight per reachable worker: a coarse load signal for the bandit."""
        now = time.monotonic()
        alive = sum(1 for w in self._workers if self._liveness.alive(w, now))
        return len(self._pending) / max(alive, 1)

    def estimate(self, variant: str) -> VariantEstimate | None:
        """Prediction for the worker a request of ``variant`` would go to; None if none is reachable."""
        candidates = self.ready_workers(variant)
        if not candidates:
            return None
        worker_id = min(candidates, key=lambda w: (len(self._workers[w].inflight), w))
        key = (worker_id, variant)
        tracker = self._slowdown.get(key)
        slowdown = tracker.estimate() if tracker else SlowdownEstimate(mean=1.0, variance=0.0)
        curve = self._curves.get(key)
        if curve is None:
            return VariantEstimate(worker_id, 0.0, 0.0, slowdown)
        ahead = len(self._workers[worker_id].inflight)
        single = curve(1)
        # Requests ahead batch together with this one: it finishes when a batch of ahead+1 would.
        return VariantEstimate(worker_id, single, max(0.0, slowdown.mean * (curve(ahead + 1) - single)), slowdown)

    # --- requests -------------------------------------------------------------------------

    async def infer(self, variant: str, inputs: dict[str, np.ndarray], budget_s: float) -> Result:
        """Run ``inputs`` on a worker of ``variant`` within ``budget_s``; raises a DispatchError."""
        now = time.monotonic()
        deadline = now + budget_s
        self.record_demand(variant)
        worker_id = self._choose(variant, exclude=None)
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        pending = Pending(future, variant, worker_id, deadline, now, inputs)
        self._pending[rid] = pending
        self._send(rid, pending)
        timer = asyncio.get_running_loop().call_at(
            _loop_time(deadline + self._grace_s), self._expire, rid
        )
        try:
            return await future
        finally:
            timer.cancel()
            self._untrack(rid)

    def _choose(self, variant: str, exclude: str | None) -> str:
        candidates = [w for w in self.ready_workers(variant) if w != exclude]
        if not candidates:
            if variant in self._by_variant:
                raise NoWorkerReady(f"no worker of {variant} is reachable right now")
            raise NoWorkerReady(f"no worker serves {variant} yet")
        best = min(candidates, key=lambda w: (len(self._workers[w].inflight) / max(self._workers[w].weight, 1e-9), w))
        if len(self._workers[best].inflight) >= self._max_outstanding:
            raise Overloaded(f"every worker of {variant} has {self._max_outstanding} requests outstanding")
        return best

    def _send(self, rid: int, pending: Pending) -> None:
        # The reply still has to travel back and be encoded: the worker gets the budget minus that.
        budget_us = int((pending.deadline - time.monotonic() - self._reply_margin_s) * 1e6)
        names = list(pending.inputs)
        arrays = [pending.inputs[n] for n in names]
        msg = InferRequest(
            request_id=rid,
            variant=pending.variant,
            budget_us=max(budget_us, 0),
            inputs=tuple(tensor_meta(n, a) for n, a in zip(names, arrays)),
        )
        try:
            self._endpoint.send_nowait(msg, arrays, to=f"worker:{pending.worker_id}".encode())
        except (PeerUnreachable, zmq.Again):
            # Not connected to us (any more) or backed up: treat as lost, maybe retry elsewhere.
            self._liveness.forget(pending.worker_id)
            self._workers_inflight_add(pending.worker_id, rid)
            self._retry_or_fail(rid, WorkerLost(f"worker {pending.worker_id} is not connected"))
            return
        self._workers_inflight_add(pending.worker_id, rid)

    def _workers_inflight_add(self, worker_id: str, rid: int) -> None:
        state = self._workers.get(worker_id)
        if state is not None:
            state.inflight.add(rid)

    def _untrack(self, rid: int) -> None:
        pending = self._pending.pop(rid, None)
        if pending is not None:
            state = self._workers.get(pending.worker_id)
            if state is not None:
                state.inflight.discard(rid)

    def _expire(self, rid: int) -> None:
        self._fail(rid, DeadlineExceeded("no reply before the deadline"))

    def _fail(self, rid: int, exc: DispatchError) -> None:
        pending = self._pending.get(rid)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(exc)

    def _retry_or_fail(self, rid: int, exc: DispatchError) -> None:
        pending = self._pending.get(rid)
        if pending is None or pending.future.done():
            return
        old = pending.worker_id
        state = self._workers.get(old)
        if state is not None:
            state.inflight.discard(rid)
        if not pending.retried and pending.deadline - time.monotonic() > 0.001:
            try:
                pending.worker_id = self._choose(pending.variant, exclude=old)
            except DispatchError:
                pass
            else:
                pending.retried = True
                self.counters["retries"] += 1
                self._send(rid, pending)
                return
        pending.future.set_exception(exc)

    def _worker_lost(self, state: WorkerState, why: str) -> None:
        if state.inflight:
            self.counters["lost"] += 1
            log.warning("worker lost with requests in flight", extra={"worker": state.worker_id, "why": why,
                                                                     "inflight": len(state.inflight)})
        for rid in list(state.inflight):
            self._retry_or_fail(rid, WorkerLost(f"worker {state.worker_id} was lost ({why})"))

    # --- background -----------------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            try:
                incoming = await self._endpoint.recv()
            except EndpointClosed:
                return
            peer = (incoming.peer or b"").decode(errors="replace")
            worker_id = peer.removeprefix("worker:")
            msg = incoming.msg
            if isinstance(msg, (Heartbeat, WorkerHello)):
                self._liveness.beat(worker_id, time.monotonic())
                continue
            if not isinstance(msg, InferReply):
                continue
            self._liveness.beat(worker_id, time.monotonic())
            pending = self._pending.get(msg.request_id)
            if pending is None or pending.future.done() or pending.worker_id != worker_id:
                self.counters["late_replies_ignored"] += 1
                continue
            self.counters["replies"] += 1
            if msg.status == "ok":
                try:
                    arrays = tensors_from_frames(msg.outputs, incoming.buffers)
                except ProtocolError as exc:
                    pending.future.set_exception(WorkerFailed(f"worker sent bad outputs: {exc}"))
                    continue
                outputs = {m.name: a for m, a in zip(msg.outputs, arrays)}
                self._observe(worker_id, msg)
                pending.future.set_result(
                    Result(msg.variant, worker_id, msg, outputs, time.monotonic() - pending.sent)
                )
            elif msg.status == "late":
                pending.future.set_exception(
                    DeadlineExceeded(f"{msg.variant} could not finish before the deadline; dropped unrun")
                )
            elif msg.status == "overloaded":
                pending.future.set_exception(Overloaded(f"worker {worker_id}: {msg.error}"))
            else:
                pending.future.set_exception(WorkerFailed(msg.error or "worker error"))

    def _observe(self, worker_id: str, reply: InferReply) -> None:
        curve = self._curves.get((worker_id, reply.variant))
        if curve is None or reply.compute_us <= 0:
            return
        profiled_ms = curve(max(reply.batch_size, 1))
        if profiled_ms <= 0:
            return
        tracker = self._slowdown.setdefault((worker_id, reply.variant), SlowdownTracker())
        tracker.observe(reply.compute_us / 1e6, profiled_ms / 1e3)

    async def _watch(self) -> None:
        seq = 0
        last = time.monotonic()
        while True:
            await asyncio.sleep(self._heartbeat_interval_s)
            now = time.monotonic()
            # A late wake-up means this loop was busy: heartbeats may be queued unread, not missing.
            self._liveness.excuse(now - last - self._heartbeat_interval_s, now)
            last = now
            for worker_id in self._liveness.lost(now):
                state = self._workers.get(worker_id)
                if state is not None:
                    self._worker_lost(state, "missed heartbeats")
            seq += 1
            beat = Heartbeat(sender=self.gateway_id, role="gateway", seq=seq)
            for worker_id in list(self._workers):
                try:
                    self._endpoint.send_nowait(beat, to=f"worker:{worker_id}".encode())
                except (PeerUnreachable, zmq.Again):
                    pass


def _loop_time(monotonic_deadline: float) -> float:
    """asyncio's loop clock is time.monotonic on every supported platform; convert explicitly anyway."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
