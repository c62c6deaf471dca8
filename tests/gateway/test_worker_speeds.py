"""What the gateway measures of a worker's speed, which admission and the bandit predict with."""

from __future__ import annotations

from gateway.worker_speeds import MIN_OBSERVATIONS, WorkerSpeeds
from protocol.message import InferReply
from protocol.types import ReplyStatus


def curve(batch: int) -> float:
    return 10.0 * batch  # ms: a batch of n takes 10 n ms as profiled


def reply(compute_ms: float, batch: int = 1, variant: str = "m") -> InferReply:
    return InferReply(request_id=1, variant=variant, status=ReplyStatus.OK, compute_us=int(compute_ms * 1000),
                      batch_size=batch)


def test_a_worker_twice_as_slow_as_profiled_is_measured_so_once_it_answered_enough() -> None:
    speeds = WorkerSpeeds()
    for _ in range(MIN_OBSERVATIONS - 1):
        speeds.observe("w1", reply(20.0), curve)
    assert speeds.measured("w1", "m") is None  # too few replies: admission predicts from the profile
    for _ in range(40):
        speeds.observe("w1", reply(40.0, batch=2), curve)  # batch 2 profiled at 20 ms
    assert 1.8 < speeds.measured("w1", "m") < 2.2
    assert speeds.estimate("w1", "m").mean == speeds.measured("w1", "m")
    assert speeds.measured("w1", "other") is None


def test_replies_without_a_curve_or_a_compute_time_measure_nothing() -> None:
    speeds = WorkerSpeeds()
    for _ in range(10):
        speeds.observe("w1", reply(20.0), None)
        speeds.observe("w1", reply(0.0), curve)
    assert speeds.measured("w1", "m") is None
    assert speeds.estimate("w1", "m").mean == 1.0


def test_silence_counts_from_the_latest_reply_and_routing_changes_forget_departed_workers() -> None:
    speeds = WorkerSpeeds()
    assert speeds.silent_s("w1", now=5.0) == 0.0  # never answered: not counted as silent
    speeds.answered("w1", 5.0)
    speeds.answered("w2", 5.0)
    for _ in range(5):
        speeds.observe("w1", reply(30.0), curve)
        speeds.observe("w2", reply(30.0), curve)
    assert speeds.silent_s("w1", now=7.5) == 2.5
    speeds.keep({("w1", "m")}, {"w1"})
    assert speeds.measured("w1", "m") is not None
    assert speeds.measured("w2", "m") is None
    assert speeds.silent_s("w2", now=9.0) == 0.0
