"""Admission decisions: pure functions, checked case by case."""

from __future__ import annotations

import pytest

from gateway.admission import SPEED_FLOOR, admit, predicted_finish_s, running_behind_s, speed_factor
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


def test_the_measured_speed_is_trusted_between_half_the_curve_and_the_curve() -> None:
    assert speed_factor(0.8) == pytest.approx(0.8)
    assert speed_factor(0.1) == SPEED_FLOOR == 0.5  # never faster than half the curve
    assert speed_factor(7.0) == 1.0  # a busy host's swings do not turn requests away
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
