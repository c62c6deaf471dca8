"""When the layout manager re-plans: noise margins, the dwell after a change, the wait while
agents rejoin. Pure rules, table and property tests."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.cadence import Cadence, Reason, moved, noise_rps, rose


@given(rate=st.floats(min_value=0.0, max_value=1e5), share=st.floats(min_value=-0.99, max_value=0.99))
def test_a_change_within_noise_is_never_a_move(rate: float, share: float) -> None:
    new = max(0.0, rate + share * noise_rps(rate))
    assert not moved({"v": rate}, {"v": new})
    assert not rose({"f": new}, {"f": rate})


@pytest.mark.parametrize(("planned", "target", "expected"), [
    (200.0, 260.0, True),  # +30 %: past 5 % and past three sigma (42 req/s)
    (200.0, 235.0, False),  # +17 %: more than 5 %, but within the noise of one-second counts
    (200.0, 150.0, True),  # -25 %
    (200.0, 175.0, False),  # -12 %: more than 10 %, within noise
    (5000.0, 5400.0, True),  # +8 %: at high rates 5 % is past noise
    (0.0, 20.0, True),  # a variant with no planned rate at all
    (1.0, 3.0, False),  # a floor variant's trickle
])
def test_hysteresis_needs_a_move_past_both_its_threshold_and_noise(planned, target, expected) -> None:
    assert moved({"v": planned}, {"v": target}) is expected


def test_a_rise_is_judged_against_what_the_plan_carries() -> None:
    assert rose({"cls": 4000.0}, {"cls": 2000.0})
    assert not rose({"cls": 2100.0}, {"cls": 2000.0})
    assert not rose({"cls": 55.0}, {"cls": 45.0}), "a noisy window at 30 req/s does not exceed the 1.5x plan"
    assert rose({"new": 30.0}, {})


def cadence(**times: float) -> Cadence:
    return Cadence(period_s=10.0, fast_s=1.0, dwell_s=30.0, settle_s=5.0, **times)


@pytest.mark.parametrize(("times", "flags", "expected"), [
    ({}, {"drifted": True}, Reason.DRIFT),
    ({"last_attempt": 95.0}, {"drifted": True}, Reason.NONE),  # within the period
    ({"last_attempt": 85.0, "last_change": 85.0}, {"drifted": True}, Reason.NONE),  # within the dwell
    ({"last_attempt": 85.0, "last_change": 69.0}, {"drifted": True}, Reason.DRIFT),
    ({"last_attempt": 85.0, "last_change": 85.0}, {"drifted": True, "failing": True}, Reason.DRIFT),  # misses
    ({"last_attempt": 99.5, "last_change": 99.5}, {"rising": True}, Reason.NONE),  # within fast_s
    ({"last_attempt": 98.0, "last_change": 98.0}, {"rising": True}, Reason.RISE),  # no dwell for a rise
    ({"last_attempt": 98.0, "last_change": 98.0}, {"stranded": True}, Reason.LOSS),  # nor for a loss
    ({"last_join": 97.0}, {"stranded": True, "rising": True}, Reason.WAIT),  # agents still rejoining
    ({"last_join": 94.0}, {"stranded": True}, Reason.LOSS),
    ({"last_join": 99.0, "last_change": 99.0}, {"stranded": True, "forced": True}, Reason.FORCED),
])
def test_which_reason_wins(times, flags, expected) -> None:
    flags = {"forced": False, "stranded": False, "rising": False, "drifted": False, "failing": False, **flags}
    assert cadence(**times).decide(100.0, **flags) is expected


def test_noise_is_three_sigma_of_a_one_second_poisson_count() -> None:
    assert noise_rps(100.0) == pytest.approx(30.0)
    assert noise_rps(0.0) == noise_rps(1.0) == pytest.approx(3.0)
    assert math.isfinite(noise_rps(1e9))
