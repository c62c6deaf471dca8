"""The gpu-let worker process: one per partition, started by its agent (``python -m agents.worker``).

It pins itself to its partition before torch starts, fetches and checks its artifacts, loads
and warms its variants, connects to every gateway, and serves: requests queue by deadline,
batches form with the deadline-aware batcher, and a request that can no longer finish in time
is answered "late" without being computed. Every request read gets exactly one reply.
"""

from __future__ import annotations

import os

# Pin before torch (imported below) creates its thread pools, so every thread inherits the core set.
_CORES = os.environ.get("LETMESH_WORKER_CORES")
if _CORES:
    os.sched_setaffinity(0, {int(c) for c in _CORES.split(",")})

import asyncio  # noqa: E402
import base64  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zmq.asyncio  # noqa: E402

from agents import batch_replies  # noqa: E402
from agents.artifact import fetch_artifact, report_load_failure  # noqa: E402
from agents.error import WorkerSpecError  # noqa: E402
from agents.gateway_links import gateway_changes  # noqa: E402
from agents.model_runner import ModelRunner  # noqa: E402
from agents.onnx_upgrade import enabled_from_env as onnx_upgrade_enabled  # noqa: E402
from agents.process import torch_device  # noqa: E402
from mesh import heap  # noqa: E402
from mesh.batching import Queued, make_batcher  # noqa: E402
from mesh.keys import client_keys_from_env  # noqa: E402
from mesh.log_format import FORMAT_ENV, configure as configure_logging  # noqa: E402
from mesh.scheduler import GpuletScheduler  # noqa: E402
from mesh.slowdown import SlowdownTracker  # noqa: E402
from mesh.transport import Endpoint, EndpointClosed, Incoming  # noqa: E402
from protocol.codec import decode, tensors_from_frames  # noqa: E402
from protocol.error import ProtocolError  # noqa: E402
from protocol.types import ReplyStatus  # noqa: E402
from protocol.message import (  # noqa: E402
    ArtifactChunkReply,
    ErrorReply,
    GatewayListChanged,
    Heartbeat,
    InferReply,
    InferRequest,
    StartWorker,
    WorkerHello,
    WorkerReady,
)

log = logging.getLogger(__name__)

_IDLE = object()
# Batches predicted to take longer than this compute off the event loop, so heartbeats and
# receives go on during them; shorter ones run inline, where a thread hand-off would cost more.
_OFFLOAD_S = 0.005


@dataclass(frozen=True, slots=True)
class _Due:
    name: str
    batch: tuple[Queued, ...]
    started: float
    rows: int  # the batch's rows: its cost on the latency curve
# A batcher that waits to fill a batch asks to be woken this long before its last feasible start:
# the event loop's timers fire up to a few milliseconds late on a busy machine.
_WAKE_SLACK_S = 0.002
# The slowdown a variant reports to the controller, once this many of its batches were timed.
_SLOWDOWN_MIN_BATCHES = 5


def read_spec() -> StartWorker:
    raw = os.environ.get("LETMESH_WORKER_SPEC")
    if not raw:
        raise WorkerSpecError("LETMESH_WORKER_SPEC is not set")
    try:
        msg, _ = decode([base64.b64decode(raw)])
    except (ProtocolError, ValueError) as exc:
        raise WorkerSpecError(f"bad worker spec: {exc}") from None
    if not isinstance(msg, StartWorker):
        raise WorkerSpecError(f"worker spec is a {type(msg).__name__}")
    return msg


class Worker:
    """Serving loop of one gpu-let. Single-threaded: receive tasks fill the batchers, one loop runs them."""

    def __init__(self, cmd: StartWorker, *, agent_id: str, state_dir: Path, heartbeat_interval_s: float) -> None:
        self.cmd = cmd
        self.agent_id = agent_id
        self.cache_dir = state_dir / "artifacts"
        self.heartbeat_interval_s = heartbeat_interval_s
        self.identity = f"worker:{cmd.worker_id}"
        self.runners: dict[str, ModelRunner] = {}
        self.scheduler: GpuletScheduler[str] = GpuletScheduler()
        self.profile_ms: dict[str, tuple[float, ...]] = {}
        self.runtimes: dict[str, str] = {}  # variants the ONNX upgrade decided for, and its verdict
        # Compute time of served batches against the warm-up curve: what the planner's capacity
        # model lacks when the host is busier than at profiling (a noisy neighbour, the gateway).
        self.slowdown: dict[str, SlowdownTracker] = {}
        self._gateways: dict[str, Endpoint] = {}
        self._last_sent: dict[Endpoint, float] = {}
        self.exit_code = 0
        self._recv_tasks: dict[str, asyncio.Task] = {}
        self._arrived = asyncio.Event()
        self._idle = False
        self._handoff: _Due | None = None  # a batch a receive task took but the serving loop must offload
        self._compute_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._stopping = asyncio.Event()
        self._ctx: zmq.asyncio.Context | None = None
        # With keys, a worker authenticates as the agent that runs it (the key pair its agent handed down).
        self._keys = client_keys_from_env()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self._ctx = zmq.asyncio.Context()
        control = Endpoint.dealer(self._ctx, self.cmd.controller, self.identity, security=self._keys, control=True)
        replies: asyncio.Queue = asyncio.Queue()
        control_task = asyncio.create_task(self._control_loop(control, replies))
        try:
            # A stop asked while fetching or warming up ends the load at once.
            loading = asyncio.create_task(self._load(control, replies))
            stop_wait = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({loading, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if not loading.done():
                loading.cancel()
                await asyncio.gather(loading, return_exceptions=True)
                return
            loading.result()
            if not self.runners:
                log.error("no variant of worker %s could be loaded; exiting", self.cmd.worker_id)
                self.exit_code = 3
                return
            heap.settle()  # the models and torch are loaded: collections walk only what serving allocates
            for address in self.cmd.gateways:
                self._connect(address)
            beat_task = asyncio.create_task(self._heartbeats(control))
            serve_task = asyncio.create_task(self._serve())
            await self._stopping.wait()
            for task in self._recv_tasks.values():
                task.cancel()
            await asyncio.gather(*self._recv_tasks.values(), return_exceptions=True)
            self._arrived.set()
            await serve_task  # drains what is queued: every request read gets its reply
            beat_task.cancel()
            await asyncio.gather(beat_task, return_exceptions=True)
        finally:
            control_task.cancel()
            await asyncio.gather(control_task, return_exceptions=True)
            for ep in self._gateways.values():
                ep.close()
            control.close()
            self._ctx.term()
            self._compute_thread.shutdown(wait=True)

    async def _load(self, control: Endpoint, replies: asyncio.Queue) -> None:
        device = torch_device(self.cmd.partition)
        # A GPU worker's host thread only launches kernels; a CPU worker computes on every core it holds.
        torch.set_num_threads(1 if device != "cpu" else max(1, len(os.sched_getaffinity(0))))
        for spec in self.cmd.variants:
            try:
                path = await fetch_artifact(control, replies, self.cache_dir, spec.sha256)
                runner = ModelRunner(spec, path, device, onnx_upgrade=onnx_upgrade_enabled())
                measured = runner.warm_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # One bad variant must not take the healthy ones sharing this gpu-let down with
                # it: report it (the controller sets it aside and re-plans) and serve the rest.
                log.error("variant %s cannot be loaded: %s", spec.name, exc)
                await report_load_failure(control, self.cmd.worker_id, spec.name, exc)
                continue
            self.runners[spec.name] = runner
            self.profile_ms[spec.name] = tuple(measured[b] for b in sorted(measured))
            if runner.runtime != spec.backend:
                self.runtimes[spec.name] = runner.runtime
            try:
                self.scheduler.add(spec.name, make_batcher(spec.batching, max_batch=spec.max_batch,
                                                           latency_s=self._serving_latency(spec.name),
                                                           wake_slack_s=_WAKE_SLACK_S))
            except ValueError as exc:
                raise WorkerSpecError(f"variant {spec.name!r}: {exc}") from None
            log.info("variant loaded", extra={"variant": spec.name, "profile_ms": measured, "runtime": runner.runtime})

    async def _control_loop(self, control: Endpoint, replies: asyncio.Queue) -> None:
        while True:
            try:
                incoming = await control.recv()
            except EndpointClosed:
                return
            match incoming.msg:
                case ArtifactChunkReply() | ErrorReply():
                    replies.put_nowait(incoming.msg)
                case GatewayListChanged(gateways=gateways):
                    if not self.runners:
                        continue  # still loading: the links open once it serves
                    connect, close = gateway_changes(self._gateways, gateways)
                    for address in close:
                        self._disconnect(address)
                    for address in connect:
                        self._connect(address)
                case _:
                    pass

    def _connect(self, address: str) -> None:
        assert self._ctx is not None
        ep = Endpoint.dealer(self._ctx, address, self.identity, security=self._keys)
        self._gateways[address] = ep
        ep.send_nowait(WorkerHello(worker_id=self.cmd.worker_id, variants=tuple(self.runners)))
        self._recv_tasks[address] = asyncio.create_task(self._receive(ep))

    def _disconnect(self, address: str) -> None:
        task = self._recv_tasks.pop(address, None)
        if task is not None:
            task.cancel()
        ep = self._gateways.pop(address, None)
        if ep is not None:
            self._last_sent.pop(ep, None)
            ep.close()

    async def _heartbeats(self, control: Endpoint) -> None:
        seq = 0
        ready_every = max(1, round(0.5 / self.heartbeat_interval_s))
        while True:
            if seq % ready_every == 0:
                self._send_control(
                    control,
                    WorkerReady(
                        worker_id=self.cmd.worker_id,
                        agent_id=self.agent_id,
                        variants=tuple(self.runners),
                        pid=os.getpid(),
                        batch_latency_ms=self.profile_ms,
                        runtimes=self.runtimes,
                        slowdown={name: t.estimate().mean for name, t in self.slowdown.items()
                                  if t.observations >= _SLOWDOWN_MIN_BATCHES},
                    ),
                )
            seq += 1
            beat = Heartbeat(sender=self.cmd.worker_id, role="worker", seq=seq)
            now = time.monotonic()
            for ep in self._gateways.values():
                # A reply sent within the interval already told this gateway we are alive.
                if now - self._last_sent.get(ep, 0.0) >= self.heartbeat_interval_s / 2:
                    self._send(ep, beat)
            before = time.monotonic()
            await asyncio.sleep(self.heartbeat_interval_s)
            if (late := time.monotonic() - before - self.heartbeat_interval_s) > 0.5:
                log.warning("heartbeat %.2f s late: the serving loop was blocked or the host starved", late)

    async def _receive(self, ep: Endpoint) -> None:
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
                self._send(ep, InferReply(request_id=msg.request_id, variant=msg.variant, status=ReplyStatus.ERROR,
                                          error=f"variant {msg.variant!r} is not served by this worker"))
                continue
            try:
                arrays = self._inputs(msg, incoming.buffers)
            except (ProtocolError, ValueError) as exc:
                self._send(ep, InferReply(request_id=msg.request_id, variant=msg.variant, status=ReplyStatus.ERROR, error=str(exc)))
                continue
            item = Queued(request_id=msg.request_id, deadline=now + msg.budget_us / 1e6, arrived=now,
                          payload=(ep, arrays), rows=arrays[0].shape[0] if arrays and arrays[0].ndim else 1)
            if not self.scheduler.push(msg.variant, item):
                self._send(ep, InferReply(request_id=msg.request_id, variant=msg.variant, status=ReplyStatus.OVERLOADED,
                                          error="worker queue is full"))
                continue
            if self._idle and not incoming.more and not ep.readable():
                # The serving loop is asleep with nothing queued: run now rather than pay its
                # wake-up. Only after the last request waiting on the link (bundled or not), so a
                # backlog batches: run one by one, it would cost a batch of one each and fall behind.
                self._idle = False
                self._run_short()
            self._arrived.set()

    def _serving_latency(self, name: str) -> Callable[[int], float]:
        """What the batcher predicts a batch of ``name`` takes: the warm-up curve (the model alone)
        times the slowdown its served batches show, once timed (never below the curve, at most 4x)."""
        curve, trackers = self.runners[name].latency_s, self.slowdown

        def latency_s(batch: int) -> float:
            tracker = trackers.get(name)
            if tracker is None or tracker.observations < _SLOWDOWN_MIN_BATCHES:
                return curve(batch)
            return curve(batch) * min(4.0, max(1.0, tracker.estimate().mean))

        return latency_s

    def _inputs(self, msg: InferRequest, buffers: list) -> list[np.ndarray]:
        arrays = dict(zip((m.name for m in msg.inputs), tensors_from_frames(msg.inputs, buffers)))
        spec = self.runners[msg.variant].spec
        try:
            return [arrays[s.name] for s in spec.inputs]
        except KeyError as exc:
            raise ValueError(f"input {exc.args[0]!r} is missing") from None

    async def _serve(self) -> None:
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
                if self._stopping.is_set():
                    return
                self._idle = True
                self._arrived.clear()
                await self._arrived.wait()
                self._idle = False
            else:
                wake_at = outcome
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), max(0.0, wake_at - time.monotonic()))
                except TimeoutError:
                    pass

    def _step(self) -> object:
        """One scheduling step: answer hopeless requests and say which batch is due.

        Returns a _Due batch, _IDLE (nothing queued), or the instant to step again.
        """
        now = time.monotonic()
        step = self.scheduler.step(now)
        self._send_all(batch_replies.late(step.late, now))
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
        if self.runners[name].latency_s(outcome.rows) > _OFFLOAD_S:
            # Short alone, long by its rows: the serving loop offloads it, as it would its own.
            self._handoff = outcome
            self._arrived.set()
            return
        self._finish(outcome, self._compute(outcome.name, outcome.batch))

    def _compute(self, name: str, batch: tuple[Queued, ...]) -> tuple[list[np.ndarray] | Exception, int]:
        """The model call alone (safe on the compute thread: it sends nothing)."""
        runner = self.runners[name]
        try:
            if len(batch) == 1:
                inputs = batch[0].payload[1]
            else:
                inputs = [np.concatenate([item.payload[1][i] for item in batch]) for i in range(len(runner.spec.inputs))]
            t0 = time.perf_counter()
            outputs = runner.run(inputs)
            return outputs, int((time.perf_counter() - t0) * 1e6)
        except Exception as exc:  # a failing model answers its batch with the error, it does not kill the worker
            return exc, 0

    def _finish(self, due: _Due, result: tuple[list[np.ndarray] | Exception, int]) -> None:
        """Replies for a computed batch (on the event loop: sockets are not shared across threads)."""
        name, batch = due.name, due.batch
        outputs, compute_us = result
        finished = time.monotonic()
        self.scheduler.finished(name, due.rows, any(q.deadline < finished for q in batch))
        if isinstance(outputs, Exception):
            log.error("batch failed: %s", outputs, extra={"variant": name})
            self._send_all(batch_replies.failed(name, batch, f"model failed: {outputs}"))
            return
        runner = self.runners[name]
        expected_s = runner.latency_s(due.rows)
        if compute_us > 0 and expected_s > 0:
            self.slowdown.setdefault(name, SlowdownTracker()).observe(compute_us / 1e6, expected_s)
        self._send_all(batch_replies.computed(name, batch, outputs, [o.name for o in runner.spec.outputs],
                                              compute_us=compute_us, started=due.started))

    def _send_control(self, control: Endpoint, msg: object) -> None:
        """To the controller: while its link is down nothing queues (and nothing is lost: the
        periodic WorkerReady says it all again once the controller is back)."""
        try:
            control.send_nowait(msg)
        except zmq.Again:
            pass

    def _send(self, ep: Endpoint, msg: object, tensors: list[np.ndarray] | tuple = ()) -> None:
        self._send_all({ep: [(msg, tensors)]})

    def _send_all(self, by_gateway: dict[Endpoint, list]) -> None:
        for ep, items in by_gateway.items():
            try:
                ep.send_many_nowait(items)
                self._last_sent[ep] = time.monotonic()
            except zmq.Again:
                log.warning("gateway link backed up; %d replies dropped", len(items))


def main() -> None:
    try:
        configure_logging(os.environ.get("LETMESH_LOG_LEVEL", "WARNING"), os.environ.get(FORMAT_ENV, "text"),
                          label="worker")
    except ValueError as exc:
        print(f"letmesh worker: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        cmd = read_spec()
    except WorkerSpecError as exc:
        print(f"letmesh worker: {exc}", file=sys.stderr)
        sys.exit(2)
    worker = Worker(
        cmd,
        agent_id=os.environ.get("LETMESH_WORKER_AGENT_ID", "local"),
        state_dir=Path(os.environ.get("LETMESH_STATE_DIR", ".letmesh")),
        heartbeat_interval_s=float(os.environ.get("LETMESH_WORKER_HEARTBEAT_INTERVAL_S", "0.25")),
    )
    try:
        import uvloop

        uvloop.run(worker.run())
    except ImportError:
        asyncio.run(worker.run())
    sys.exit(worker.exit_code)


if __name__ == "__main__":
    main()
