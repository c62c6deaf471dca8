"""The gateway's data plane: send requests to workers over ZeroMQ and match their replies.

A thin shell over pure cores: :class:`~gateway.routing.RoutingView` (what the routing table
says, worked out once per table), :class:`~gateway.routing.WorkerPicker` (which worker takes a
request), :class:`~gateway.inflight.InflightTable` (exactly one outcome per request) and
:func:`~gateway.admission.admit` (turn a request away at once when it cannot be answered in time). Every
request ends once: the worker's reply, the loss of its worker, or the deadline timer. A request
whose worker is lost is retried once on another worker of the same variant when its deadline
still allows; inference has no side effects, so a retry is safe.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.asyncio

from gateway.admission import admit, predicted_finish_s, running_behind_s, timed_against
from gateway.demand_counts import DemandCounts
from gateway.dispatch_error import (
    DeadlineExceeded,
    DispatchError,
    NoWorkerReady,
    Overloaded,
    WorkerFailed,
    WorkerLost,
)
from gateway.inflight import InFlight, InflightTable, TableFull
from gateway.routing import RoutingView, WorkerPicker
from gateway.worker_speeds import WorkerSpeeds
from mesh.deadline import Deadline
from mesh.liveness import Liveness
from mesh.slowdown import SlowdownEstimate
from gateway.peers import WorkerPeers
from mesh.keys import ServerKeys
from mesh.links import DEFAULT_LINK, LinkOptions
from mesh.transport import Endpoint, EndpointClosed, PeerUnreachable
from protocol.codec import tensor_meta, tensors_from_frames
from protocol.error import ProtocolError
from protocol.message import Heartbeat, InferReply, InferRequest, RoutingTable, WorkerHello
from protocol.types import ModelInfo, ReplyStatus

log = logging.getLogger(__name__)

# Heartbeats from workers not (yet) in the routing table are remembered up to this many, so a
# worker that just became ready is reachable the moment the table naming it arrives, while
# names from the wire cannot grow the table without bound.
MAX_UNROUTED_WORKERS = 1024
LOOP_LAG_SAMPLES = 20  # heartbeat wake-ups the loop-lag gauge looks back over


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
    # The worker's measured curve for this request batched with the rows in flight there: the
    # profiled time until its answer, which the worker's live slowdown stretches as a whole.
    profiled_ms: float
    slowdown: SlowdownEstimate
    # How much longer the pace the worker drains its queue at says that wait is (see admission).
    queue_ms: float = 0.0


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
        max_inflight: int = 10_000,
        deadline_grace_s: float = 0.01,
        reply_margin_s: float = 0.002,
        admission: bool = True,
        security: ServerKeys | None = None,
        link: LinkOptions = DEFAULT_LINK,
    ) -> None:
        self._endpoint = Endpoint.router(ctx, bind, security=security, link=link)
        self.peers = WorkerPeers(security.authorized if security else None)
        self.address = self._endpoint.address
        self.gateway_id = gateway_id
        self.view = RoutingView()
        self._any_version = False  # a new controller: its next table is taken whatever its version
        self._picker = WorkerPicker()
        self._inflight = InflightTable(capacity=max_inflight)
        self._unrouted: set[str] = set()
        self._outbox: dict[str, list[InFlight]] = {}  # worker -> requests to send at the end of this loop turn
        self._flush_handle: asyncio.Handle | None = None
        self._liveness = Liveness(interval_s=heartbeat_interval_s, missed_limit=missed_heartbeats)
        self._heartbeat_interval_s = heartbeat_interval_s
        self._max_outstanding = max_outstanding_per_worker
        self._grace_s = deadline_grace_s
        self._reply_margin_s = reply_margin_s
        self._admission = admission
        self._tasks: list[asyncio.Task] = []
        self.demand = DemandCounts()  # reported to the controller by the control link
        self.speeds = WorkerSpeeds()
        self.counters = {"replies": 0, "late_replies_ignored": 0, "retries": 0, "lost": 0, "shed": 0}
        # How late this loop woke from its heartbeat timer, over the last LOOP_LAG_SAMPLES wake-ups:
        # about how long a request could wait for its handler (or its answer) on a busy loop.
        self._loop_lag: collections.deque[float] = collections.deque(maxlen=LOOP_LAG_SAMPLES)

    # --- the routing table, as the request path and the HTTP layer read it ----------------

    @property
    def models(self) -> dict[str, ModelInfo]:
        return self.view.models

    @property
    def families(self) -> dict[str, list[ModelInfo]]:
        return self.view.families

    @property
    def family_fractions(self) -> dict[str, dict[str, float]]:
        return self.view.family_fractions

    @property
    def shed(self) -> dict[str, float]:
        return self.view.shed

    @property
    def endpoint(self) -> Endpoint:
        """The data ROUTER, for its transport counters (see :mod:`mesh.transport_metrics`)."""
        return self._endpoint

    @property
    def routing_version(self) -> int:
        return self.view.version

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
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._outbox.clear()
        for rid in list(self._inflight.ids()):
            self._finish(rid, error=WorkerLost("gateway is shutting down"))
        self._endpoint.close()

    # --- routing --------------------------------------------------------------------------

    def new_controller(self) -> None:
        """A different controller answers now: its versions may count from lower (its state was lost)."""
        self._any_version = True

    def apply_routing(self, table: RoutingTable) -> None:
        if table.version < self.view.version and not self._any_version:
            return
        self._any_version = False
        old = self.view
        self.view = view = RoutingView(table)
        self._picker.forget(view.workers)
        self.speeds.keep(view.curves, view.workers)
        for worker_id in old.workers.keys() - view.workers.keys():
            if worker_id not in self._unrouted:
                self._liveness.forget(worker_id)
        self._unrouted -= view.workers.keys()
        # Only now, with the new table in place, may requests of departed workers be retried.
        for worker_id in old.workers.keys() - view.workers.keys():
            self._worker_lost(worker_id, "worker left the routing table")

    def ready_workers(self, variant: str) -> list[str]:
        now = time.monotonic()
        self._liveness.look(now)
        return [r.worker_id for r in self.view.routes(variant) if self._liveness.alive(r.worker_id, now)]

    def outstanding(self) -> int:
        return len(self._inflight)

    def loop_lag_s(self) -> float:
        """The latest wake-ups' worst lateness (s): 0 on an idle loop, the wait a request may
        meet before its handler runs on a saturated one."""
        return max(self._loop_lag, default=0.0)

    def running_behind_s(self) -> float:
        """How late this loop typically wakes now (s): an answer waits about this long to be written."""
        return running_behind_s(self._loop_lag)

    def load(self) -> float:
        """Requests in flight per reachable worker: a coarse load signal for the bandit."""
        now = time.monotonic()
        self._liveness.look(now)
        alive = sum(1 for w in self.view.workers if self._liveness.alive(w, now))
        return len(self._inflight) / max(alive, 1)

    def estimate(self, variant: str) -> VariantEstimate | None:
        """Prediction for the worker a request of ``variant`` would go to; None if none is reachable."""
        candidates = self.ready_workers(variant)
        if not candidates:
            return None
        worker_id = min(candidates, key=lambda w: (self._inflight.count(w), w))
        slowdown = self.speeds.estimate(worker_id, variant, now := time.monotonic())
        curve = self.view.curves.get((worker_id, variant))
        if curve is None:
            return VariantEstimate(worker_id, 0.0, slowdown)
        # Rows ahead batch together with this one: it finishes when a batch of ahead+1 rows would.
        # A slow spell of the worker slows those rows as much as this one's, so what is unsure
        # about its speed applies to the whole wait, not to this request's own share alone. Where
        # the worker answers slower than that, as admission predicts, the rest is queueing.
        ahead, pace = self._inflight.rows(worker_id), self.speeds.s_per_row(worker_id, now)
        paced = [predicted_finish_s(curve, ahead, slowdown.mean, self.speeds.silent_s(worker_id, now), 1, p)
                 for p in ((None, pace) if pace is not None else ())]  # no pace: no queueing past the curve
        return VariantEstimate(worker_id, max(curve(1), curve(ahead + 1)), slowdown, (paced[1] - paced[0]) * 1e3 if paced else 0.0)

    def fastest_alone_ms(self, variant: str) -> float:
        """The variant's profiled batch-1 latency on its fastest routed worker (ms); 0 when unknown."""
        alone = [curve(1) for r in self.view.routes(variant) if (curve := self.view.curves.get((r.worker_id, variant)))]
        return min(alone, default=0.0)

    # --- requests -------------------------------------------------------------------------

    async def infer(self, variant: str, inputs: dict[str, np.ndarray], deadline: Deadline) -> Result:
        """Run ``inputs`` on a worker of ``variant`` by ``deadline``; raises a DispatchError."""
        now = time.monotonic()
        self.demand.request(variant)
        worker_id = self._choose(variant, exclude=None)
        rows = self.view.rows(variant, inputs)
        if self._admission:
            ahead = self._inflight.count(worker_id)
            finish_s = predicted_finish_s(self.view.curves.get((worker_id, variant)), self._inflight.rows(worker_id),
                                          self.speeds.measured(worker_id, variant, now),
                                          self.speeds.silent_s(worker_id, now), rows, self.speeds.s_per_row(worker_id, now))
            behind_s = self.running_behind_s()
            wait_s = admit(finish_s, deadline.remaining(now), ahead, behind_s, self.speeds.margin_s(worker_id, now))
            if wait_s is not None:
                self.counters["shed"] += 1
                if behind_s >= deadline.remaining(now):
                    raise Overloaded(f"the gateway is running {behind_s * 1e3:.0f} ms behind, more than the "
                                     f"{deadline.remaining(now) * 1e3:.0f} ms this request has left", retry_after_s=wait_s)
                raise Overloaded(f"{variant} cannot finish within the deadline behind the {ahead} requests "
                                 f"queued on its worker", retry_after_s=wait_s)
        loop = asyncio.get_running_loop()
        due = timed_against(now, finish_s, deadline.remaining(now), ahead) if self._admission else 0.0
        entry = InFlight(self._inflight.new_id(), variant, worker_id, deadline, now, inputs,
                         waiter=loop.create_future(), rows=rows, due=due)
        try:
            self._inflight.add(entry)
        except TableFull as exc:
            raise Overloaded(str(exc)) from None
        timer = loop.call_at(loop.time() + deadline.remaining(now) + self._grace_s, self._expire, entry.request_id)
        self._send(entry)
        try:
            return await entry.waiter
        finally:
            timer.cancel()
            self._inflight.take(entry.request_id)  # cancelled: forget it, a late reply is ignored

    def _choose(self, variant: str, exclude: str | None) -> str:
        now = time.monotonic()
        routes = self.view.routes(variant)
        self._liveness.look(now)
        worker_id = self._picker.pick(routes, lambda w: self._liveness.alive(w, now), self._inflight.count, exclude)
        if worker_id is None:
            if routes:
                raise NoWorkerReady(f"no worker of {variant} is reachable right now")
            raise NoWorkerReady(f"no worker serves {variant} yet")
        if self._inflight.count(worker_id) >= self._max_outstanding:
            raise Overloaded(f"every worker of {variant} has {self._max_outstanding} requests outstanding")
        return worker_id

    def _send(self, entry: InFlight) -> None:
        """Queue ``entry`` for its worker: every request queued in one turn of the event loop goes
        out at the end of that turn, one bundle per worker (one send, one I/O-thread wake-up)."""
        box = self._outbox.get(entry.worker_id)
        if box is None:
            self._outbox[entry.worker_id] = [entry]
        else:
            box.append(entry)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        outbox, self._outbox = self._outbox, {}
        now = time.monotonic()
        # The reply still has to travel back, wait its turn on this loop and be encoded: the worker
        # gets the budget minus that, and answers "late" at once rather than compute an answer
        # that would reach the client after its deadline.
        keep_s = self._reply_margin_s + self.running_behind_s()
        for worker_id, entries in outbox.items():
            # Answered, cancelled or moved to another worker since it was queued: not sent here.
            entries = [e for e in entries if e.worker_id == worker_id and self._inflight.get(e.request_id) is e]
            if not entries:
                continue
            try:
                self._endpoint.send_many_nowait([self._request(e, now, keep_s) for e in entries],
                                                to=f"worker:{worker_id}".encode())
            except (PeerUnreachable, zmq.Again):
                # Not connected to us (any more) or backed up: treat as lost, maybe retry elsewhere.
                self._liveness.forget(worker_id)
                for e in entries:
                    self._retry_or_fail(e.request_id, WorkerLost(f"worker {worker_id} is not connected"))

    def _request(self, entry: InFlight, now: float, keep_s: float) -> tuple[InferRequest, list[np.ndarray]]:
        names = list(entry.inputs)
        arrays = [entry.inputs[n] for n in names]
        return InferRequest(
            request_id=entry.request_id,
            variant=entry.variant,
            budget_us=entry.deadline.wire_budget_us(now, keep_s),
            inputs=tuple(tensor_meta(n, a) for n, a in zip(names, arrays)),
        ), arrays

    def _finish(self, rid: int, *, result: Result | None = None, error: DispatchError | None = None,
                worker_id: str | None = None) -> bool:
        """Give request ``rid`` its one outcome; False if it already had one (or is another worker's)."""
        entry = self._inflight.take(rid, worker_id)
        if entry is None or entry.waiter.done():
            return False
        if error is not None:
            entry.waiter.set_exception(error)
        else:
            entry.waiter.set_result(result)
        return True

    def _expire(self, rid: int) -> None:
        self._finish(rid, error=DeadlineExceeded("no reply before the deadline"))

    def _retry_or_fail(self, rid: int, exc: DispatchError) -> None:
        entry = self._inflight.get(rid)
        if entry is None:
            return
        if not entry.retried and entry.deadline.remaining(time.monotonic()) > 0.001:
            try:
                worker_id = self._choose(entry.variant, exclude=entry.worker_id)
            except DispatchError:
                pass
            else:
                self._inflight.move(rid, worker_id)
                self.counters["retries"] += 1
                self._send(entry)
                return
        self._finish(rid, error=exc)

    def _worker_lost(self, worker_id: str, why: str) -> None:
        rids = self._inflight.on_worker(worker_id)
        if rids:
            self.counters["lost"] += 1
            log.warning("worker %s lost with %d requests in flight (%s)", worker_id, len(rids), why)
        for rid in rids:
            self._retry_or_fail(rid, WorkerLost(f"worker {worker_id} was lost ({why})"))

    # --- background -----------------------------------------------------------------------

    def _beat(self, worker_id: str, now: float) -> None:
        if worker_id not in self.view.workers:
            if worker_id not in self._unrouted:
                if len(self._unrouted) >= MAX_UNROUTED_WORKERS:
                    return
                self._unrouted.add(worker_id)
        self._liveness.beat(worker_id, now)

    async def _receive(self) -> None:
        while True:
            try:
                incoming = await self._endpoint.recv()
            except EndpointClosed:
                return
            peer = (incoming.peer or b"").decode(errors="replace")
            worker_id = peer.removeprefix("worker:")
            if not self.peers.accepts(worker_id, incoming.peer_name):
                continue
            msg = incoming.msg
            now = time.monotonic()
            if isinstance(msg, (Heartbeat, WorkerHello)):
                self._beat(worker_id, now)
                continue
            if not isinstance(msg, InferReply):
                continue
            self._beat(worker_id, now)
            entry = self._inflight.get(msg.request_id)
            if entry is None or entry.worker_id != worker_id:
                self.counters["late_replies_ignored"] += 1
                continue
            self.counters["replies"] += 1
            self.speeds.answered(worker_id, now, entry.rows if msg.status is ReplyStatus.OK else 0, entry.sent,
                                 self._inflight.count(worker_id) - 1)  # this reply's request is still counted
            if entry.due and msg.status in (ReplyStatus.OK, ReplyStatus.LATE):  # dropped unrun: not before its deadline
                answered = now if msg.status is ReplyStatus.OK else max(now, entry.deadline.at)
                self.speeds.overran(worker_id, now, answered - entry.due)
            self._finish(msg.request_id, worker_id=worker_id, **self._outcome(worker_id, entry, msg, incoming.buffers, now))

    def _outcome(self, worker_id: str, entry: InFlight, msg: InferReply, buffers: list, now: float) -> dict:
        if msg.status is ReplyStatus.OK:
            try:
                arrays = tensors_from_frames(msg.outputs, buffers)
            except ProtocolError as exc:
                log.error("worker %s sent bad outputs for %s: %s", worker_id, msg.variant, exc,
                          extra={"worker": worker_id, "variant": msg.variant})
                return {"error": WorkerFailed(f"worker sent bad outputs: {exc}")}
            self.speeds.observe(worker_id, msg, self.view.curves.get((worker_id, msg.variant)), now)
            outputs = {m.name: a for m, a in zip(msg.outputs, arrays)}
            return {"result": Result(msg.variant, worker_id, msg, outputs, now - entry.sent)}
        if msg.status is ReplyStatus.LATE:
            return {"error": DeadlineExceeded(f"{msg.variant} could not finish before the deadline; dropped unrun")}
        if msg.status is ReplyStatus.OVERLOADED:
            return {"error": Overloaded(f"worker {worker_id}: {msg.error}")}
        # Answered 500: the cause goes to this log as well as to the client.
        log.error("worker %s failed a request for %s: %s", worker_id, msg.variant, msg.error or "no reason given",
                  extra={"worker": worker_id, "variant": msg.variant})
        return {"error": WorkerFailed(msg.error or "worker error")}

    async def _watch(self) -> None:
        # Workers beat to the gateway; nothing beats back: a worker has no use for it (ZMTP
        # heartbeats on the link find a dead gateway), and at idle it was a message each way.
        last = time.monotonic()
        while True:
            await asyncio.sleep(self._heartbeat_interval_s)
            now = time.monotonic()
            # A late look means this loop was busy: heartbeats may be queued unread, not missing.
            self._liveness.look(now)
            self._loop_lag.append(max(0.0, now - last - self._heartbeat_interval_s))
            last = now
            for worker_id in self._liveness.lost(now):
                self._worker_lost(worker_id, "missed heartbeats")
                if worker_id not in self.view.workers:
                    self._liveness.forget(worker_id)
                    self._unrouted.discard(worker_id)
