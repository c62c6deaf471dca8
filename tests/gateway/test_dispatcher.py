"""The gateway's data plane over real ZeroMQ, with workers played by DEALER sockets in the test."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import numpy as np
import pytest

from gateway.dispatch_error import DeadlineExceeded, Overloaded, WorkerFailed
from gateway.dispatcher import Dispatcher
from mesh.deadline import Deadline
from protocol.message import RoutingTable
from protocol.types import ModelInfo, TensorSpec, WorkerRoute
from tests.gateway.fake_worker import FakeWorker

SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
MODEL = ModelInfo(name="v", family="f", version="1", platform="pytorch_torchscript", accuracy=0.9,
                  inputs=SPEC, outputs=SPEC, max_batch=4, default_slo_ms=100.0)
X = np.ones((1, 4), np.float32)


def table(*routes: WorkerRoute, version: int = 1) -> RoutingTable:
    return RoutingTable(version=version, models=(MODEL,), workers=routes)


@pytest.fixture
async def dispatcher(ctx):
    d = Dispatcher(ctx, "tcp://127.0.0.1:*", gateway_id="test", heartbeat_interval_s=0.05, missed_heartbeats=20)
    await d.start()
    workers: list[FakeWorker] = []
    d.spawn = lambda worker_id, **kw: workers.append(FakeWorker(ctx, d.address, worker_id, **kw)) or workers[-1]
    yield d
    for w in workers:
        await w.close()
    await d.stop()


async def reachable(d: Dispatcher, *worker_ids: str) -> None:
    until = time.monotonic() + 10
    while set(d.ready_workers("v")) != set(worker_ids):
        assert time.monotonic() < until, f"workers not reachable: {d.ready_workers('v')}"
        await asyncio.sleep(0.01)


def deadline(ms: float) -> Deadline:
    return Deadline.after(ms / 1e3, time.monotonic())


async def test_the_split_across_workers_follows_the_plans_weights(dispatcher):
    a, b = dispatcher.spawn("a"), dispatcher.spawn("b")
    dispatcher.apply_routing(table(WorkerRoute(worker_id="a", variants=("v",), weights={"v": 0.75}),
                                   WorkerRoute(worker_id="b", variants=("v",), weights={"v": 0.25})))
    await reachable(dispatcher, "a", "b")
    served = Counter()
    for _ in range(200):
        result = await dispatcher.infer("v", {"x": X}, deadline(5000))
        served[result.worker_id] += 1
        np.testing.assert_array_equal(result.outputs["x"], X)
    assert served == {"a": 150, "b": 50}
    assert len(a.received) == 150 and len(b.received) == 50


async def test_requests_made_in_one_turn_of_the_event_loop_reach_their_worker_in_one_send(dispatcher):
    a, b = dispatcher.spawn("a"), dispatcher.spawn("b")
    dispatcher.apply_routing(table(WorkerRoute(worker_id="a", variants=("v",), weights={"v": 0.5}),
                                   WorkerRoute(worker_id="b", variants=("v",), weights={"v": 0.5})))
    await reachable(dispatcher, "a", "b")
    xs = [np.full((1, 4), i, np.float32) for i in range(12)]
    results = await asyncio.gather(*(dispatcher.infer("v", {"x": x}, deadline(5000)) for x in xs))
    for x, result in zip(xs, results):  # each answer is its own request's
        np.testing.assert_array_equal(result.outputs["x"], x)
    assert a.sends == [6] and b.sends == [6]
    # One request alone still goes at once, in its own send.
    await dispatcher.infer("v", {"x": xs[0]}, deadline(5000))
    assert sorted(a.sends + b.sends) == [1, 6, 6]


async def test_requests_that_cannot_make_it_behind_a_queue_are_turned_away_at_once(dispatcher):
    dispatcher.spawn("slow", answer=False)
    # The worker measured 40 ms for a batch of one, 80 ms for 2 and 160 ms for 4.
    dispatcher.apply_routing(table(WorkerRoute(worker_id="slow", variants=("v",),
                                               latency_ms={"v": (40.0, 80.0, 160.0)})))
    await reachable(dispatcher, "slow")
    held = [asyncio.create_task(dispatcher.infer("v", {"x": X}, deadline(2000))) for _ in range(3)]
    while dispatcher.outstanding() < 3:
        await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as exc_info:
        await dispatcher.infer("v", {"x": X}, deadline(60))  # 4 queued: ~160 ms, even half of it > 60 ms left
    assert not any(t.done() for t in held)  # answered at once, not after waiting in the queue
    assert exc_info.value.retry_after_s > 0
    assert dispatcher.counters["shed"] == 1
    for t in held:  # the held ones still get their one outcome: the deadline
        with pytest.raises(DeadlineExceeded):
            await t
    assert dispatcher.outstanding() == 0


async def test_requests_of_many_rows_count_as_the_rows_they_bring(dispatcher):
    dispatcher.spawn("busy", answer=False)
    # 2 ms for a row, 8 ms for 8 rows: 1 ms a row once batched.
    dispatcher.apply_routing(table(WorkerRoute(worker_id="busy", variants=("v",),
                                               latency_ms={"v": (2.0, 3.0, 5.0, 8.0)}, max_batch={"v": 8})))
    await reachable(dispatcher, "busy")
    rows8 = np.ones((8, 4), np.float32)
    held = [asyncio.create_task(dispatcher.infer("v", {"x": rows8}, deadline(2000))) for _ in range(6)]
    while dispatcher.outstanding() < 6:
        await asyncio.sleep(0.01)
    # 56 rows take 56 ms, 28 ms at the fastest a cold worker is credited with (half its curve).
    # Counted as 7 requests they would have taken 7.x ms, and this one would have been sent.
    with pytest.raises(Overloaded):
        await dispatcher.infer("v", {"x": rows8}, deadline(20))
    assert dispatcher.counters["shed"] == 1
    for t in held:
        t.cancel()
    await asyncio.gather(*held, return_exceptions=True)


@pytest.mark.parametrize(("measured_us", "left_ms", "turned_away"),
                         [(400_000, 1000, True), (200_000, 1000, False), (400_000, 2500, False),
                          (800_000, 2500, True)])
async def test_the_prediction_runs_at_the_workers_measured_speed(dispatcher, measured_us, left_ms, turned_away):
    """A worker that computes as fast as its curve says is predicted at its curve: 3 queued ahead
    take 1.6 s, and a request with 1 s left is turned away, one with 2.5 s is sent. One that has
    been measured at half its curve (a profile taken beside busy workers) is predicted at half:
    0.8 s, so the 1 s request is sent. One measured at twice its curve (the host got busier since
    profiling) is predicted at 3.2 s: the 2.5 s request is turned away, not left to miss. (Its
    latest answer came just before, so hardly any of the batch ahead counts as done.)"""
    worker = dispatcher.spawn("w", compute_us=measured_us)
    dispatcher.apply_routing(table(WorkerRoute(worker_id="w", variants=("v",),
                                               latency_ms={"v": (400.0, 800.0, 1600.0)})))
    await reachable(dispatcher, "w")
    for _ in range(5):  # answered at once, each reporting a batch of one that took measured_us
        await dispatcher.infer("v", {"x": X}, deadline(5000))
    worker.answer = False
    held = [asyncio.create_task(dispatcher.infer("v", {"x": X}, deadline(3000))) for _ in range(3)]
    while dispatcher.outstanding() < 3:
        await asyncio.sleep(0.01)
    last = asyncio.create_task(dispatcher.infer("v", {"x": X}, deadline(left_ms)))
    if turned_away:
        with pytest.raises(Overloaded):
            await last
    else:
        with pytest.raises(DeadlineExceeded):  # sent, and the held worker never answers
            await last
    assert dispatcher.counters["shed"] == (1 if turned_away else 0)
    for t in held:
        with pytest.raises(DeadlineExceeded):
            await t


async def test_a_worker_answering_slower_than_its_curve_has_its_queue_predicted_at_that_pace(dispatcher):
    """The worker's model computes at its curve (5 ms a row, and it says so), but it answers one
    request every 25 ms, as a worker does on a core it shares with its gateway. A request with
    100 ms left behind 10 or more waiting would finish in 250 ms or more at that pace: it is
    turned away at once, where the curve (55 ms) would have sent it to miss its deadline."""
    dispatcher.spawn("w", delay_s=0.025, serial=True, compute_us=5000)
    dispatcher.apply_routing(table(WorkerRoute(worker_id="w", variants=("v",),
                                               latency_ms={"v": (5.0, 10.0, 20.0)})))
    await reachable(dispatcher, "w")
    queued = [asyncio.create_task(dispatcher.infer("v", {"x": X}, deadline(10_000))) for _ in range(40)]
    await asyncio.sleep(0)  # all sent
    while dispatcher.outstanding() > 15:  # 25 answered: the pace is measured, 15 still wait
        await asyncio.sleep(0.002)
    with pytest.raises(Overloaded) as exc_info:
        await dispatcher.infer("v", {"x": X}, deadline(100))
    assert exc_info.value.retry_after_s > 0.05
    assert dispatcher.counters["shed"] == 1
    for result in await asyncio.gather(*queued):  # the queue itself is served
        np.testing.assert_array_equal(result.outputs["x"], X)
    # Idle again, a request is sent whatever the pace was: nothing waits ahead of it (its deadline
    # leaves room for a busy test host; it would have been turned away behind 40 at that pace).
    assert (await dispatcher.infer("v", {"x": X}, deadline(500))).worker_id == "w"


async def test_a_worker_answering_later_than_predicted_has_that_overrun_kept_in_hand(dispatcher):
    """The worker's model computes at its curve (30 ms a row) but each answer comes 80 ms after its
    request, as on a host whose gateway's loop is behind: a request sent behind another, with
    100 ms left, was predicted answered in 60 ms (little to spare: it is timed) and came 20 ms
    later. A request with 100 ms left behind two waiting is predicted at 90 ms, yet is turned away
    at once: the overrun, kept in hand, takes it past its deadline. Without it the request is sent,
    and misses the deadline."""
    worker = dispatcher.spawn("w", delay_s=0.08, compute_us=30_000)
    dispatcher.apply_routing(table(WorkerRoute(worker_id="w", variants=("v",),
                                               latency_ms={"v": (30.0, 60.0, 120.0)})))
    await reachable(dispatcher, "w")
    for _ in range(20):  # 20 requests sent behind one other, each answered about 20 ms past its prediction
        for outcome in await asyncio.gather(*(dispatcher.infer("v", {"x": X}, deadline(100)) for _ in range(2)),
                                            return_exceptions=True):
            assert not isinstance(outcome, Exception) or isinstance(outcome, DeadlineExceeded), outcome
    worker.answer = False
    held = [asyncio.create_task(dispatcher.infer("v", {"x": X}, deadline(400))) for _ in range(2)]
    await asyncio.sleep(0)  # both sent
    with pytest.raises(Overloaded) as exc_info:
        await dispatcher.infer("v", {"x": X}, deadline(100))
    assert exc_info.value.retry_after_s > 0.005
    assert dispatcher.counters["shed"] == 1
    for t in held:
        with pytest.raises(DeadlineExceeded):
            await t


async def test_requests_a_worker_dropped_unrun_count_as_overrunning_their_prediction_to_their_deadline(dispatcher):
    """The worker drops unrun every request sent behind another (its own queue is longer than the
    gateway sees): each was predicted to finish in about 100 ms of its 180, and would have finished
    after its deadline. Counted so, a request with 180 ms left behind two waiting (predicted at
    150 ms) is turned away at once; counting only the answers computed, it would be sent to miss."""
    worker = dispatcher.spawn("w", compute_us=100_000)
    dispatcher.apply_routing(table(WorkerRoute(worker_id="w", variants=("v",),
                                               latency_ms={"v": (100.0, 200.0, 400.0)})))
    await reachable(dispatcher, "w")
    worker.late = True  # (no compute time measured: admission takes the worker at up to twice its curve)
    for _ in range(20):  # (once 16 were counted, the second of a pair is turned away: also an answer)
        for outcome in await asyncio.gather(*(dispatcher.infer("v", {"x": X}, deadline(180)) for _ in range(2)),
                                            return_exceptions=True):
            assert isinstance(outcome, (DeadlineExceeded, Overloaded)), outcome
    worker.late, worker.answer = False, False
    held = [asyncio.create_task(dispatcher.infer("v", {"x": X}, deadline(1000))) for _ in range(2)]
    await asyncio.sleep(0)  # both sent
    with pytest.raises(Overloaded):
        await dispatcher.infer("v", {"x": X}, deadline(180))
    for t in held:
        with pytest.raises(DeadlineExceeded):
            await t


async def test_the_part_of_the_batch_under_way_since_the_workers_last_answer_is_not_waited_for_again(dispatcher):
    """Three requests went to the worker 0.5 s after its last answer: it has been computing them
    since, so of the 1.6 s they and a fourth take, 0.5 s is done, and a request with 1.3 s left
    is sent. Counted from scratch it would have been turned away."""
    worker = dispatcher.spawn("w", compute_us=400_000)
    dispatcher.apply_routing(table(WorkerRoute(worker_id="w", variants=("v",),
                                               latency_ms={"v": (400.0, 800.0, 1600.0)})))
    await reachable(dispatcher, "w")
    for _ in range(5):
        await dispatcher.infer("v", {"x": X}, deadline(5000))
    worker.answer = False
    held = [asyncio.create_task(dispatcher.infer("v", {"x": X}, deadline(3000))) for _ in range(3)]
    await asyncio.sleep(0.5)
    with pytest.raises(DeadlineExceeded):  # sent, not turned away; the held worker never answers
        await dispatcher.infer("v", {"x": X}, deadline(1300))
    assert dispatcher.counters["shed"] == 0
    for t in held:
        with pytest.raises(DeadlineExceeded):
            await t


async def test_a_worker_the_plan_runs_at_a_smaller_batch_still_has_requests_turned_away(dispatcher):
    """The plan capped this worker's batch at 2 (the model's is 4): it measured batches 1 and 2
    only, and the admission check predicts from those."""
    dispatcher.spawn("capped", answer=False)
    dispatcher.apply_routing(table(WorkerRoute(worker_id="capped", variants=("v",), max_batch={"v": 2},
                                               latency_ms={"v": (40.0, 80.0)})))
    await reachable(dispatcher, "capped")
    held = [asyncio.create_task(dispatcher.infer("v", {"x": X}, deadline(2000))) for _ in range(3)]
    while dispatcher.outstanding() < 3:
        await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await dispatcher.infer("v", {"x": X}, deadline(60))  # 4 queued: ~160 ms at 40 ms each past batch 2
    assert not any(t.done() for t in held)
    for t in held:
        with pytest.raises(DeadlineExceeded):
            await t


async def test_a_lost_worker_requests_go_once_to_another_worker(dispatcher):
    dispatcher.spawn("mute", answer=False)
    dispatcher.spawn("ok")
    dispatcher.apply_routing(table(WorkerRoute(worker_id="mute", variants=("v",), weights={"v": 0.99}),
                                   WorkerRoute(worker_id="ok", variants=("v",), weights={"v": 0.01})))
    await reachable(dispatcher, "mute", "ok")
    pending = asyncio.create_task(dispatcher.infer("v", {"x": X}, deadline(5000)))
    await asyncio.sleep(0.05)
    # The plan moves on without the mute worker: its request is retried on the other one.
    dispatcher.apply_routing(table(WorkerRoute(worker_id="ok", variants=("v",)), version=2))
    result = await asyncio.wait_for(pending, 5)
    assert result.worker_id == "ok" and dispatcher.counters["retries"] == 1


async def test_a_workers_error_reaches_the_caller_and_the_gateways_log(dispatcher, caplog):
    dispatcher.spawn("broken", error="input 'y' is missing")
    dispatcher.apply_routing(table(WorkerRoute(worker_id="broken", variants=("v",))))
    await reachable(dispatcher, "broken")
    with caplog.at_level(logging.ERROR, logger="gateway.dispatcher"):
        with pytest.raises(WorkerFailed, match="input 'y' is missing"):
            await dispatcher.infer("v", {"x": X}, deadline(5000))
    (record,) = [r for r in caplog.records if r.name == "gateway.dispatcher"]
    assert "broken" in record.getMessage() and "input 'y' is missing" in record.getMessage()
    assert dispatcher.outstanding() == 0


async def test_a_reply_after_the_deadline_is_ignored_and_the_request_answered_once(dispatcher):
    dispatcher.spawn("late", delay_s=0.3)
    dispatcher.apply_routing(table(WorkerRoute(worker_id="late", variants=("v",))))
    await reachable(dispatcher, "late")
    with pytest.raises(DeadlineExceeded):
        await dispatcher.infer("v", {"x": X}, deadline(50))
    until = time.monotonic() + 5
    while dispatcher.counters["late_replies_ignored"] < 1:
        assert time.monotonic() < until
        await asyncio.sleep(0.02)
    assert dispatcher.outstanding() == 0


async def test_a_blocked_event_loop_shows_as_loop_lag_until_it_runs_freely_again(dispatcher):
    await asyncio.sleep(0.1)
    time.sleep(0.3)  # a handler that holds the loop, as a saturated gateway's work does
    await asyncio.sleep(0.1)
    blocked = dispatcher.loop_lag_s()
    # The heartbeat timer was due every 50 ms; it woke at least 0.3 - 2 x 0.05 s late.
    assert blocked >= 0.2

    until = time.monotonic() + 10
    while dispatcher.loop_lag_s() >= blocked:  # 20 free wake-ups later the episode is forgotten
        assert time.monotonic() < until, "the loop lag kept its old worst after the loop ran freely"
        await asyncio.sleep(0.05)


async def test_a_loop_running_behind_takes_its_lag_off_the_time_a_request_has(dispatcher):
    w = dispatcher.spawn("w")
    dispatcher.apply_routing(table(WorkerRoute(worker_id="w", variants=("v",))))
    await reachable(dispatcher, "w")
    await dispatcher.infer("v", {"x": X}, deadline(1000))
    idle_budget = w.budgets[-1]
    for _ in range(25):  # a saturated gateway: every turn of its loop holds it for 80 ms
        time.sleep(0.08)
        await asyncio.sleep(0)
    behind = dispatcher.running_behind_s()
    assert behind >= 0.02
    # The worker is told the time left less the loop's lag: the answer waits that long to be written.
    await dispatcher.infer("v", {"x": X}, deadline(1000))
    assert w.budgets[-1] <= idle_budget - 0.5 * behind * 1e6
    # A request with less time left than the lag is turned away at once, whatever the queue.
    with pytest.raises(Overloaded, match="behind") as exc_info:
        await dispatcher.infer("v", {"x": X}, deadline(behind * 1e3 / 2))
    assert exc_info.value.retry_after_s > 0
    assert len(w.received) == 2
