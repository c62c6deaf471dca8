"""Admission decisions: pure functions, checked case by case."""

from __future__ import annotations

import pytest

from gateway.admission import (
    SPEED_CEILING,
    SPEED_FLOOR,
    TRUST_SLOW_MS,
    admit,
    predicted_finish_s,
    running_behind_s,
    speed_factor,
    timed_against,
)
from mesh.latency import LatencyCurve


def test_an_idle_loop_is_not_behind_and_one_slow_turn_does_not_make_it_so() -> None:
    assert running_behind_s([]) == 0.0
    assert running_behind_s([0.001] * 19 + [0.5]) == pytest.approx(0.001)
    assert running_behind_s([0.08] * 11 + [0.0] * 9) == pytest.approx(0.08)


def test_the_prediction_follows_the_workers_curve_at_its_measured_speed() -> None:
    curve = LatencyCurve((1, 2, 3), (10.0, 15.0, 20.0))  # ms
    assert predicted_finish_s(None, 5, 1.0) is None
    assert predicted_finish_s(curve, 0, 1.0) == pytest.approx(0.010)
    assert predicted_finish_s(curve, 2, 1.0) == pytest.approx(0.020)
    assert predicted_finish_s(curve, 2, 0.6) == pytest.approx(0.012)  # measured faster than its curve
    assert predicted_finish_s(curve, 2, 2.0) == pytest.approx(0.040)  # a 10 ms batch running at half speed


def test_the_prediction_counts_rows_so_a_request_of_many_waits_as_long_as_they_take() -> None:
    curve = LatencyCurve((1, 8, 32), (1.0, 4.0, 11.0))  # ms
    assert predicted_finish_s(curve, 0, 1.0, rows=32) == pytest.approx(0.011)
    # Three requests of 32 rows ahead: 128 rows in all, per-row linear past 32.
    assert predicted_finish_s(curve, 96, 1.0, rows=32) == pytest.approx(0.011 * 4, rel=0.05)
    assert predicted_finish_s(curve, 3, 1.0) == pytest.approx(curve(4) / 1e3)


def test_the_batch_a_worker_has_been_computing_counts_as_that_far_along() -> None:
    per_row = LatencyCurve((1, 2, 4, 8), (10.0, 20.0, 40.0, 80.0))  # ms: batching saves nothing
    assert predicted_finish_s(per_row, 4, 1.0, busy_s=0.0) == pytest.approx(0.050)
    assert predicted_finish_s(per_row, 4, 1.0, busy_s=0.015) == pytest.approx(0.035)
    assert predicted_finish_s(per_row, 4, 1.0, busy_s=5.0) == pytest.approx(0.010)  # at most the 4 under way
    assert predicted_finish_s(per_row, 12, 1.0, busy_s=5.0) == pytest.approx(0.050)  # at most its largest batch
    assert predicted_finish_s(per_row, 4, 2.0, busy_s=0.015) == pytest.approx(0.085)  # at the measured pace
    assert predicted_finish_s(per_row, 0, 1.0, busy_s=5.0) == pytest.approx(0.010)  # nothing under way


def test_a_fast_models_slowdown_is_not_believed_and_a_slow_models_is() -> None:
    fast = LatencyCurve((1, 8), (0.4, 1.5))  # ms: a busy host's descheduling alone doubles these
    assert predicted_finish_s(fast, 7, 3.0) == pytest.approx(0.0015)
    slow = LatencyCurve((1, 8), (5.0, 20.0))
    assert predicted_finish_s(slow, 7, 3.0) == pytest.approx(0.060)


def test_a_queue_drains_at_the_pace_the_worker_answered_at_where_that_is_slower_than_its_curve() -> None:
    """A 1.5 ms-a-row model whose core is shared with its gateway: its queue goes at the 3 ms a row
    the worker answered at, though the model alone is as fast as profiled (a fast model's compute
    slowdown is not believed, so nothing else would show it)."""
    curve = LatencyCurve((1, 8), (1.5, 12.0))  # ms
    assert predicted_finish_s(curve, 15, 1.0) == pytest.approx(0.024)
    assert predicted_finish_s(curve, 15, 1.0, s_per_row=0.003) == pytest.approx(0.048)
    # What is under way since the last answer is credited, up to the largest batch, at that pace.
    assert predicted_finish_s(curve, 15, 1.0, busy_s=0.006, s_per_row=0.003) == pytest.approx(0.042)
    assert predicted_finish_s(curve, 15, 1.0, busy_s=1.0, s_per_row=0.003) == pytest.approx(0.024)
    # A pace faster than the curve changes nothing, and nothing ahead is the request's own time.
    assert predicted_finish_s(curve, 15, 1.0, s_per_row=0.0005) == pytest.approx(0.024)
    assert predicted_finish_s(curve, 0, 1.0, s_per_row=0.003) == pytest.approx(0.0015)


def test_the_measured_speed_is_trusted_within_bounds_that_depend_on_the_models_cost() -> None:
    assert speed_factor(0.8) == pytest.approx(0.8)
    assert speed_factor(0.1) == SPEED_FLOOR == 0.5  # never faster than half the curve
    assert speed_factor(7.0) == 1.0  # a fast model's swings on a busy host do not turn requests away
    assert speed_factor(7.0, single_ms=TRUST_SLOW_MS) == SPEED_CEILING == 4.0  # a slow model's are its pace
    assert speed_factor(1.8, single_ms=TRUST_SLOW_MS) == pytest.approx(1.8)
    assert speed_factor(1.8, single_ms=TRUST_SLOW_MS * 0.9) == 1.0
    assert speed_factor(0.7, single_ms=50.0) == pytest.approx(0.7)
    assert speed_factor(None, single_ms=50.0) == SPEED_FLOOR
    assert speed_factor(None) == SPEED_FLOOR  # not measured yet: the optimistic end
    assert speed_factor(float("nan")) == SPEED_FLOOR


@pytest.mark.parametrize(
    ("finish_s", "remaining_s", "ahead", "behind_s", "admitted"),
    [
        (None, 0.1, 10, 0.0, True),  # no curve: nothing to predict from
        (1.0, 0.1, 0, 0.0, True),  # nothing queued: the worker takes it at once
        (0.09, 0.1, 3, 0.0, True),  # the prediction fits
        (0.15, 0.1, 3, 0.0, False),  # it misses
        (0.09, 0.1, 3, 0.04, False),  # fits the deadline, not once the loop's lag is taken off
        (None, 0.05, 0, 0.06, False),  # the loop alone is further behind than the time left
        (None, 0.05, 0, 0.04, True),
    ],
)
def test_a_request_is_turned_away_only_when_it_cannot_be_answered_in_time(
    finish_s, remaining_s, ahead, behind_s, admitted
) -> None:
    wait_s = admit(finish_s, remaining_s, ahead, behind_s)
    assert (wait_s is None) == admitted
    if not admitted:
        assert wait_s > 0


def test_what_answers_lately_overran_their_predictions_by_is_kept_in_hand() -> None:
    """Predicted at 40 ms of the 50 left, a request is sent; when answers lately came 15 ms later
    than predicted, it is turned away, told to come back once those 5 ms have passed. With nothing
    waiting ahead it is sent all the same: its worker is idle."""
    assert admit(0.040, 0.050, ahead=3) is None
    assert admit(0.040, 0.050, ahead=3, margin_s=0.015) == pytest.approx(0.005)
    assert admit(0.040, 0.050, ahead=0, margin_s=0.015) is None
    assert admit(0.030, 0.050, ahead=3, behind_s=0.005, margin_s=0.015) is None


def test_only_requests_sent_with_less_than_twice_their_predicted_time_to_spare_are_timed() -> None:
    """Their overruns are the ones the margin is for: a request predicted at 10 ms of the 100 it
    has left is not timed, one at 60 ms is (due 60 ms from now), and one with nothing ahead, or no
    prediction, never is."""
    assert timed_against(5.0, 0.010, 0.100, ahead=3) == 0.0
    assert timed_against(5.0, 0.060, 0.100, ahead=3) == pytest.approx(5.060)
    assert timed_against(5.0, 0.060, 0.100, ahead=0) == 0.0
    assert timed_against(5.0, None, 0.100, ahead=3) == 0.0
