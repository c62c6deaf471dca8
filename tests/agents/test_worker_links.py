"""A worker process's gateway links, run in this process with its loading stubbed: a gateway list
that arrives while variants load, and a stop that drains the queue and delivers every reply."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agents.worker import Worker
from mesh.transport import Endpoint
from protocol.codec import tensor_meta
from protocol.message import GatewayListChanged, Heartbeat, InferReply, InferRequest, WorkerHello
from protocol.types import Partition, ReplyStatus, TensorSpec

BOUND_S = 10.0


@dataclass
class Command:  # the parts of StartWorker that Worker.run reads once loading is stubbed
    controller: str
    gateways: tuple[str, ...]
    worker_id: str = "w"
    variants: tuple = ()
    partition: object = Partition(device_id="cpu0", kind="cpu", cores=(0,))


class _Spec:
    inputs = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
    outputs = (TensorSpec(name="y", datatype="FP32", shape=(-1, 1 << 20)),)  # 4 MiB a row


class WideModel:
    """Answers each row with 4 MiB, taking 50 ms a batch: a queue that takes a while to drain."""

    spec = _Spec()

    def latency_s(self, batch: int) -> float:
        return 0.05

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.ones((inputs[0].shape[0], 1 << 20), np.float32)]


class StubbedWorker(Worker):
    def __init__(self, cmd: Command, tmp_path: Path, loads: list[tuple[str, asyncio.Event | None]]) -> None:
        super().__init__(cmd, agent_id="a", state_dir=tmp_path, heartbeat_interval_s=0.1)  # type: ignore[arg-type]
        self.loads = loads

    async def _load(self, control: Endpoint, replies: asyncio.Queue) -> None:
        await control.send(Heartbeat(sender="w", role="worker"))  # the test's controller learns its peer id
        for name, loaded in self.loads:
            if loaded is not None:
                await loaded.wait()
            self.serving.add(name, WideModel(), "edf", max_batch=1)  # type: ignore[arg-type]


async def test_a_gateway_list_that_arrives_while_variants_load_is_followed_once_all_are_loaded(ctx, tmp_path):
    controller = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    gateway = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    late_gateway = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    second = asyncio.Event()
    worker = StubbedWorker(Command(controller.address, (gateway.address,)), tmp_path, [("v1", None), ("v2", second)])
    run = asyncio.create_task(worker.run())
    try:
        peer = (await asyncio.wait_for(controller.recv(), BOUND_S)).peer
        while "v1" not in worker.runners:
            await asyncio.sleep(0.01)
        # v1 loaded, v2 still loading: a gateway joins the mesh.
        controller.send_nowait(GatewayListChanged(gateways=(gateway.address, late_gateway.address)), to=peer)
        await asyncio.sleep(0.2)
        second.set()
        for gw in (gateway, late_gateway):
            first = await asyncio.wait_for(gw.recv(), BOUND_S)
            assert isinstance(first.msg, WorkerHello) and first.msg.variants == ("v1", "v2")
            beat = await asyncio.wait_for(gw.recv(), BOUND_S)
            assert isinstance(beat.msg, Heartbeat)
            assert gw.routes.dropped == 0  # one connection under the worker's name, not two
    finally:
        worker._stopping.set()
        await asyncio.wait_for(run, BOUND_S)
        for end in (controller, gateway, late_gateway):
            end.close()


async def test_a_stopping_worker_delivers_the_replies_of_the_queue_it_drains(ctx, tmp_path):
    controller = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    gateway = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    worker = StubbedWorker(Command(controller.address, (gateway.address,)), tmp_path, [("v", None)])
    pushed: list[object] = []
    push = worker.serving.scheduler.push
    worker.serving.scheduler.push = lambda key, item: bool(pushed.append(item)) or push(key, item)  # type: ignore
    run = asyncio.create_task(worker.run())
    try:
        hello = await asyncio.wait_for(gateway.recv(), BOUND_S)
        assert isinstance(hello.msg, WorkerHello)
        x = np.ones((1, 4), np.float32)
        for i in range(8):
            gateway.send_nowait(InferRequest(request_id=i, variant="v", budget_us=30_000_000,
                                             inputs=(tensor_meta("x", x),)), [x], to=hello.peer)
        while len(pushed) < 8:  # all read and queued; the first batches computing
            await asyncio.sleep(0.01)
        worker._stopping.set()  # what SIGTERM does
        await asyncio.wait_for(run, BOUND_S)
        answered: dict[int, ReplyStatus] = {}
        try:
            while len(answered) < 8:
                got = await asyncio.wait_for(gateway.recv(), BOUND_S)
                if isinstance(got.msg, InferReply):
                    answered[got.msg.request_id] = got.msg.status
        except TimeoutError:
            pytest.fail(f"replies missing {BOUND_S:.0f} s after the worker exited: answered {answered}; at the "
                        f"gateway, messages refused {gateway.protocol_errors}, of a second connection dropped "
                        f"{gateway.routes.dropped}")
        assert answered == {i: ReplyStatus.OK for i in range(8)}
    finally:
        worker._stopping.set()
        if not run.done():
            await asyncio.wait_for(run, BOUND_S)
        controller.close()
        gateway.close()
