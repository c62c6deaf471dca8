"""Smoothed demand, planning targets with headroom, and re-plan hysteresis."""

from __future__ import annotations

import pytest

from controller.demand import DemandTracker, PeakWindow, replan_due


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


def test_reports_from_two_gateways_add_up_whenever_they_arrive() -> None:
    tracker = DemandTracker(half_life_s=2.0)
    now = 0.0
    for _ in range(30):
        now += 1.0
        tracker.observe({"v": 40}, 1.0, now, source="gw-a")
        tracker.observe({"v": 60}, 1.0, now + 0.4, source="gw-b")  # staggered: not the same instant
    assert tracker.rates()["v"] == pytest.approx(100, rel=0.02)
    assert tracker.forecast(2.0)["v"] == pytest.approx(100, rel=0.02)
    assert tracker.target()["v"] == pytest.approx(150, rel=0.03)


def test_a_variant_a_gateway_stops_reporting_decays_to_nothing() -> None:
    tracker = DemandTracker(half_life_s=1.0)
    now = feed(tracker, 100, 10)
    for _ in range(20):
        now += 1.0
        tracker.observe({"other": 5}, 1.0, now)  # "v" no longer in the reports: it had no requests
    assert "v" not in tracker.rates() or tracker.rates()["v"] < 0.01


def test_a_silent_gateway_stops_counting() -> None:
    tracker = DemandTracker(half_life_s=1.0, stale_s=5.0)
    tracker.observe({"v": 50}, 1.0, 1.0, source="gone")
    now = 1.0
    for _ in range(10):
        now += 1.0
        tracker.observe({"v": 20}, 1.0, now, source="alive")
    assert tracker.rates()["v"] == pytest.approx(20, rel=0.01)


def test_forecast_extrapolates_a_rise_but_not_a_fall() -> None:
    tracker = DemandTracker(half_life_s=5.0, trend_s=2.0)
    now = feed(tracker, 100, 20)
    for rate in (150, 200, 250):  # +50 req/s every second
        now += 1.0
        tracker.observe({"v": rate}, 1.0, now)
    assert tracker.rates()["v"] < 200  # the smoothed rate lags the rise
    assert tracker.forecast(0.0)["v"] == pytest.approx(250)  # at least the latest window
    assert tracker.forecast(2.0)["v"] == pytest.approx(350)  # + 50 req/s/s for 2 s
    for rate in (200, 100, 50):
        now += 1.0
        tracker.observe({"v": rate}, 1.0, now)
    smoothed = tracker.rates()["v"]
    assert smoothed > 100
    assert tracker.forecast(2.0)["v"] == pytest.approx(smoothed)  # a fall: the smoothed rate, no extrapolation


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


def test_forecast_reads_the_last_second_of_short_windows_not_the_last_window() -> None:
    tracker = DemandTracker(half_life_s=2.0, recent_s=1.0, trend_s=2.0)
    now = 0.0
    for i in range(119):  # a gateway reporting every 0.25 s, ending on a busy window: 100 req/s, counts alternating 15 and 35
        now += 0.25
        tracker.observe({"v": 15 if i % 2 else 35}, 0.25, now)
    assert tracker.forecast(2.0)["v"] == pytest.approx(100, rel=0.02)  # one window alone says 60 or 140


def test_deadline_misses_add_up_over_gateways_since_a_given_time() -> None:
    demand = DemandTracker(half_life_s=1.0, history_s=10.0)
    demand.observe({"a": 100, "b": 50}, 1.0, 1.0, source="gw1", missed={"a": 10})
    demand.observe({"a": 100}, 1.0, 1.5, source="gw2", missed={"a": 5})
    demand.observe({"a": 100}, 1.0, 2.0, source="gw1")
    assert demand.outcomes_since(0.0) == (350, 15)
    assert demand.outcomes_since(1.2) == (200, 5)
    demand.observe({"a": 10}, 1.0, 20.0, source="gw1", missed={"a": 1})
    assert demand.outcomes_since(0.0) == (10, 1)  # older than history_s is gone


def test_names_outside_the_repository_and_absurd_reports_are_dropped_and_counted() -> None:
    tracker = DemandTracker(half_life_s=1.0)
    tracker.known = frozenset({"v"})
    invented = {f"made-up-{i}": 1 for i in range(4096)}
    for t in range(1, 6):
        tracker.observe({"v": 10, **invented}, 1.0, float(t), source="gw")
    assert set(tracker.rates()) == {"v"} and set(tracker.target()) == {"v"}
    assert tracker.rejected == 5 * 4096
    for window, counts in ((float("nan"), {"v": 1}), (float("inf"), {"v": 1}), (1e9, {"v": 1}),
                           (1.0, {"v": -5}), (1.0, {"v": 1 << 50})):
        tracker.observe(counts, window, 6.0, source="gw")
    assert tracker.rejected == 5 * 4096 + 5
    assert tracker.rates()["v"] == pytest.approx(10, rel=0.1)


def test_a_gateway_silent_past_the_history_is_forgotten() -> None:
    tracker = DemandTracker(half_life_s=1.0, history_s=10.0)
    for i in range(100):
        tracker.observe({"v": 1}, 1.0, 1.0, source=f"gw-{i}")
    tracker.observe({"v": 1}, 1.0, 20.0, source="gw-live")
    assert {src for src, _ in tracker._streams} == {"gw-live"}


def test_a_peak_window_keeps_the_highest_rate_of_its_span() -> None:
    w = PeakWindow(span_s=3.0)
    w.observe(0.0, {"f": 100.0})
    w.observe(1.0, {"f": 40.0, "g": 5.0})
    assert w.peak() == {"f": 100.0, "g": 5.0}
    w.observe(3.5, {"f": 60.0})  # the 100 at t=0 is older than the span
    assert w.peak() == {"f": 60.0, "g": 5.0}
