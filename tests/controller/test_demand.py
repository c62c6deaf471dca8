"""Smoothed demand, planning targets with headroom, and re-plan hysteresis."""

from __future__ import annotations

import pytest

from controller.demand import DemandTracker, replan_due


def feed(tracker: DemandTracker, rate: float, seconds: int, start: float = 0.0, variant: str = "v") -> float:
    now = start
    for _ in range(seconds):
        now += 1.0
        tracker.observe({variant: int(rate)}, 1.0, now)
    return now


def test_rate_converges_to_a_steady_demand() -> None:
    tracker = DemandTracker(half_life_s=2.0)
    feed(tracker, 100, 30)
    assert tracker.rates()["v"] == pytest.approx(100, rel=0.01)


def test_reports_from_two_gateways_in_one_window_add_up() -> None:
    tracker = DemandTracker(half_life_s=2.0)
    now = 0.0
    for _ in range(30):
        now += 1.0
        tracker.observe({"v": 40}, 1.0, now)
        tracker.observe({"v": 60}, 1.0, now)
    assert tracker.rates()["v"] == pytest.approx(100, rel=0.02)


def test_target_has_headroom_over_the_recent_peak() -> None:
    tracker = DemandTracker(half_life_s=1.0, history_s=10.0)
    now = feed(tracker, 100, 20)
    assert tracker.target()["v"] == pytest.approx(150, rel=0.02)  # x1.5 below 125 req/s
    now = feed(tracker, 10, 5, start=now)
    assert tracker.target()["v"] == pytest.approx(150, rel=0.02)  # the peak is still in the window
    feed(tracker, 10, 20, start=now)
    assert tracker.target()["v"] == pytest.approx(15, rel=0.05)
    big = DemandTracker(half_life_s=1.0)
    feed(big, 1000, 20)
    assert big.target()["v"] == pytest.approx(1200, rel=0.02)  # x1.2 above


@pytest.mark.parametrize("planned, target, due", [
    ({"v": 100}, {"v": 104}, False),
    ({"v": 100}, {"v": 112}, True),  # > 10 req/s
    ({"v": 1000}, {"v": 1008}, False),  # < 5 % and < 10 req/s
    ({"v": 100}, {"v": 106}, True),  # > 5 %
    ({"v": 100}, {"v": 92}, False),
    ({"v": 100}, {"v": 85}, True),  # fell > 10 %
    ({}, {"v": 1}, True),  # a new variant
    ({"v": 5}, {}, True),  # demand gone
])
def test_replan_hysteresis(planned, target, due) -> None:
    assert replan_due(planned, target) is due
