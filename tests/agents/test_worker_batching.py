"""A worker's serving loop over a real ZeroMQ link, with a model that records the batches it runs."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from agents.serving_loop import ServingLoop
from mesh.slowdown import SlowdownTracker
from mesh import transport
from mesh.transport import Endpoint
from protocol.codec import tensor_meta
from protocol.message import InferReply, InferRequest, WorkerHello
from protocol.types import ReplyStatus, TensorSpec
from tests.mesh.test_batch_shedding import resnet


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


async def backlog(ctx, model, xs: list[np.ndarray], *, max_batch: int = 8,
                  budgets_us: list[int] | None = None) -> list[tuple[InferReply, bytes]]:
    """Send ``xs`` to an idle worker serving ``model`` as "v" (``max_batch``), one message each (with
    ``budgets_us``, else 5 s each), all waiting on its socket before it reads any; the replies in
    request order."""
    serving = ServingLoop()
    serving.add("v", model, "edf", max_batch=max_batch)  # type: ignore[arg-type]
    gateway = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    link = Endpoint.dealer(ctx, gateway.address, "worker:w")
    tasks: list[asyncio.Task] = []
    try:
        await link.send(WorkerHello(worker_id="w", variants=("v",)))
        peer = (await asyncio.wait_for(gateway.recv(), 5)).peer
        tasks.append(asyncio.create_task(serving.serve()))
        while not serving._idle:  # asleep with nothing queued
            await asyncio.sleep(0.01)
        for i, x in enumerate(xs):  # one message each, not a bundle
            budget_us = budgets_us[i] if budgets_us else 5_000_000
            gateway.send_nowait(InferRequest(request_id=i, variant="v", budget_us=budget_us,
                                             inputs=(tensor_meta("x", x),)), [x], to=peer)
        await asyncio.sleep(0.3)  # all on the worker's socket before it reads
        tasks.append(asyncio.create_task(serving.receive(link)))
        replies: dict[int, tuple[InferReply, bytes]] = {}
        while len(replies) < len(xs):
            got = await asyncio.wait_for(gateway.recv(), 5)
            assert isinstance(got.msg, InferReply)
            replies[got.msg.request_id] = (got.msg, bytes(got.buffers[0]) if got.buffers else b"")
        return [replies[i] for i in range(len(xs))]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        link.close()
        gateway.close()
        serving.close()


async def test_requests_waiting_on_the_link_run_as_one_batch_not_one_by_one(ctx, monkeypatch) -> None:
    """Six requests reach an idle worker as six messages before it reads any: it reads them all,
    then runs them together. Run as each is read, they would cost six batches of one."""
    # A receive loop lets other tasks run after 2 ms of reading a backlog (tested in
    # tests/mesh/test_transport.py): on a busy host six reads can take that long, and the
    # serving loop would run the four read so far. Not what this test is about.
    monkeypatch.setattr(transport, "FAIR_SHARE_S", 60.0)
    model = RecordingModel()
    xs = [np.full((1, 4), i, np.float32) for i in range(6)]
    replies = await backlog(ctx, model, xs)
    for reply, _ in replies:
        assert reply.status is ReplyStatus.OK
        assert reply.batch_size == 6
    assert model.batches == [6]
    for (_, data), x in zip(replies, xs, strict=True):  # each answer is its own request's
        np.testing.assert_array_equal(np.frombuffer(data, np.float32).reshape(1, 4), x * 2)


class ResnetPacedModel(RecordingModel):
    """Predicted as a ResNet-18 on one core at a tenth of its speed (rows dearer in small batches:
    0.83 s for 8, 1.25 s for 16); it computes at once."""

    def latency_s(self, batch: int) -> float:
        return 10 * resnet(batch)


async def test_a_worker_behind_runs_full_batches_and_answers_the_head_that_cannot_wait_late(ctx, monkeypatch) -> None:
    """Thirty-four requests (two full batches and more) wait for an idle worker (max batch 16);
    the oldest has time for a batch of 11 but not of 16. Shrinking the batch for it would cost
    15 % more a row: it is answered late and the worker runs full batches."""
    monkeypatch.setattr(transport, "FAIR_SHARE_S", 60.0)  # read them all before the first batch
    model = ResnetPacedModel()
    xs = [np.full((1, 4), i, np.float32) for i in range(34)]
    replies = await backlog(ctx, model, xs, max_batch=16, budgets_us=[1_000_000] + [60_000_000] * 33)
    assert replies[0][0].status is ReplyStatus.LATE
    assert model.batches == [16, 16, 1]
    assert all(reply.status is ReplyStatus.OK for reply, _ in replies[1:])
    assert [reply.batch_size for reply, _ in replies[1:33]] == [16] * 32


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


def test_a_slow_spell_long_past_no_longer_slows_the_batchers_prediction_or_the_report() -> None:
    """Timed three times slow a minute ago and served nothing since (the gateway sent the
    family elsewhere): the batcher predicts on the curve again, so requests the spell ruled out
    are run rather than dropped unrun for good, and the controller hears of no slowdown. The
    same spell just now still counts."""
    serving = ServingLoop()
    serving.runners["v"] = RecordingModel()  # type: ignore[assignment]
    predict = serving.serving_latency("v")
    tracker = serving.slowdown.setdefault("v", SlowdownTracker())
    for _ in range(30):
        tracker.observe(0.003, 0.001, time.monotonic() - 60.0)
    assert predict(1) == pytest.approx(0.001, rel=0.01)
    assert serving.slowdowns() == {"v": pytest.approx(1.0, rel=0.01)}
    for _ in range(30):
        tracker.observe(0.003, 0.001, time.monotonic())
    assert predict(1) == pytest.approx(0.003, rel=0.1)
    assert serving.slowdowns() == {"v": pytest.approx(3.0, rel=0.1)}
    serving.close()


class _FreeSpec:
    inputs = (TensorSpec(name="x", datatype="FP32", shape=(-1, -1)),)  # any length
    outputs = (TensorSpec(name="y", datatype="FP32", shape=(-1, 1)),)


class SumModel(RecordingModel):
    """Sums each row: requests of different lengths cannot stack into one array."""

    spec = _FreeSpec()

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(inputs[0].shape[0])
        return [inputs[0].sum(axis=1, keepdims=True)]


class FailingModel(RecordingModel):
    def __init__(self, error: Exception | None = None, outputs: list[np.ndarray] | None = None) -> None:
        super().__init__()
        self.error, self.outputs = error, outputs

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(inputs[0].shape[0])
        if self.error is not None:
            raise self.error
        return self.outputs if self.outputs is not None else [inputs[0] * 2]


class Link:
    """A serving loop with ``model`` as variant "v", reached from a gateway ROUTER over a real link."""

    def __init__(self, ctx, model) -> None:
        self.ctx, self.serving = ctx, ServingLoop()
        self.serving.add("v", model, "edf", max_batch=8)  # type: ignore[arg-type]
        self.tasks: list[asyncio.Task] = []
        self.ends: list[Endpoint] = []

    async def connect(self) -> tuple[Endpoint, Endpoint, bytes]:
        gateway = Endpoint.router(self.ctx, "tcp://127.0.0.1:0")
        link = Endpoint.dealer(self.ctx, gateway.address, f"worker:w{len(self.ends)}")
        self.ends += [link, gateway]
        await link.send(WorkerHello(worker_id="w", variants=("v",)))
        peer = (await asyncio.wait_for(gateway.recv(), 5)).peer
        self.tasks.append(asyncio.create_task(self.serving.receive(link)))
        return gateway, link, peer

    def serve(self) -> None:
        self.tasks.append(asyncio.create_task(self.serving.serve()))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for end in self.ends:
            end.close()
        self.serving.close()


def request(i: int, x: np.ndarray) -> tuple[InferRequest, list[np.ndarray]]:
    return InferRequest(request_id=i, variant="v", budget_us=5_000_000, inputs=(tensor_meta("x", x),)), [x]


async def replies(gateway: Endpoint, n: int) -> dict[int, tuple[InferReply, list]]:
    out: dict[int, tuple[InferReply, list]] = {}
    while len(out) < n:
        got = await asyncio.wait_for(gateway.recv(), 5)
        if isinstance(got.msg, InferReply):
            out[got.msg.request_id] = (got.msg, got.buffers)
    return out


async def test_requests_of_different_lengths_in_one_batch_are_each_answered(ctx) -> None:
    model = SumModel()
    mesh = Link(ctx, model)
    try:
        gateway, _, peer = await mesh.connect()
        gateway.send_many_nowait([request(1, np.ones((1, 3), np.float32)), request(2, np.ones((2, 5), np.float32)),
                                  request(3, np.full((1, 3), 2, np.float32))], to=peer)  # one bundle
        mesh.serve()
        got = await replies(gateway, 3)
        assert all(msg.status is ReplyStatus.OK for msg, _ in got.values()), got
        answers = {i: np.frombuffer(bufs[0], np.float32).tolist() for i, (_, bufs) in got.items()}
        assert answers == {1: [3.0], 2: [5.0, 5.0], 3: [6.0]}
        assert sorted(model.batches) == [2, 2]  # lengths 3 stacked together, length 5 alone
    finally:
        await mesh.close()


@pytest.mark.parametrize("model, fragment", [
    (FailingModel(outputs=[np.float32(1.0)]), "not the batch's 2 rows"),  # a scalar for a batch
    (FailingModel(outputs=[np.zeros((1, 4), np.float32)]), "not the batch's 2 rows"),  # one row for two
    (FailingModel(error=RuntimeError("shape mismatch\n" + "  at frame ...\n" * 6000)), "cut short"),  # ~84 KB
])
async def test_a_batch_the_model_fails_is_answered_with_the_error_and_the_worker_serves_on(ctx, model, fragment):
    mesh = Link(ctx, model)
    try:
        gateway, _, peer = await mesh.connect()
        gateway.send_many_nowait([request(1, np.ones((1, 4), np.float32)), request(2, np.ones((1, 4), np.float32))],
                                 to=peer)
        mesh.serve()
        got = await replies(gateway, 2)
        for msg, _ in got.values():
            assert msg.status is ReplyStatus.ERROR and fragment in msg.error and len(msg.error) <= 2000
        assert gateway.protocol_errors == 0
        model.error, model.outputs = None, None  # the model recovers: the next request is served
        gateway.send_nowait(*request(3, np.ones((1, 4), np.float32)), to=peer)
        msg, _ = (await replies(gateway, 1))[3]
        assert msg.status is ReplyStatus.OK
    finally:
        await mesh.close()


async def test_replies_for_a_gateway_whose_link_closed_do_not_stop_the_others(ctx) -> None:
    """The controller dropped gateway A while its request computed: B is still served."""
    mesh = Link(ctx, RecordingModel())
    try:
        gateway_a, link_a, peer_a = await mesh.connect()
        gateway_b, _, peer_b = await mesh.connect()
        gateway_a.send_nowait(*request(1, np.ones((1, 4), np.float32)), to=peer_a)
        while not mesh.serving.scheduler.next_key():  # queued
            await asyncio.sleep(0.005)
        link_a.close()
        mesh.serve()
        for i in (2, 3):
            gateway_b.send_nowait(*request(i, np.ones((1, 4), np.float32)), to=peer_b)
            msg, _ = (await replies(gateway_b, 1))[i]
            assert msg.status is ReplyStatus.OK
    finally:
        await mesh.close()


class ThreadRecordingModel(RecordingModel):
    def __init__(self, latency_s: float) -> None:
        super().__init__()
        self._latency_s, self.threads = latency_s, []

    def latency_s(self, batch: int) -> float:
        return self._latency_s

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self.threads.append(threading.current_thread() is threading.main_thread())
        return super().run(inputs)


async def test_a_long_batch_found_behind_a_hopeless_short_request_computes_off_the_event_loop(ctx) -> None:
    """The receive path runs short batches inline. Its first look finds a short variant's request,
    already hopeless; the batch it then gets is a long variant's: that one goes to the compute
    thread, or heartbeats and receives would stall behind it."""
    short, long_ = ThreadRecordingModel(0.001), ThreadRecordingModel(0.2)
    mesh = Link(ctx, short)
    mesh.serving.add("long", long_, "edf", max_batch=8)  # type: ignore[arg-type]
    try:
        gateway, _, peer = await mesh.connect()
        mesh.serve()
        while not mesh.serving._idle:
            await asyncio.sleep(0.01)
        x = np.ones((1, 4), np.float32)
        hopeless = InferRequest(request_id=1, variant="v", budget_us=1, inputs=(tensor_meta("x", x),))
        slow = InferRequest(request_id=2, variant="long", budget_us=5_000_000, inputs=(tensor_meta("x", x),))
        gateway.send_many_nowait([(hopeless, [x]), (slow, [x])], to=peer)
        got = await replies(gateway, 2)
        assert got[1][0].status is ReplyStatus.LATE and got[2][0].status is ReplyStatus.OK
        assert short.threads == [] and long_.threads == [False]  # not on the event loop's thread
    finally:
        await mesh.close()


class _Unbatched:
    inputs = (TensorSpec(name="x", datatype="FP32", shape=(4,)),)  # no batch dimension
    outputs = (TensorSpec(name="y", datatype="FP32", shape=(4,)),)


class SoftmaxModel:
    """A softmax over its whole input vector: stacked with another request's, it answers neither."""

    spec = _Unbatched()

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def latency_s(self, batch: int) -> float:
        return 0.001

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(inputs[0].shape)
        e = np.exp(inputs[0] - inputs[0].max())
        return [(e / e.sum()).astype(np.float32)]


async def test_requests_to_a_model_without_a_batch_dimension_are_never_stacked(ctx, monkeypatch) -> None:
    """Six requests of a model whose input has no batch dimension wait on the link together. The
    worker used to count each as 4 rows (its first dimension) and stack them two at a time into
    one input of 8 (its max batch): the softmax saw someone else's numbers too."""
    monkeypatch.setattr(transport, "FAIR_SHARE_S", 60.0)
    model = SoftmaxModel()
    xs = [np.arange(4, dtype=np.float32) * (i + 1) for i in range(6)]
    replies = await backlog(ctx, model, xs)
    assert all(reply.status is ReplyStatus.OK for reply, _ in replies), replies
    assert model.batches == [(4,)] * 6
    for (_, data), x in zip(replies, xs, strict=True):
        e = np.exp(x - x.max())
        np.testing.assert_allclose(np.frombuffer(data, np.float32), e / e.sum(), rtol=1e-6)
