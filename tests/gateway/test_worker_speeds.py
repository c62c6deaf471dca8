"""What the gateway measures of a worker's speed, which admission and the bandit predict with."""

from __future__ import annotations

import pytest

from gateway.worker_speeds import MIN_OBSERVATIONS, OVERRUN_MIN, PACE_MIN_ROWS, PACE_WINDOW_S, WorkerSpeeds
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
        speeds.observe("w1", reply(20.0), curve, 0.0)
    assert speeds.measured("w1", "m", 0.0) is None  # too few replies: admission predicts from the profile
    for _ in range(40):
        speeds.observe("w1", reply(40.0, batch=2), curve, 0.0)  # batch 2 profiled at 20 ms
    assert 1.8 < speeds.measured("w1", "m", 0.0) < 2.2
    assert speeds.estimate("w1", "m", 0.0).mean == speeds.measured("w1", "m", 0.0)
    assert speeds.measured("w1", "other", 0.0) is None


def test_what_was_measured_of_a_worker_sent_nothing_since_returns_to_its_profile() -> None:
    """w1 answered three times slower than profiled, then nothing of "m" reached it: a few seconds
    on, admission and the choosers still count on the slowdown; half a minute on, on the profile.
    w2, answering all along at the same slowdown, stays measured so."""
    speeds = WorkerSpeeds()
    for t in range(10):
        speeds.observe("w1", reply(30.0), curve, float(t))
        speeds.observe("w2", reply(30.0), curve, float(t))
    assert speeds.measured("w1", "m", 10.0) == pytest.approx(3.0, rel=0.05)
    assert speeds.estimate("w1", "m", 10.0).mean == pytest.approx(3.0, rel=0.05)
    for t in range(10, 40):
        speeds.observe("w2", reply(30.0), curve, float(t))
    assert speeds.measured("w1", "m", 40.0) == pytest.approx(1.0, rel=0.05)
    assert speeds.estimate("w1", "m", 40.0).mean == pytest.approx(1.0, rel=0.05)
    assert speeds.measured("w2", "m", 40.0) == pytest.approx(3.0, rel=0.05)


def test_replies_without_a_curve_or_a_compute_time_measure_nothing() -> None:
    speeds = WorkerSpeeds()
    for _ in range(10):
        speeds.observe("w1", reply(20.0), None, 0.0)
        speeds.observe("w1", reply(0.0), curve, 0.0)
    assert speeds.measured("w1", "m", 0.0) is None
    assert speeds.estimate("w1", "m", 0.0).mean == 1.0


def test_silence_counts_from_the_latest_reply_and_routing_changes_forget_departed_workers() -> None:
    speeds = WorkerSpeeds()
    assert speeds.silent_s("w1", now=5.0) == 0.0  # never answered: not counted as silent
    speeds.answered("w1", 5.0)
    speeds.answered("w2", 5.0)
    for _ in range(5):
        speeds.observe("w1", reply(30.0), curve, 0.0)
        speeds.observe("w2", reply(30.0), curve, 0.0)
    assert speeds.silent_s("w1", now=7.5) == 2.5
    speeds.keep({("w1", "m")}, {"w1"})
    assert speeds.measured("w1", "m", 0.0) is not None
    assert speeds.measured("w2", "m", 0.0) is None
    assert speeds.silent_s("w2", now=9.0) == 0.0


def test_the_pace_counts_the_time_between_replies_while_requests_waited_on_the_worker() -> None:
    speeds = WorkerSpeeds()
    speeds.answered("w1", 0.0, rows=1, sent=-0.01, waiting=8)
    t = 0.0
    for _ in range(PACE_MIN_ROWS // 4 - 1):  # batches of 4 rows every 12 ms: 3 ms a row
        t += 0.012
        for i in range(4):
            speeds.answered("w1", t, rows=1, sent=-0.01, waiting=8 - i)
    assert speeds.s_per_row("w1", t) is None  # too few rows yet
    t += 0.012
    for i in range(4):
        speeds.answered("w1", t, rows=1, sent=-0.01, waiting=8 - i)
    assert speeds.s_per_row("w1", t) == pytest.approx(0.003)
    assert speeds.s_per_row("w2", t) is None
    # Past the window the busy spell says nothing of the worker now.
    assert speeds.s_per_row("w1", t + PACE_WINDOW_S + 0.1) is None


def test_an_idle_spell_or_replies_of_requests_not_run_do_not_slow_the_pace() -> None:
    speeds = WorkerSpeeds()
    t = 0.0
    speeds.answered("w1", t, rows=1, sent=t - 0.01, waiting=0)
    for _ in range(PACE_MIN_ROWS):
        t += 1.0  # idle between requests: each answered with nothing else out
        speeds.answered("w1", t, rows=1, sent=t - 0.002, waiting=0)
    assert speeds.s_per_row("w1", t) is None
    # Requests left waiting but gone unanswered here (their deadline passed): the next reply's
    # span counts from its own sending, not from the reply before the idle spell.
    speeds.answered("w1", t, rows=1, sent=t - 0.002, waiting=3)
    for _ in range(PACE_MIN_ROWS):
        t += 0.1  # within the window: the idle spells between are not the worker's time
        speeds.answered("w1", t, rows=1, sent=t - 0.002, waiting=1)
    assert speeds.s_per_row("w1", t) == pytest.approx(0.002)
    # Replies of requests the worker dropped unrun bring no rows: their time is the others'.
    speeds.answered("w1", t + 0.001, rows=0, sent=t - 0.01, waiting=1)
    assert speeds.s_per_row("w1", t + 0.001) > 0.002


def test_a_departed_workers_pace_is_forgotten() -> None:
    speeds = WorkerSpeeds()
    for i in range(PACE_MIN_ROWS + 1):
        speeds.answered("w1", i * 0.002, rows=1, sent=-1.0, waiting=5)
    assert speeds.s_per_row("w1", PACE_MIN_ROWS * 0.002) == pytest.approx(0.002)
    speeds.keep(set(), set())
    assert speeds.s_per_row("w1", PACE_MIN_ROWS * 0.002) is None


def test_answers_later_than_predicted_are_kept_in_hand_at_their_ninetieth_percentile() -> None:
    speeds = WorkerSpeeds()
    for i in range(OVERRUN_MIN - 1):
        speeds.overran("w1", 0.01 * i, 0.05)  # 50 ms late
    assert speeds.margin_s("w1", 0.2) == 0.0  # too few answers yet
    for i in range(OVERRUN_MIN + 1, 101):  # 100 in all, late by 1 to 100 ms in turn
        speeds.overran("w1", 0.2 + 0.001 * i, i / 1000)
    speeds.overran("w1", 0.31, 0.016)
    # Of 15 late by 50 ms and one each by 16 to 100 ms, the tenth from the top: 91 ms.
    assert speeds.margin_s("w1", 0.31) == pytest.approx(0.091)
    assert speeds.margin_s("w2", 0.31) == 0.0
    # Past the window they say nothing of the worker now.
    assert speeds.margin_s("w1", 0.31 + PACE_WINDOW_S + 0.1) == 0.0


def test_answers_earlier_than_predicted_keep_nothing_in_hand_and_a_departed_worker_is_forgotten() -> None:
    speeds = WorkerSpeeds()
    for i in range(2 * OVERRUN_MIN):
        speeds.overran("w1", 0.01 * i, -0.02)  # each 20 ms early
    assert speeds.margin_s("w1", 0.4) == 0.0  # never below zero: admission stays as optimistic as it was
    for i in range(2 * OVERRUN_MIN):
        speeds.overran("w2", 0.01 * i, 0.03)
    assert speeds.margin_s("w2", 0.4) == pytest.approx(0.03)
    speeds.keep(set(), {"w1"})
    assert speeds.margin_s("w2", 0.4) == 0.0
