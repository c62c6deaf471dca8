"""The layout manager's accuracy scaling: it plans for the demand forecast with the configured
headroom and the slowdown workers measure, re-plans within a second of a rise (even while the
last move is starting), and lets a fall wait for the period. Real registry, SQLite store, demand
tracker and MILP; commands are returned, not sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.demand import DemandTracker
from controller.layout_manager import LayoutManager, LayoutPolicy
from controller.placement import PlannedWorker
from controller.registry import Registry
from controller.repository import Variant
from controller.store import StateStore
from protocol.message import StopWorker
from protocol.types import DeviceInfo, Partition, ProfileSample

ACCURACY = {"cls-large": 0.95, "cls-small": 0.80}
SINGLE_MS = {"cls-large": 10.0, "cls-small": 2.0}  # one core, batch 1; SLO 100 ms
BATCHES = (1, 2, 4, 8, 16, 32)


def variant(name: str) -> Variant:
    return Variant(name=name, family="cls", version="1", backend="torchscript", accuracy=ACCURACY[name], max_batch=32,
                   default_slo_ms=100.0, energy_j=0.0, inputs=(), outputs=(), artifact=Path("/nonexistent"),
                   sha256="0" * 64, size_bytes=1, profile_ms={})


def samples() -> list[ProfileSample]:
    out = []
    for name, ms in SINGLE_MS.items():
        for cores in (1, 2, 3, 4):
            for b in BATCHES:
                p50 = ms * b ** 0.8 / cores ** 0.9
                out.append(ProfileSample(variant=name, device_kind="cpu", partition=cores, batch=b, p50_ms=p50,
                                         p99_ms=p50 * 1.05, runs=5))
    return out


def start_command(plan: PlannedWorker) -> PlannedWorker:
    return plan  # the command the actor would build; what was asked for is all these tests read


@pytest.fixture
def manager(tmp_path):
    store = StateStore(tmp_path / "state.db")
    store.save_profiles(samples(), [], now=0.0)
    registry = Registry({n: variant(n) for n in ACCURACY}, heartbeat_interval_s=1.0, missed_heartbeats=1000)
    registry.agent_registered("a0", "host", (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=4, memory_bytes=8 << 30),), now=0.0)
    demand = DemandTracker(half_life_s=5.0, history_s=5.0)
    settings = LayoutPolicy(replan_period_s=10.0, fast_replan_s=1.0, scaling_beta=1.2, scaling_horizon_s=2.0,
                            start_timeout_s=1e9, live_slowdown_hold_s=30.0)
    m = LayoutManager(settings, registry, store, demand, start_command, generation=1)
    yield m, demand, registry
    store.close()


def report(demand: DemandTracker, rates: list[float], now: float) -> float:
    """One gateway's 1-s reports of these rates, one a second after ``now``; the last time."""
    for rate in rates:
        now += 1.0
        demand.observe({"cls-large": round(rate)}, 1.0, now, source="gw")
    return now


def test_overload_is_planned_for_the_forecast_with_the_configured_headroom(manager) -> None:
    m, demand, registry = manager
    now = report(demand, [200] * 20, 0.0)
    m.tick(now)
    capacity_large = 4 * 1000 / (SINGLE_MS["cls-large"] * 1.05 * 1.1)  # every core on cls-large at batch 1, roughly
    assert m.scaled is None, "200 req/s fits at full accuracy"
    m.transition = None  # as if the moves had finished
    # demand rises by 600 req/s a second, far past what cls-large carries on the device
    now = report(demand, [800, 1400, 2000], now)
    smoothed = demand.rates()["cls-large"]
    forecast = demand.forecast(2.0)["cls-large"]
    assert forecast > 2000 > smoothed  # the latest window plus the rise, not the lagging smoothed rate
    assert forecast > capacity_large
    m.tick(now)
    assert m.scaled is not None, "a rise past full-accuracy capacity re-plans with accuracy scaling"
    assert m.scaled.demand["cls"] == pytest.approx(forecast)
    assert m.scaled.plan.beta <= 1.2 + 1e-9
    fractions = registry.family_fractions["cls"]
    assert fractions.get("cls-small", 0.0) > 0  # the cheap variant carries part of the family


def test_a_rise_replans_within_a_second_and_a_fall_waits_for_the_period(manager) -> None:
    m, demand, _ = manager
    now = report(demand, [2000] * 20, 0.0)
    m.tick(now)
    assert m.scaled is not None
    planned = m.scaled.demand["cls"]
    m.transition = None  # as if the moves had finished
    now = report(demand, [3000], now)  # +50 %
    m.tick(now)
    assert m.scaled.demand["cls"] > planned, "a rise re-plans after one second"
    raised = m.scaled.demand["cls"]
    m.transition = None
    for _ in range(5):  # falls for five seconds: no re-plan before the period
        now = report(demand, [1000], now)
        m.tick(now)
        assert m.scaled.demand["cls"] == raised


def test_a_jump_while_the_last_move_is_starting_plans_again_at_once(manager) -> None:
    m, demand, registry = manager
    now = report(demand, [200] * 20, 0.0)
    m.tick(now)
    first = m.transition
    assert first is not None and m.scaled is None  # starting workers for 200 req/s at full accuracy
    started = {w.worker_id for w in first.new}
    now = report(demand, [2000, 2000], now)  # none of them is up yet when demand jumps tenfold
    commands = m.tick(now)
    assert m.transition is not first, "the move sized for the old demand does not have to finish first"
    assert m.scaled is not None and registry.family_fractions["cls"].get("cls-small", 0.0) > 0
    stopped = {c.worker_id for _, c in commands if isinstance(c, StopWorker)}
    kept = set(m.transition.keep)
    assert stopped | kept >= started and not stopped & kept  # each started worker is kept or stopped
    assert set(m.transition.awaiting) == started & kept  # kept ones are waited for before any switch


def test_accuracy_scaling_plans_with_the_slowdown_workers_measure(manager) -> None:
    m, demand, registry = manager

    def cheap_share(slowdown: float) -> float:
        registry.workers.clear()
        for i in range(4):
            plan = PlannedWorker(f"a0.w{i}", "a0", Partition(device_id="cpu0", kind="cpu", cores=(i,)),
                                 ("cls-large",))
            registry.plan_worker(plan)
            registry.worker_ready(plan.worker_id, 100 + i, {"cls-large": (SINGLE_MS["cls-large"] / 1.0,)}, m_now,
                                  slowdown={"cls-large": slowdown})
        m.transition = None
        m.force()
        m.tick(m_now)
        assert m.scaled is not None
        return registry.family_fractions["cls"].get("cls-small", 0.0)

    m_now = report(demand, [900] * 20, 0.0)  # over cls-large's capacity on four cores
    as_profiled = cheap_share(1.0)
    slowed = cheap_share(2.0)
    assert slowed > as_profiled, "a host running twice as slow as profiled moves more of the family to cls-small"


def test_missed_deadlines_raise_the_headroom_the_milp_plans_with(manager) -> None:
    m, demand, registry = manager
    now = report(demand, [900] * 20, 0.0)
    m.tick(now)
    assert m.scaled is not None and m.scaled.plan.beta == pytest.approx(1.2)
    quiet = registry.family_fractions["cls"].get("cls-small", 0.0)
    m.transition = None
    for _ in range(3):  # a quarter of the requests miss their deadline, plan after plan
        now += 1.0
        demand.observe({"cls-large": 900}, 1.0, now, source="gw", missed={"cls-large": 225})
        m.force()
        m.tick(now)
        m.transition = None
    assert m.headroom.beta > 1.2 * 1.25 ** 2
    assert registry.family_fractions["cls"].get("cls-small", 0.0) > quiet, "more of the family on the cheap variant"


def test_a_worker_not_heard_from_yet_is_drained_like_a_serving_one_not_stopped_at_once(manager) -> None:
    m, demand, registry = manager
    # as after a controller restart: the placement is restored, the worker has not reported yet
    restored = PlannedWorker("a0.w0", "a0", Partition(device_id="cpu0", kind="cpu", cores=(0, 1, 2, 3)),
                             ("cls-large", "cls-small"))
    registry.plan_worker(restored)
    assert registry.workers["a0.w0"].state == "starting"
    now = report(demand, [200] * 20, 0.0)
    commands = m.tick(now)
    assert m.transition is not None and "a0.w0" in m.transition.retire
    assert not any(isinstance(c, StopWorker) for _, c in commands), "it may be serving: it goes only after its successors"
