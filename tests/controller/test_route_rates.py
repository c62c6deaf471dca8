"""The gateways' routing weights during a move: the old layout serves, at its planned split, until
the move switches routing; a move that is abandoned leaves that split in place. Real registry,
SQLite store, demand tracker and planner; commands are returned, not sent."""

from __future__ import annotations

import pytest

from controller.demand import DemandTracker
from controller.layout_manager import LayoutManager
from controller.layout_policy import LayoutPolicy
from controller.placement import PlannedWorker
from controller.registry import Registry
from controller.store import StateStore
from protocol.message import StopWorker
from protocol.types import DeviceInfo
from tests.controller.test_layout_manager import ACCURACY, SINGLE_MS, report, samples, start_command, variant

START_TIMEOUT_S = 20.0


@pytest.fixture
def manager(tmp_path):
    store = StateStore(tmp_path / "state.db")
    store.save_profiles(samples(), [], now=0.0)
    registry = Registry({n: variant(n) for n in ACCURACY}, heartbeat_interval_s=1.0, missed_heartbeats=1000)
    registry.agent_registered("a0", "host", (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=8,
                                                        memory_bytes=8 << 30),), now=0.0)
    demand = DemandTracker(half_life_s=5.0, history_s=5.0)
    settings = LayoutPolicy(replan_period_s=10.0, fast_replan_s=1.0, start_timeout_s=START_TIMEOUT_S,
                            min_layout_dwell_s=0.0)
    yield LayoutManager(settings, registry, store, demand, start_command, generation=1), demand, registry
    store.close()


def weights(registry: Registry) -> dict[str, dict[str, float]]:
    registry.routing_table()  # what the gateways get: published when it changed
    return {r.worker_id: dict(r.weights) for r in registry.current_table().workers if not r.draining}


def ready(registry: Registry, commands, now: float) -> None:
    for plan in (c for _, c in commands if isinstance(c, PlannedWorker)):
        registry.worker_ready(plan.worker_id, 1, {plan.variants[0]: (SINGLE_MS[plan.variants[0]],)}, now)


def test_the_old_layout_keeps_its_split_while_a_move_starts_and_after_it_is_abandoned(manager) -> None:
    m, demand, registry = manager
    now = report(demand, [300] * 20, 0.0)
    ready(registry, m.tick(now), now)
    while m.transition is not None:  # the first layout comes up
        now += 1.0
        demand.observe({"cls-large": 300}, 1.0, now, source="gw")
        ready(registry, m.tick(now), now)
    before = weights(registry)
    assert any(w.get("cls-large", 0) > 100 for w in before.values()), before

    now = report(demand, [900, 900], now)  # a rise: the move to a bigger layout starts workers ...
    started = [c for _, c in m.tick(now) if isinstance(c, PlannedWorker)]
    move = m.transition
    assert started and move is not None and move.retire, "the move replaces some of the serving workers"
    # ... and until they are up the serving workers carry the load as planned before, not the
    # default weight of 1 request a second beside the kept ones' new rates
    assert weights(registry) == before

    stops: list[str] = []
    while m.transition is move:  # the new workers never come up: the move is given up
        now += 1.0
        demand.observe({"cls-large": 900}, 1.0, now, source="gw")
        stops += [c.worker_id for _, c in m.tick(now) if isinstance(c, StopWorker)]
        assert now < 200, "the move was never given up"
    assert set(stops) >= {p.worker_id for p in started}
    assert weights(registry) == before, "the layout that keeps serving keeps its planned split"


def test_the_new_split_is_routed_once_the_move_switches(manager) -> None:
    m, demand, registry = manager
    now = report(demand, [300] * 20, 0.0)
    ready(registry, m.tick(now), now)
    while m.transition is not None:
        now += 1.0
        demand.observe({"cls-large": 300}, 1.0, now, source="gw")
        ready(registry, m.tick(now), now)
    before = weights(registry)

    now = report(demand, [600, 600], now)  # a rise the device still carries at full accuracy
    commands = m.tick(now)
    move = m.transition
    assert move is not None and m.scaled is None and weights(registry) == before
    ready(registry, commands, now)  # the new workers come up: routing switches to the new layout
    now += 1.0
    m.tick(now)
    after = weights(registry)
    assert after != before
    assert after == {w: r for w, r in move.rates.items() if w in after}
    assert sum(r.get("cls-large", 0.0) for r in after.values()) > sum(r.get("cls-large", 0.0) for r in before.values())
