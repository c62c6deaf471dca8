"""Demand against the plan in place, without a layout manager: which named variants call for a
plan, what a plan is sized on, and which missed deadlines judge it. Real registry and demand
tracker; time is passed in."""

from __future__ import annotations

import pytest

from controller.demand import DemandTracker
from controller.layout_policy import LayoutPolicy
from controller.plan_demand import NAMED_MIN_RPS, PlanDemand
from controller.registry import Registry
from tests.controller.test_layout_manager import ACCURACY, variant


@pytest.fixture
def view():
    registry = Registry({n: variant(n) for n in ACCURACY}, heartbeat_interval_s=1.0, missed_heartbeats=1000)
    demand, named = DemandTracker(half_life_s=1.0, history_s=30.0), DemandTracker(half_life_s=1.0, history_s=30.0)
    return PlanDemand(LayoutPolicy(replan_period_s=10.0), registry, demand, named), demand, named


def test_a_named_variant_without_a_worker_calls_for_a_plan_once(view) -> None:
    plan, _, named = view
    for t in range(1, 4):
        named.observe({"cls-small": 5}, 1.0, float(t), source="gw")
    assert plan.named_unplaced() == ["cls-small"], "named, no plan has heard of it, no worker"
    plan.planning({"cls-large": 10.0}, plan.named_rates())
    assert plan.named_unplaced() == [], "a plan made knowing of it (placed or not) is not re-made for it"
    plan.planning({"cls-large": 10.0}, {})
    plan.applied(None, frozenset({"cls-small", "cls-large"}))
    assert plan.named_unplaced() == [], "a worker serves it"


def test_a_name_seen_long_ago_is_not_named_demand(view) -> None:
    plan, _, named = view
    named.observe({"cls-small": 1}, 1.0, 1.0, source="gw")
    for t in range(2, 6):  # four quiet seconds: four half-lives
        named.observe({}, 1.0, float(t), source="gw")
    assert 0 < named.rates().get("cls-small", 0.0) < NAMED_MIN_RPS
    assert plan.named_rates() == {} and plan.named_unplaced() == []


def test_a_plan_is_sized_on_the_forecast_only_when_demand_rises(view) -> None:
    plan, demand, _ = view
    for t, n in enumerate([10, 10, 10, 10, 40, 80], start=1):
        demand.observe({"cls-large": n}, 1.0, float(t), source="gw")
    forecast, family = plan.observe(6.0)
    assert family["cls"] == pytest.approx(sum(forecast.values()))
    assert forecast["cls-large"] > demand.target()["cls-large"], "a ramp: the forecast runs ahead"
    assert plan.target(forecast, rising=False) == demand.target()
    assert plan.target(forecast, rising=True)["cls-large"] == pytest.approx(forecast["cls-large"])


def test_misses_judge_only_the_plan_made_before_them(view) -> None:
    plan, demand, _ = view
    for t in range(1, 4):
        demand.observe({"cls-large": 100}, 1.0, float(t), source="gw", missed={"cls-large": 10})
    assert plan.failing(), "10 % missed, past the 1 % target"
    before = plan.headroom.beta
    plan.judge_from(3.5)
    assert plan.headroom.beta > before, "a plan made now gets more headroom for the misses"
    assert not plan.failing(), "misses before the new plan do not judge it"
    demand.observe({"cls-large": 100}, 1.0, 4.0, source="gw")
    assert not plan.failing()
