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
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import zmq.asyncio  # noqa: E402

from agents.artifact import fetch_with_retries, report_load_failure  # noqa: E402
from agents.error import FetchInterrupted, WorkerSpecError  # noqa: E402
from agents.gateway_links import gateway_changes  # noqa: E402
from agents.managed_worker import WorkerExit  # noqa: E402
from agents.model_runner import ModelRunner  # noqa: E402
from agents.onnx_upgrade import enabled_from_env as onnx_upgrade_enabled  # noqa: E402
from agents.proc_usage import process_usage  # noqa: E402
from agents.process import torch_device  # noqa: E402
from agents.serving_loop import ServingLoop  # noqa: E402
from mesh import cpu_policy, heap  # noqa: E402
from mesh.keys import client_keys_from_env  # noqa: E402
from mesh.latency import reported  # noqa: E402
from mesh.log_format import FORMAT_ENV, configure as configure_logging  # noqa: E402
from mesh.links import LINGER_MS  # noqa: E402
from mesh.transport import Endpoint, EndpointClosed  # noqa: E402
from protocol.codec import decode  # noqa: E402
from protocol.error import ProtocolError  # noqa: E402
from protocol.message import (  # noqa: E402
    ArtifactChunkReply,
    ErrorReply,
    GatewayListChanged,
    Heartbeat,
    StartWorker,
    WorkerHello,
    WorkerReady,
)

log = logging.getLogger(__name__)

# How long a stopping worker's gateway links may take to send the replies of the queue it drained;
# a gateway that is gone holds the exit this long at most.
STOP_FLUSH_MS = 2000


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
    """One gpu-let's process: loads its variants, keeps its links, and runs the serving loop
    (agents.serving_loop) until told to stop."""

    def __init__(self, cmd: StartWorker, *, agent_id: str, state_dir: Path, heartbeat_interval_s: float) -> None:
        self.cmd = cmd
        self.agent_id = agent_id
        self.cache_dir = state_dir / "artifacts"
        self.heartbeat_interval_s = heartbeat_interval_s
        self.identity = f"worker:{cmd.worker_id}"
        self.serving = ServingLoop()
        self.runners = self.serving.runners
        self.profile_ms: dict[str, tuple[float, ...]] = {}
        self.runtimes: dict[str, str] = {}  # variants the ONNX upgrade decided for, and its verdict
        self._gateways: dict[str, Endpoint] = {}
        # The controller's latest gateway list; links open once every variant is loaded (one opened
        # earlier would announce only the variants loaded so far).
        self._gateway_list: tuple[str, ...] = tuple(cmd.gateways)
        self._links_open = False
        self.exit_code = WorkerExit.OK
        self._recv_tasks: dict[str, asyncio.Task] = {}
        # A stop asked (a signal): the receives end first, then the serving loop drains what they queued.
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
            try:
                loading.result()
            except FetchInterrupted as exc:
                log.error("worker %s could not fetch its artifacts: %s; exiting", self.cmd.worker_id, exc)
                self.exit_code = WorkerExit.FETCH_FAILED
                return
            if not self.runners:
                log.error("no variant of worker %s could be loaded; exiting", self.cmd.worker_id)
                self.exit_code = WorkerExit.NOTHING_LOADED
                return
            heap.settle()  # the models and torch are loaded: collections walk only what serving allocates
            self._links_open = True
            self._follow(self._gateway_list)
            beat_task = asyncio.create_task(self._heartbeats(control))
            serve_task = asyncio.create_task(self.serving.serve())
            await self._stopping.wait()
            for task in self._recv_tasks.values():
                task.cancel()
            await asyncio.gather(*self._recv_tasks.values(), return_exceptions=True)
            # Only now: a serving loop told earlier could finish while a receive still queued a request.
            self.serving.stopping.set()
            self.serving.wake()
            await serve_task  # drains what is queued: every request read gets its reply
            beat_task.cancel()
            await asyncio.gather(beat_task, return_exceptions=True)
        finally:
            control_task.cancel()
            await asyncio.gather(control_task, return_exceptions=True)
            for ep in self._gateways.values():
                ep.close(linger_ms=STOP_FLUSH_MS)  # the drained queue's replies may still be on their way out
            # A load failure's report must reach the controller: no restart will send it again.
            control.close(linger_ms=STOP_FLUSH_MS if WorkerExit.final(self.exit_code) else LINGER_MS)
            self._ctx.term()
            self.serving.close()

    async def _load(self, control: Endpoint, replies: asyncio.Queue) -> None:
        device = torch_device(self.cmd.partition)
        # A GPU worker's host thread only launches kernels; a CPU worker computes on every core it holds.
        torch.set_num_threads(1 if device != "cpu" else max(1, len(os.sched_getaffinity(0))))
        for spec in self.cmd.variants:
            try:
                path = await fetch_with_retries(control, replies, self.cache_dir, spec.sha256)
                runner = ModelRunner(spec, path, device, onnx_upgrade=onnx_upgrade_enabled())
                measured = runner.warm_up()
            except (asyncio.CancelledError, FetchInterrupted):
                # Interrupted past its retries: a fault of this host or its link, not of the variant,
                # which is not to be set aside mesh-wide for it. The worker exits; its agent
                # restarts it (and past the restart limit the controller places it elsewhere).
                raise
            except Exception as exc:
                # One bad variant must not take the healthy ones sharing this gpu-let down with
                # it: report it (the controller sets it aside and re-plans) and serve the rest.
                log.error("variant %s cannot be loaded: %s", spec.name, exc)
                await report_load_failure(control, self.cmd.worker_id, spec.name, exc)
                continue
            self.profile_ms[spec.name] = reported(measured, spec.max_batch)
            if runner.runtime != spec.backend:
                self.runtimes[spec.name] = runner.runtime
            try:
                self.serving.add(spec.name, runner, spec.batching, spec.max_batch)
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
                    self._gateway_list = tuple(gateways)
                    if self._links_open and not self._stopping.is_set():
                        self._follow(self._gateway_list)
                case _:
                    pass

    def _follow(self, gateways: tuple[str, ...]) -> None:
        """Open and close gateway links to match the controller's list."""
        connect, close = gateway_changes(self._gateways, gateways)
        for address in close:
            self._disconnect(address)
        for address in connect:
            self._connect(address)

    def _connect(self, address: str) -> None:
        assert self._ctx is not None
        ep = Endpoint.dealer(self._ctx, address, self.identity, security=self._keys)
        self._gateways[address] = ep
        ep.send_nowait(WorkerHello(worker_id=self.cmd.worker_id, variants=tuple(self.runners)))
        self._recv_tasks[address] = asyncio.create_task(self.serving.receive(ep))

    def _disconnect(self, address: str) -> None:
        task = self._recv_tasks.pop(address, None)
        if task is not None:
            task.cancel()
        ep = self._gateways.pop(address, None)
        if ep is not None:
            self.serving.last_sent.pop(ep, None)
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
                        slowdown=self.serving.slowdowns(),
                        memory_peak_bytes=self._memory_peak(),
                    ),
                )
            seq += 1
            beat = Heartbeat(sender=self.cmd.worker_id, role="worker", seq=seq)
            now = time.monotonic()
            for ep in self._gateways.values():
                # A reply sent within the interval already told this gateway we are alive.
                if now - self.serving.last_sent.get(ep, 0.0) >= self.heartbeat_interval_s / 2:
                    self.serving.send(ep, beat)
            before = time.monotonic()
            await asyncio.sleep(self.heartbeat_interval_s)
            if (late := time.monotonic() - before - self.heartbeat_interval_s) > 0.5:
                log.warning("heartbeat %.2f s late: the serving loop was blocked or the host starved", late)

    def _memory_peak(self) -> int:
        if self.cmd.partition.kind != "cpu":
            return 0
        usage = process_usage(os.getpid())
        return usage.own_peak_bytes() if usage is not None else 0

    def _send_control(self, control: Endpoint, msg: object) -> None:
        """To the controller: while its link is down nothing queues (and nothing is lost: the
        periodic WorkerReady says it all again once the controller is back)."""
        try:
            control.send_nowait(msg)
        except zmq.Again:
            pass


def main() -> None:
    try:
        configure_logging(os.environ.get("LETMESH_LOG_LEVEL", "WARNING"), os.environ.get(FORMAT_ENV, "text"),
                          label="worker")
    except ValueError as exc:
        print(f"letmesh worker: {exc}", file=sys.stderr)
        sys.exit(WorkerExit.BAD_SPEC)
    try:
        cmd = read_spec()
    except WorkerSpecError as exc:
        print(f"letmesh worker: {exc}", file=sys.stderr)
        sys.exit(WorkerExit.BAD_SPEC)
    policy = os.environ.get(cpu_policy.ENV)
    if policy:  # before ZeroMQ and the runtimes start their threads, which inherit it
        try:
            problem = cpu_policy.apply(policy)
        except ValueError as exc:
            problem = str(exc)
        if problem:
            log.warning("CPU policy not set: %s", problem)
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
