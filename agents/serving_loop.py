"""A gpu-let worker's serving loop: requests read from the gateways' links queue by deadline in the
scheduler, batches run through the model, replies go back on the link each request came by.

Single-threaded on the worker's event loop, but for a batch predicted to take long, which computes
on the compute thread so receives and heartbeats go on. Every request read gets exactly one reply:
an answer, "late" (its deadline cannot be met any more), "overloaded" or an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import zmq

from agents import batch_replies
from mesh.batching import Queued, make_batcher, serving_options
from mesh.scheduler import GpuletScheduler
from mesh.slowdown import MIN_BATCHES, SlowdownTracker, slowed
from mesh.transport import Endpoint, EndpointClosed, Incoming
from protocol.codec import tensors_from_frames
from protocol.error import ProtocolError
from protocol.message import InferReply, InferRequest
from protocol.types import ReplyStatus, request_rows, stackable

if TYPE_CHECKING:
    from agents.model_runner import ModelRunner

log = logging.getLogger("agents.worker")  # the worker process's log: one name for all it says

_IDLE = object()
# Batches predicted to take longer than this compute off the event loop, so heartbeats and
# receives go on during them; shorter ones run inline, where a thread hand-off would cost more.
_OFFLOAD_S = 0.005
# A batcher that waits to fill a batch asks to be woken this long before its last feasible start:
# the event loop's timers fire up to a few milliseconds late on a busy machine.
_WAKE_SLACK_S = 0.002
# The slowdown a variant reports to the controller, once this many of its batches were timed.
SLOWDOWN_MIN_BATCHES = MIN_BATCHES


@dataclass(frozen=True, slots=True)
class _Computed:
    group: tuple[Queued, ...]  # requests that ran together
    outputs: list[np.ndarray] | Exception
    compute_us: int


def _stackable(batch: tuple[Queued, ...]) -> list[tuple[Queued, ...]]:
    """``batch`` split into groups whose inputs agree beyond the batch dimension, in order of
    first appearance (one group, the batch itself, when all agree)."""
    groups: dict[tuple, list[Queued]] = {}
    for item in batch:
        groups.setdefault(tuple(a.shape[1:] for a in item.payload[1]), []).append(item)
    return [batch] if len(groups) == 1 else [tuple(g) for g in groups.values()]


@dataclass(frozen=True, slots=True)
class _Due:
    name: str
    batch: tuple[Queued, ...]
    started: float
    rows: int  # the batch's rows: its cost on the latency curve


class ServingLoop:
    """The variants one worker serves, their queues, and the loop that runs them."""

    def __init__(self) -> None:
        self.runners: dict[str, ModelRunner] = {}
        self.scheduler: GpuletScheduler[str] = GpuletScheduler()
        # Compute time of served batches against the warm-up curve: what the planner's capacity
        # model lacks when the host is busier than at profiling (a noisy neighbour, the gateway).
        self.slowdown: dict[str, SlowdownTracker] = {}
        self.last_sent: dict[Endpoint, float] = {}  # when each gateway link last carried a reply
        self.stopping = asyncio.Event()
        self._arrived = asyncio.Event()
        self._idle = False
        self._handoff: _Due | None = None  # a batch a receive task took but the serving loop must offload
        self._compute_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")

    def add(self, name: str, runner: ModelRunner, batching: str, max_batch: int) -> None:
        """Serve ``name``; ValueError for a batching policy the scheduler does not know."""
        self.runners[name] = runner
        self.slowdown.setdefault(name, SlowdownTracker())
        if not stackable(runner.spec.inputs):
            max_batch = 1  # an input without a batch dimension: each request runs on its own
        self.scheduler.add(name, make_batcher(batching, max_batch=max_batch, latency_s=self.serving_latency(name),
                                              wake_slack_s=_WAKE_SLACK_S, **serving_options(batching)))

    def slowdowns(self) -> dict[str, float]:
        """Mean slowdown of each variant whose batches were timed often enough to tell (as it stands
        now: one left unserved for a while returns toward its curve, see ``SlowdownTracker``)."""
        now = time.monotonic()
        return {name: t.estimate(now).mean for name, t in self.slowdown.items() if t.observations >= SLOWDOWN_MIN_BATCHES}

    def close(self) -> None:
        self._compute_thread.shutdown(wait=True)

    def wake(self) -> None:
        """Let a serving loop asleep with nothing queued look at ``stopping``."""
        self._arrived.set()

    async def receive(self, ep: Endpoint) -> None:
        while True:
            try:
                incoming: Incoming = await ep.recv()
            except EndpointClosed:
                return
            msg = incoming.msg
            if not isinstance(msg, InferRequest):
                continue  # heartbeats from the gateway need no answer
            now = time.monotonic()
            if msg.variant not in self.scheduler:
                self.send(ep, InferReply(request_id=msg.request_id, variant=msg.variant, status=ReplyStatus.ERROR,
                                         error=f"variant {msg.variant!r} is not served by this worker"))
                continue
            try:
                arrays = self._inputs(msg, incoming.buffers)
            except (ProtocolError, ValueError) as exc:
                self.send(ep, InferReply(request_id=msg.request_id, variant=msg.variant, status=ReplyStatus.ERROR,
                                         error=batch_replies.brief(str(exc))))
                continue
            item = Queued(request_id=msg.request_id, deadline=now + msg.budget_us / 1e6, arrived=now,
                          payload=(ep, arrays),
                          rows=request_rows(self.runners[msg.variant].spec.inputs, [a.shape for a in arrays]))
            if not self.scheduler.push(msg.variant, item):
                self.send(ep, InferReply(request_id=msg.request_id, variant=msg.variant, status=ReplyStatus.OVERLOADED,
                                         error="worker queue is full"))
                continue
            if self._idle and not incoming.more and not ep.readable():
                # The serving loop is asleep with nothing queued: run now rather than pay its
                # wake-up. Only after the last request waiting on the link (bundled or not), so a
                # backlog batches: run one by one, it would cost a batch of one each and fall behind.
                self._idle = False
                self._run_short()
            self._arrived.set()

    def serving_latency(self, name: str) -> Callable[[int], float]:
        """What the batcher predicts a batch of ``name`` takes: the warm-up curve (the model alone)
        times the slowdown its served batches show, once timed (``mesh.slowdown.slowed``)."""
        return slowed(self.runners[name].latency_s, self.slowdown.setdefault(name, SlowdownTracker()), time.monotonic)

    def _inputs(self, msg: InferRequest, buffers: list) -> list[np.ndarray]:
        arrays = dict(zip((m.name for m in msg.inputs), tensors_from_frames(msg.inputs, buffers)))
        spec = self.runners[msg.variant].spec
        try:
            return [arrays[s.name] for s in spec.inputs]
        except KeyError as exc:
            raise ValueError(f"input {exc.args[0]!r} is missing") from None

    async def serve(self) -> None:
        """Until ``stopping`` is set and nothing is queued: what is queued when a stop comes is served."""
        loop = asyncio.get_running_loop()
        while True:
            outcome, self._handoff = self._handoff or self._step(), None
            if isinstance(outcome, _Due):
                # A long batch computes on the compute thread (TorchScript releases the GIL), so
                # this loop keeps receiving and heartbeating; a short one runs here, cheaper.
                if self.runners[outcome.name].latency_s(outcome.rows) > _OFFLOAD_S:
                    result = await loop.run_in_executor(self._compute_thread, self._compute, outcome.name, outcome.batch)
                else:
                    result = self._compute(outcome.name, outcome.batch)
                self._finish(outcome, result)
                await asyncio.sleep(0)  # let receive tasks queue what arrived meanwhile
            elif outcome is _IDLE:
                if self.stopping.is_set():
                    return
                self._idle = True
                self._arrived.clear()
                await self._arrived.wait()
                self._idle = False
            else:
                wake_at = outcome
                self._arrived.clear()
                try:
                    async with asyncio.timeout(max(0.0, wake_at - time.monotonic())):
                        await self._arrived.wait()
                except TimeoutError:
                    pass

    def _step(self) -> object:
        """One scheduling step: answer hopeless requests and say which batch is due.

        Returns a _Due batch, _IDLE (nothing queued), or the instant to step again.
        """
        now = time.monotonic()
        step = self.scheduler.step(now)
        self.send_all(batch_replies.late(step.late, now))
        if step.batch:
            return _Due(step.key, step.batch, now, sum(q.rows for q in step.batch))
        return _IDLE if step.wake_at is None else step.wake_at

    def _run_short(self) -> None:
        """From a receive task while the serving loop sleeps: run a due batch now if it is short."""
        name = self.scheduler.next_key()
        if name is None:
            return
        if self.runners[name].latency_s(1) > _OFFLOAD_S:
            return  # the serving loop will offload it
        outcome = self._step()
        if not isinstance(outcome, _Due):
            return
        if self.runners[outcome.name].latency_s(outcome.rows) > _OFFLOAD_S:
            # Short alone, long by its rows: the serving loop offloads it, as it would its own.
            self._handoff = outcome
            self._arrived.set()
            return
        self._finish(outcome, self._compute(outcome.name, outcome.batch))

    def _compute(self, name: str, batch: tuple[Queued, ...]) -> list[_Computed]:
        """The model call alone (safe on the compute thread: it sends nothing). Requests whose
        inputs differ beyond the batch dimension (a variable-length input) cannot stack: each
        such group runs as a batch of its own rather than fail the others."""
        runner = self.runners[name]
        results = []
        for group in _stackable(batch):
            try:
                if len(group) == 1:
                    inputs = group[0].payload[1]
                else:
                    inputs = [np.concatenate([item.payload[1][i] for item in group])
                              for i in range(len(runner.spec.inputs))]
                t0 = time.perf_counter()
                outputs = runner.run(inputs)
                results.append(_Computed(group, outputs, int((time.perf_counter() - t0) * 1e6)))
            except Exception as exc:  # a failing model answers its batch with the error, it does not kill the worker
                results.append(_Computed(group, exc, 0))
        return results

    def _finish(self, due: _Due, results: list[_Computed]) -> None:
        """Replies for a computed batch (on the event loop: sockets are not shared across threads)."""
        name = due.name
        finished = time.monotonic()
        self.scheduler.finished(name, due.rows, any(q.deadline < finished for q in due.batch))
        runner = self.runners[name]
        names = [o.name for o in runner.spec.outputs]
        for r in results:
            if isinstance(r.outputs, Exception):
                log.error("batch failed: %s", r.outputs, extra={"variant": name})
                self.send_all(batch_replies.failed(name, r.group, f"model failed: {r.outputs}"))
                continue
            expected_s = runner.latency_s(sum(q.rows for q in r.group))
            if r.compute_us > 0 and expected_s > 0:
                self.slowdown[name].observe(r.compute_us / 1e6, expected_s, finished)  # made by add()
            try:
                replies = batch_replies.computed(name, r.group, r.outputs, names, compute_us=r.compute_us,
                                                 started=due.started)
            except ValueError as exc:  # outputs that do not split into the batch's requests
                log.error("batch failed: %s", exc, extra={"variant": name})
                replies = batch_replies.failed(name, r.group, f"model failed: {exc}")
            self.send_all(replies)

    def send(self, ep: Endpoint, msg: object, tensors: list[np.ndarray] | tuple = ()) -> None:
        self.send_all({ep: [(msg, tensors)]})

    def send_all(self, by_gateway: dict[Endpoint, list]) -> None:
        for ep, items in by_gateway.items():
            try:
                ep.send_many_nowait(items)
                self.last_sent[ep] = time.monotonic()
            except zmq.Again:
                log.warning("gateway link backed up; %d replies dropped", len(items))
            except EndpointClosed:  # the gateway left the mesh (its link was closed): none to tell
                log.info("gateway link closed; %d replies not sent", len(items))
