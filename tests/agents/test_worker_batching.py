"""A worker's serving loop over a real ZeroMQ link, with a model that records the batches it runs."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agents.serving_loop import ServingLoop
from mesh.slowdown import SlowdownTracker
from mesh import transport
from mesh.transport import Endpoint
from protocol.codec import tensor_meta
from protocol.message import InferReply, InferRequest, WorkerHello
from protocol.types import ReplyStatus, TensorSpec


class _Spec:
    inputs = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
    outputs = (TensorSpec(name="y", datatype="FP32", shape=(-1, 4)),)


class RecordingModel:
    """Doubles its input; 1 ms a batch by its curve, so the worker runs it on its event loop."""

    spec = _Spec()

    def __init__(self) -> None:
        self.batches: list[int] = []

    def latency_s(self, batch: int) -> float:
        return 0.001

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(inputs[0].shape[0])
        return [inputs[0] * 2]


async def test_requests_waiting_on_the_link_run_as_one_batch_not_one_by_one(ctx, monkeypatch) -> None:
    """Six requests reach an idle worker as six messages before it reads any: it reads them all,
    then runs them together. Run as each is read, they would cost six batches of one."""
    # A receive loop lets other tasks run after 2 ms of reading a backlog (tested in
    # tests/mesh/test_transport.py): on a busy host six reads can take that long, and the
    # serving loop would run the four read so far. Not what this test is about.
    monkeypatch.setattr(transport, "FAIR_SHARE_S", 60.0)
    serving = ServingLoop()
    model = RecordingModel()
    serving.add("v", model, "edf", max_batch=8)  # type: ignore[arg-type]
    gateway = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    link = Endpoint.dealer(ctx, gateway.address, "worker:w")
    tasks: list[asyncio.Task] = []
    try:
        await link.send(WorkerHello(worker_id="w", variants=("v",)))
        peer = (await asyncio.wait_for(gateway.recv(), 5)).peer
        tasks.append(asyncio.create_task(serving.serve()))
        while not serving._idle:  # asleep with nothing queued
            await asyncio.sleep(0.01)
        xs = [np.full((1, 4), i, np.float32) for i in range(6)]
        for i, x in enumerate(xs):  # one message each, not a bundle
            gateway.send_nowait(InferRequest(request_id=i, variant="v", budget_us=5_000_000,
                                             inputs=(tensor_meta("x", x),)), [x], to=peer)
        await asyncio.sleep(0.3)  # all six on the worker's socket before it reads
        tasks.append(asyncio.create_task(serving.receive(link)))
        replies: dict[int, np.ndarray] = {}
        while len(replies) < 6:
            got = await asyncio.wait_for(gateway.recv(), 5)
            assert isinstance(got.msg, InferReply) and got.msg.status is ReplyStatus.OK
            replies[got.msg.request_id] = np.frombuffer(got.buffers[0], np.float32).reshape(1, 4)
            assert got.msg.batch_size == 6
        assert model.batches == [6]
        for i, x in enumerate(xs):  # each answer is its own request's
            np.testing.assert_array_equal(replies[i], x * 2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        link.close()
        gateway.close()
        serving.close()


def test_the_batcher_predicts_at_the_speed_served_batches_show() -> None:
    """The warm-up curve is the model alone; served beside other processes its batches run
    slower, and the batcher's prediction follows once five were timed: never below the curve,
    at most four times it."""
    serving = ServingLoop()
    serving.runners["v"] = RecordingModel()  # type: ignore[assignment]
    predict = serving.serving_latency("v")
    tracker = serving.slowdown.setdefault("v", SlowdownTracker())
    for _ in range(4):
        tracker.observe(0.003, 0.001)
    assert predict(1) == 0.001  # four batches timed: the curve still
    for _ in range(30):
        tracker.observe(0.003, 0.001)
    assert predict(1) == pytest.approx(0.003, rel=0.1)
    for _ in range(60):
        tracker.observe(0.0005, 0.001)
    assert predict(1) == pytest.approx(0.001)  # faster than its warm-up: the curve, no less
    for _ in range(60):
        tracker.observe(0.05, 0.001)
    assert predict(1) == pytest.approx(0.004)
    assert serving.slowdowns() == {"v": pytest.approx(tracker.estimate().mean)}
    serving.close()
