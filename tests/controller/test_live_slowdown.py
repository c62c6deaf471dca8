"""The slowdown the planners apply: what workers measure against their warm-up, corrected to the
stored profile, per variant and device kind, held after its workers leave."""

from __future__ import annotations

import pytest

from controller.live_slowdown import LiveSlowdown, Observation
from controller.planning import ProfilePoint, ProfileTable

TABLE = ProfileTable([
    ProfilePoint(variant=v, device_kind="cpu", partition=1, batch=b, p50_ms=ms * b, p99_ms=ms * b * 1.1)
    for v, ms in (("large", 10.0), ("small", 1.0)) for b in (1, 2, 4)
])


def test_a_worker_that_warmed_up_slow_and_runs_slower_still_counts_both() -> None:
    live = LiveSlowdown()
    # warmed up at 15 ms where the profile says 10, and its batches now take 2x its warm-up
    live.update([Observation("large", "cpu", 1, ratio=2.0, warmup_ms=15.0)], now=0.0)
    assert live.factors(TABLE, ["large"], ["cpu"]) == {("large", "cpu"): pytest.approx(3.0)}


def test_workers_of_a_variant_average_and_a_variant_nobody_runs_gets_its_kinds_mean() -> None:
    live = LiveSlowdown()
    live.update([Observation("large", "cpu", 1, ratio=1.5, warmup_ms=10.0),
                 Observation("large", "cpu", 1, ratio=2.5, warmup_ms=10.0)], now=0.0)
    factors = live.factors(TABLE, ["large", "small"], ["cpu", "cuda"])
    assert factors == {("large", "cpu"): pytest.approx(2.0), ("small", "cpu"): pytest.approx(2.0)}
    # nothing measured on cuda: the planner keeps the profile there


def test_figures_are_held_after_their_workers_leave_then_dropped() -> None:
    live = LiveSlowdown(hold_s=30.0)
    live.update([Observation("large", "cpu", 1, ratio=2.0, warmup_ms=0.0)], now=0.0)
    live.update([Observation("small", "cpu", 1, ratio=1.2, warmup_ms=1.0)], now=20.0)  # large retired
    assert live.factors(TABLE, ["large"], ["cpu"]) == {("large", "cpu"): pytest.approx(2.0)}
    live.update([Observation("small", "cpu", 1, ratio=1.2, warmup_ms=1.0)], now=31.0)
    assert live.factors(TABLE, ["large"], ["cpu"]) == {("large", "cpu"): pytest.approx(1.2)}  # small's, for the kind


def test_factors_are_bounded_and_nonsense_ratios_ignored() -> None:
    live = LiveSlowdown(high=4.0)
    live.update([Observation("large", "cpu", 1, ratio=50.0, warmup_ms=10.0),
                 Observation("small", "cpu", 1, ratio=0.0, warmup_ms=1.0)], now=0.0)
    assert live.factors(TABLE, ["large", "small"], ["cpu"]) == {("large", "cpu"): 4.0, ("small", "cpu"): 4.0}


def test_running_faster_than_profiled_is_not_planned_for_by_default() -> None:
    live = LiveSlowdown()
    live.update([Observation("large", "cpu", 1, ratio=0.9, warmup_ms=5.0)], now=0.0)  # half the profile's time
    assert live.factors(TABLE, ["large"], ["cpu"]) == {("large", "cpu"): 1.0}
    trusting = LiveSlowdown(low=0.25)
    trusting.update([Observation("large", "cpu", 1, ratio=0.9, warmup_ms=5.0)], now=0.0)
    assert trusting.factors(TABLE, ["large"], ["cpu"]) == {("large", "cpu"): pytest.approx(0.45)}
