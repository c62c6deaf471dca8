"""The planner: table cases (feasible, infeasible, baselines, memory, interference), properties
checked independently of the planner's own code, determinism, and a 1,000-device plan."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.planning import (
    POLICIES,
    CoLocation,
    Demand,
    DeviceSlot,
    DuplicateDemand,
    InterferenceModel,
    LatencyModel,
    Plan,
    ProfilePoint,
    ProfileTable,
    Serving,
    UnknownPolicy,
    max_rate,
    plan,
)
from controller.planning.audit import audit, gpulet_slowdown
from controller.planning.fleet import Fleet
from controller.planning.state import Need

MARGIN = 1.1
P99 = 1.05  # p99 / p50 in the test profiles
CUDA_PARTS = (20, 40, 50, 60, 80, 100)
CPU_PARTS = (1, 2, 3, 4)
BATCHES = (1, 2, 4, 8, 16, 32)
# variant -> (fixed ms, ms per item on a whole device, share of the device it can fill)
SHAPES = {
    "small": (1.0, 0.20, 0.4),  # stops speeding up past 40 %: a knee
    "mid": (2.0, 0.50, 0.7),
    "big": (1.0, 2.00, 1.0),  # scales linearly
    "tight": (3.0, 0.30, 0.5),
}
GB = 2**30


def p50(variant: str, kind: str, partition: int, batch: int) -> float:
    fixed, per_item, fill = SHAPES[variant]
    share = partition / 100 if kind == "cuda" else partition / 4
    return fixed + per_item * batch / min(share, fill)


def make_table() -> ProfileTable:
    pts = []
    for v in SHAPES:
        for kind, parts in (("cuda", CUDA_PARTS), ("cpu", CPU_PARTS)):
            for p in parts:
                for b in BATCHES:
                    lat = p50(v, kind, p, b) * (1 if kind == "cuda" else 4)
                    pts.append(ProfilePoint(v, kind, p, b, lat, lat * P99))
    return ProfileTable(pts)


TABLE = make_table()
LATENCY = LatencyModel(TABLE, margin=MARGIN)
# a neighbour slows a partition by 20 % of the neighbour's share of the device
INTERFERENCE = InterferenceModel({"cuda": (1.0, 0.0, 0.2), "cpu": (1.0, 0.0, 0.3)}, lambda kind, v, p, b: (p / (100 if kind == "cuda" else 4),))
NONE = InterferenceModel.none()


def cuda(n: int, memory: int = 0) -> list[DeviceSlot]:
    return [DeviceSlot(f"gpu{i}", "cuda", 100, memory) for i in range(n)]


def saturated_rate(variant: str, kind: str, partition: int, slo: float, alpha: float = 1.0) -> float:
    """By hand from the closed form: largest batch with 2 * alpha * L <= SLO, its throughput."""
    best = 0.0
    for b in range(1, 33):
        lat = p50(variant, kind, partition, b) * P99 * MARGIN * (1 if kind == "cuda" else 4)
        if 2 * alpha * lat <= slo:
            best = 1000 * b / (alpha * lat)
    return best


def check(result: Plan, devices: list[DeviceSlot], demands: list[Demand], interference: InterferenceModel) -> None:
    """The plan's promises, recomputed here from the profile's closed form."""
    slot = {d.device_id: d for d in devices}
    slo = {d.variant: d.slo_ms for d in demands}
    by_device: dict[str, list[int]] = {}
    for i, g in enumerate(result.gpulets):
        by_device.setdefault(g.device_id, []).append(i)
        assert 1 <= len(g.assignments) <= 3
        alpha = gpulet_slowdown(result, i, interference)
        assert alpha <= g.predicted_slowdown * (1 + 1e-9)
        alpha = g.predicted_slowdown
        round_ms = 0.0
        for a in g.assignments:
            assert 1 <= a.batch <= 32
            scale = 1 if g.kind == "cuda" else 4
            assert a.latency_ms == pytest.approx(p50(a.variant, g.kind, g.size, a.batch) * scale * P99 * MARGIN)
            round_ms += alpha * a.latency_ms
            assert a.rate_rps <= 1000 * a.batch / g.duty_cycle_ms * (1 + 1e-6)  # one batch per cycle carries the rate
        assert round_ms <= g.duty_cycle_ms * (1 + 1e-6)  # the round fits the cycle
        for a in g.assignments:
            assert round_ms + g.duty_cycle_ms <= slo[a.variant] * (1 + 1e-6)  # wait one cycle, then one round
    for device_id, members in by_device.items():
        d = slot[device_id]
        assert sum(result.gpulets[i].size for i in members) <= d.capacity
        if d.kind == "cuda":
            assert len(members) <= 2
    served = result.served()
    for d in demands:
        assert served.get(d.variant, 0.0) + result.unserved.get(d.variant, 0.0) == pytest.approx(d.rate_rps, rel=1e-6, abs=1e-5)
    for v, weights in result.routing_weights().items():
        assert sum(weights.values()) == pytest.approx(1.0)
        assert all(v in result.gpulets[i].variants for i in weights)


# --- table cases ---------------------------------------------------------------------------------


def test_a_light_demand_is_fully_served_with_routing_to_its_gpulet() -> None:
    devices, demands = cuda(1), [Demand("mid", 100.0, 50.0)]
    result = plan(devices, demands, LATENCY, interference=INTERFERENCE)
    check(result, devices, demands, INTERFERENCE)
    assert result.unserved == {}
    assert result.served() == {"mid": pytest.approx(100.0)}
    assert result.routing_weights() == {"mid": {0: pytest.approx(1.0)}}
    assert result.policy == "gpulet" and result.devices_used() == 1


def test_whole_device_carries_exactly_the_saturated_rate_and_reports_the_rest() -> None:
    devices, demands = cuda(1), [Demand("big", 10_000.0, 100.0)]
    result = plan(devices, demands, LATENCY, interference=NONE, policy="whole")
    check(result, devices, demands, NONE)
    sat = saturated_rate("big", "cuda", 100, 100.0)
    assert result.served()["big"] == pytest.approx(sat)
    assert result.unserved == {"big": pytest.approx(10_000.0 - sat)}


def test_an_slo_below_one_batch_is_entirely_unserved() -> None:
    # 2 * 1.1 * 1.05 * L(1) exceeds 5 ms on every partition for "tight" (fixed cost 3 ms)
    devices, demands = cuda(2), [Demand("tight", 50.0, 5.0), Demand("mid", 10.0, 80.0)]
    for policy in POLICIES:
        result = plan(devices, demands, LATENCY, interference=INTERFERENCE, policy=policy)
        check(result, devices, demands, INTERFERENCE)
        assert result.unserved == {"tight": pytest.approx(50.0)}
        assert "tight" not in result.served()


def test_a_variant_without_profile_is_unserved_and_zero_demand_places_nothing() -> None:
    devices = cuda(1)
    demands = [Demand("unprofiled", 30.0, 100.0), Demand("mid", 0.0, 100.0)]
    result = plan(devices, demands, LATENCY, interference=INTERFERENCE)
    assert result.gpulets == ()
    assert result.unserved == {"unprofiled": pytest.approx(30.0)}


def test_no_devices_means_everything_is_unserved() -> None:
    result = plan([], [Demand("mid", 30.0, 100.0)], LATENCY, interference=NONE)
    assert result.gpulets == () and result.unserved == {"mid": pytest.approx(30.0)}


def test_duplicate_demands_and_unknown_policies_are_refused() -> None:
    with pytest.raises(DuplicateDemand):
        plan(cuda(1), [Demand("mid", 1.0, 50.0), Demand("mid", 2.0, 50.0)], LATENCY, interference=NONE)
    with pytest.raises(UnknownPolicy):
        plan(cuda(1), [Demand("mid", 1.0, 50.0)], LATENCY, interference=NONE, policy="fastest")
    with pytest.raises(ValueError):
        Demand("mid", -1.0, 50.0)
    with pytest.raises(ValueError):
        DeviceSlot("d", "cuda", 0)


def test_knee_models_get_split_devices_and_beat_temporal_sharing_which_beats_whole_devices() -> None:
    devices = cuda(2)
    shape = [Demand("small", 100.0, 40.0), Demand("mid", 100.0, 60.0), Demand("tight", 50.0, 30.0)]
    gpulet = max_rate(devices, shape, LATENCY, INTERFERENCE, "gpulet")
    temporal = max_rate(devices, shape, LATENCY, INTERFERENCE, "temporal")
    whole = max_rate(devices, shape, LATENCY, INTERFERENCE, "whole")
    assert gpulet > 1.2 * temporal
    assert temporal >= whole
    at_peak = plan(devices, [dataclasses.replace(d, rate_rps=d.rate_rps * gpulet) for d in shape], LATENCY, interference=INTERFERENCE)
    assert at_peak.total_unserved() < 1e-3
    assert any(g.size < 100 for g in at_peak.gpulets)
    split = [g for g in at_peak.gpulets if g.size < 100]
    assert all(g.predicted_slowdown > 1.0 for g in split)  # every split device pays predicted interference


def test_temporal_uses_whole_devices_and_shares_them_in_time() -> None:
    devices = cuda(2)
    demands = [Demand("small", 300.0, 40.0), Demand("mid", 200.0, 60.0), Demand("big", 50.0, 120.0), Demand("tight", 20.0, 40.0)]
    result = plan(devices, demands, LATENCY, interference=INTERFERENCE, policy="temporal")
    check(result, devices, demands, INTERFERENCE)
    assert result.unserved == {}
    assert all(g.size == 100 and g.predicted_slowdown == 1.0 for g in result.gpulets)
    assert len({g.device_id for g in result.gpulets}) == len(result.gpulets)
    assert max(len(g.assignments) for g in result.gpulets) >= 2


def test_whole_policy_gives_each_device_one_variant() -> None:
    devices = cuda(3)
    demands = [Demand("small", 300.0, 40.0), Demand("mid", 200.0, 60.0), Demand("big", 50.0, 120.0), Demand("tight", 20.0, 40.0)]
    result = plan(devices, demands, LATENCY, interference=INTERFERENCE, policy="whole")
    check(result, devices, demands, INTERFERENCE)
    assert all(len(g.assignments) == 1 and g.size == 100 for g in result.gpulets)
    assert result.devices_used() == 3
    assert sum(result.unserved.values()) > 0  # four variants, three devices


def test_cpu_devices_split_into_core_sets() -> None:
    devices = [DeviceSlot("edge", "cpu", 4)]
    demands = [Demand(v, 20.0, 400.0) for v in ("small", "mid", "big", "tight")]
    result = plan(devices, demands, LATENCY, interference=INTERFERENCE)
    check(result, devices, demands, INTERFERENCE)
    assert result.unserved == {}
    assert sum(g.size for g in result.gpulets) <= 4
    assert all(g.kind == "cpu" for g in result.gpulets)


def test_a_plan_made_without_interference_breaks_under_it() -> None:
    devices = cuda(2)
    shape = [Demand("small", 100.0, 40.0), Demand("mid", 100.0, 60.0)]
    peak = max_rate(devices, shape, LATENCY, NONE, "gpulet")
    demands = [dataclasses.replace(d, rate_rps=d.rate_rps * peak) for d in shape]
    naive = plan(devices, demands, LATENCY, interference=NONE)
    assert audit(naive, devices, demands, LATENCY, NONE) == []
    broken = {v.rule for v in audit(naive, devices, demands, LATENCY, INTERFERENCE)}
    assert "slowdown" in broken and broken & {"cycle", "slo"}
    aware = plan(devices, demands, LATENCY, interference=INTERFERENCE)
    assert audit(aware, devices, demands, LATENCY, INTERFERENCE) == []
    assert aware.total_unserved() > 0  # the same demand no longer fits once interference is counted


def test_memory_admission_keeps_a_second_worker_off_a_full_device() -> None:
    # 0.9 * 2 GB = 1.8 GB; each worker costs 0.3 GB plus its model's 0.8 GB
    mem = int(0.8 * GB)
    demands = [Demand("small", 50.0, 40.0, mem), Demand("mid", 50.0, 60.0, mem)]
    options = {"interference": NONE, "worker_overhead_bytes": int(0.3 * GB)}
    alone = plan(cuda(1, 2 * GB), demands, LATENCY, **options, policy="whole")
    assert alone.unserved and sum(alone.unserved.values()) == pytest.approx(50.0)
    # two models in one worker fit (0.3 + 0.8 + 0.8 = 1.9 GB > 1.8 GB? no) -> still one variant
    shared = plan(cuda(1, 2 * GB), demands, LATENCY, **options, policy="temporal")
    assert len(shared.served()) == 1
    roomy = plan(cuda(1, 4 * GB), demands, LATENCY, **options)
    assert roomy.unserved == {}
    two = plan(cuda(2, 2 * GB), demands, LATENCY, **options)
    assert two.unserved == {} and two.devices_used() == 2


def test_a_residue_below_the_threshold_gets_no_gpulet_of_its_own() -> None:
    demands = [Demand("mid", 5.0, 60.0)]
    skipped = plan(cuda(1), demands, LATENCY, interference=NONE, min_residual_rps=10.0)
    assert skipped.gpulets == () and skipped.unserved == {"mid": pytest.approx(5.0)}
    # it may still share a gpu-let that exists for another variant
    shared = plan(cuda(1), [*demands, Demand("big", 20.0, 200.0)], LATENCY, interference=NONE, min_residual_rps=10.0)
    assert shared.unserved == {} and len(shared.gpulets) == 1


def test_live_slowdown_from_workers_cuts_capacity() -> None:
    devices, shape = cuda(1), [Demand("big", 10.0, 100.0)]
    fast = max_rate(devices, shape, LATENCY, NONE, "whole")
    slowed = max_rate(devices, shape, LATENCY.with_slowdown({("big", "cuda"): 2.0}), NONE, "whole")
    assert slowed == pytest.approx(fast / 2, rel=0.15)


def test_max_rate_on_a_grid_is_the_last_level_carried() -> None:
    devices, shape = cuda(2), [Demand("small", 50.0, 40.0), Demand("big", 10.0, 100.0)]
    level = max_rate(devices, shape, LATENCY, INTERFERENCE, "gpulet", levels=500)
    assert level == int(level) and 0 < level < 500

    def unserved(k: float) -> float:
        return plan(devices, [dataclasses.replace(d, rate_rps=d.rate_rps * k) for d in shape], LATENCY, interference=INTERFERENCE).total_unserved()

    assert unserved(level) < 1e-3
    assert unserved(level + 1) > 0


def test_same_inputs_in_any_order_give_the_same_plan() -> None:
    devices = cuda(3) + [DeviceSlot("edge", "cpu", 4)]
    demands = [Demand("small", 900.0, 40.0), Demand("mid", 400.0, 60.0), Demand("big", 60.0, 120.0), Demand("tight", 100.0, 40.0)]
    first = plan(devices, demands, LATENCY, interference=INTERFERENCE)
    rng = random.Random(7)
    for _ in range(3):
        d, q = devices[:], demands[:]
        rng.shuffle(d)
        rng.shuffle(q)
        assert plan(d, q, LatencyModel(TABLE, margin=MARGIN), interference=INTERFERENCE) == first


def test_audit_catches_a_tampered_plan() -> None:
    devices, demands = cuda(1), [Demand("mid", 300.0, 60.0)]
    good = plan(devices, demands, LATENCY, interference=NONE)
    assert audit(good, devices, demands, LATENCY, NONE) == []
    g = good.gpulets[0]
    squeezed = dataclasses.replace(good, gpulets=(dataclasses.replace(g, duty_cycle_ms=g.duty_cycle_ms / 4),))
    assert {v.rule for v in audit(squeezed, devices, demands, LATENCY, NONE)} == {"cycle"}
    stretched = dataclasses.replace(good, gpulets=(dataclasses.replace(g, duty_cycle_ms=g.duty_cycle_ms * 4),))
    assert "rate" in {v.rule for v in audit(stretched, devices, demands, LATENCY, NONE)}
    overfull = dataclasses.replace(good, gpulets=(g, dataclasses.replace(g, size=60)))
    assert "capacity" in {v.rule for v in audit(overfull, devices, demands, LATENCY, NONE)}


def test_a_thousand_devices_plan_completes_and_is_sound() -> None:
    devices = [DeviceSlot(f"gpu{i:04d}", "cuda", 100, 16 * GB) for i in range(1000)]
    names = [(f"{base}-{i}", base) for i in range(50) for base in ("small", "mid", "big")]
    table = ProfileTable(dataclasses.replace(p, variant=name) for name, base in names for p in TABLE if p.variant == base)
    latency = LatencyModel(table, margin=MARGIN)
    slos = {"small": 40.0, "mid": 60.0, "big": 120.0}
    demands = [Demand(name, 0.5 * saturated_rate(base, "cuda", 100, slos[base]) * 1000 / len(names), slos[base], GB) for name, base in names]
    model = InterferenceModel({"cuda": (1.0, 0.0, 0.2)}, lambda kind, v, p, b: (p / 100,))
    result = plan(devices, demands, latency, interference=model)
    assert result.unserved == {}
    assert audit(result, devices, demands, latency, model) == []


# --- properties ----------------------------------------------------------------------------------


@st.composite
def scenarios(draw):
    n_cuda = draw(st.integers(0, 3))
    n_cpu = draw(st.integers(0 if n_cuda else 1, 2))
    memory = draw(st.sampled_from([0, 6 * GB]))
    devices = [DeviceSlot(f"g{i}", "cuda", 100, memory) for i in range(n_cuda)]
    devices += [DeviceSlot(f"c{i}", "cpu", draw(st.integers(1, 4))) for i in range(n_cpu)]
    variants = draw(st.lists(st.sampled_from(sorted(SHAPES)), min_size=1, max_size=4, unique=True))
    demands = [
        Demand(v, draw(st.floats(0, 3000, allow_nan=False)), draw(st.floats(8, 200, allow_nan=False)), draw(st.sampled_from([0, GB])))
        for v in variants
    ]
    policy = draw(st.sampled_from(POLICIES))
    interference = draw(st.sampled_from([NONE, INTERFERENCE]))
    min_residual = draw(st.sampled_from([0.0, 15.0]))
    return devices, demands, policy, interference, min_residual


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_plan_keeps_its_promises(case) -> None:
    devices, demands, policy, interference, min_residual = case
    options = {"interference": interference, "policy": policy, "min_residual_rps": min_residual, "worker_overhead_bytes": GB // 2}
    result = plan(devices, demands, LATENCY, **options)
    check(result, devices, demands, interference)
    assert audit(result, devices, demands, LATENCY, interference) == []
    if policy == "whole":
        assert all(len(g.assignments) == 1 for g in result.gpulets)
    if policy != "gpulet":
        assert all(g.size == next(d.capacity for d in devices if d.device_id == g.device_id) for g in result.gpulets)
    assert plan(devices, demands, LATENCY, **options) == result


@settings(max_examples=30, deadline=None)
@given(scenarios())
def test_unserved_demand_is_never_silently_dropped(case) -> None:
    devices, demands, policy, interference, _ = case
    result = plan(devices, demands, LATENCY, interference=interference, policy=policy)
    served = result.served()
    for d in demands:
        assert math.isclose(served.get(d.variant, 0.0) + result.unserved.get(d.variant, 0.0), d.rate_rps, rel_tol=1e-6, abs_tol=1e-5)
        assert result.unserved.get(d.variant, 0.0) >= 0.0


@pytest.mark.timeout(60)
def test_a_fleet_whose_interference_cancels_a_new_gpulets_gain_is_planned_in_bounded_time() -> None:
    # Eight 16-core hosts, twenty variants, interference fitted from thirty measured slowdowns of
    # 1.0-1.6x: a last-resort gpu-let that carried exactly what its neighbour lost was accepted,
    # the lost rate handed back, and the same move made again for ever (the controller hung).
    rng = random.Random(1)
    variants = [f"v{i:02d}" for i in range(20)]
    sizes = (1, 2, 4, 8, 16)
    points = []
    for v in variants:
        base = rng.uniform(1, 20)
        for size in sizes:
            for batch in (1, 2, 4, 8, 16, 32):
                latency = base * batch ** 0.7 * (16 / size) ** 0.7
                points.append(ProfilePoint(v, "cpu", size, batch, latency * 0.8, latency))
    table = ProfileTable(points)
    measured = [CoLocation("cpu", (rng.choice(variants), rng.choice(sizes[:3]), rng.choice((1, 4))),
                           (rng.choice(variants), rng.choice(sizes[:3]), rng.choice((1, 4))), rng.uniform(1.0, 1.6))
                for _ in range(30)]
    interference = InterferenceModel.fit(measured, table=table)
    devices = [DeviceSlot(f"d{i}", "cpu", 16) for i in range(8)]
    demands = [Demand(v, rng.uniform(10, 300) * 0.3, 100) for v in variants]
    latency = LatencyModel(table)

    result = plan(devices, demands, latency, interference=interference)

    assert audit(result, devices, demands, latency, interference) == []
    served = result.served()
    for d in demands:
        assert math.isclose(served.get(d.variant, 0.0) + result.unserved.get(d.variant, 0.0), d.rate_rps,
                            rel_tol=1e-6, abs_tol=1e-5)


def test_the_worst_neighbour_is_found_even_when_the_first_variant_is_insensitive_to_all() -> None:
    # "m" slows another "m" 3x and nothing else slows anything; "a" (first by name) feels nothing.
    # Ranking neighbours by their effect on "a" tied them all at 1.0 and took "z", so two halves
    # of "m" were thought to share a GPU freely.
    points = []
    for v, base in (("a", 2.0), ("m", 20.0), ("z", 2.0)):
        for size in (20, 40, 50, 100):
            for batch in (1, 2, 4, 8, 16, 32):
                latency = base * batch ** 0.9 * (1.0 if size >= 50 else 10.0)
                points.append(ProfilePoint(v, "cuda", size, batch, latency, latency))
    table = ProfileTable(points)

    def features(kind: str, variant: str, partition: int, batch: int) -> tuple[float, float]:
        return (0.0 if variant == "a" else 1.0, 1.0 if variant == "m" else 0.0)  # (sensitive, aggressive)

    interference = InterferenceModel({"cuda": (-1.0, 2.0, 0.0, 0.0, 2.0)}, features)
    assert interference.predict("cuda", ("m", 50, 1), ("m", 50, 1)) == 3.0
    devices = [DeviceSlot("gpu0", "cuda", 100), DeviceSlot("gpu1", "cuda", 100)]
    demands = [Demand("a", 0.0, 100.0), Demand("m", 1000.0, 100.0), Demand("z", 0.0, 100.0)]
    latency = LatencyModel(table)

    fleet = Fleet(devices, {d.variant: Need(d.variant, d.slo_ms, 0) for d in demands}, latency, interference,
                  max_batch=32, max_models=3, worker_overhead_bytes=0)

    assert fleet.worst_neighbour("cuda", 50)[0] == "m"
    assert fleet.expected_alpha("m", "cuda", 50, 50) == 3.0  # two halves of m do not share a GPU freely

    result = plan(devices, demands, latency, interference=interference)
    assert audit(result, devices, demands, latency, interference) == []
    assert [(g.size, g.variants) for g in result.gpulets] == [(100, ("m",)), (100, ("m",))]


# --- re-planning around the gpu-lets serving now ---------------------------------------------------


def shapes(result: Plan) -> list[tuple[str, int, tuple[str, ...]]]:
    return sorted((g.device_id, g.size, tuple(sorted(g.variants))) for g in result.gpulets)


def serving(result: Plan) -> list[Serving]:
    return [Serving(g.device_id, g.size, g.variants, tuple((a.variant, a.batch) for a in g.assignments))
            for g in result.gpulets]


def test_a_rise_the_gpulets_serving_now_carry_keeps_them_instead_of_swapping_variants() -> None:
    devices = cuda(2)
    before = [Demand("tight", 150.0, 60.0), Demand("small", 40.0, 60.0), Demand("mid", 40.0, 60.0)]
    after = [Demand("tight", 150.0, 60.0), Demand("small", 80.0, 60.0), Demand("mid", 40.0, 60.0)]
    now = plan(devices, before, LATENCY, interference=INTERFERENCE)
    fresh = plan(devices, after, LATENCY, interference=INTERFERENCE)
    # A fresh packing of the new rates swaps "small" and "mid" between the two GPUs: two workers
    # restarted for a layout with the same devices and partitions.
    assert fresh.unserved == {} and shapes(fresh) != shapes(now) and len(fresh.gpulets) == len(now.gpulets)
    kept = plan(devices, after, LATENCY, interference=INTERFERENCE, current=serving(now))
    assert shapes(kept) == shapes(now)
    assert kept.unserved == {} and kept.served() == {d.variant: pytest.approx(d.rate_rps) for d in after}
    check(kept, devices, after, INTERFERENCE)
    assert audit(kept, devices, after, LATENCY, INTERFERENCE) == []


def test_a_fall_that_frees_a_device_is_not_held_back_by_the_gpulets_serving_now() -> None:
    devices = [DeviceSlot("c0", "cpu", 4), DeviceSlot("c1", "cpu", 4)]
    busy = plan(devices, [Demand("big", 100.0, 400.0), Demand("mid", 100.0, 400.0)], LATENCY, interference=INTERFERENCE)
    assert busy.devices_used() == 2
    quiet = [Demand("big", 50.0, 400.0), Demand("mid", 50.0, 400.0)]
    assert plan(devices, quiet, LATENCY, interference=INTERFERENCE).devices_used() == 1
    replanned = plan(devices, quiet, LATENCY, interference=INTERFERENCE, current=serving(busy))
    assert replanned.devices_used() == 1 and replanned.unserved == {}


def test_gpulets_serving_now_are_kept_only_under_the_gpulet_policy() -> None:
    devices = cuda(2)
    demands = [Demand("tight", 150.0, 60.0), Demand("small", 80.0, 60.0), Demand("mid", 40.0, 60.0)]
    current = [Serving("gpu0", 20, ("tight",)), Serving("gpu0", 80, ("small",)), Serving("gpu1", 100, ("mid",))]
    for policy in ("temporal", "whole"):
        assert plan(devices, demands, LATENCY, interference=NONE, policy=policy, current=current) == \
            plan(devices, demands, LATENCY, interference=NONE, policy=policy)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.randoms(use_true_random=False))
def test_a_plan_around_the_gpulets_serving_now_keeps_its_promises_and_carries_no_less(case, rng) -> None:
    devices, demands, _, interference, min_residual = case
    options = {"interference": interference, "min_residual_rps": min_residual, "worker_overhead_bytes": GB // 2}
    earlier = [dataclasses.replace(d, rate_rps=d.rate_rps * rng.choice([0.1, 0.5, 2.0, 5.0])) for d in demands]
    current = serving(plan(devices, earlier, LATENCY, **options))
    current += [Serving("gone", 100, ("mid",))]  # a device that left the fleet since
    fresh = plan(devices, demands, LATENCY, **options)
    result = plan(devices, demands, LATENCY, current=current, **options)
    check(result, devices, demands, interference)
    assert audit(result, devices, demands, LATENCY, interference) == []
    def cost(p: Plan) -> tuple[float, int, int]:
        return round(p.total_unserved(), 6), p.devices_used(), len(p.gpulets)

    assert cost(result) <= cost(fresh)  # never less carried, nor more devices for as much
    if result.strategy == "retain":  # a kept gpu-let never plans past the batch its worker runs
        caps = {(s.device_id, s.size, tuple(sorted(s.variants))): dict(s.batches) for s in current}
        for g in result.gpulets:
            cap = caps.get((g.device_id, g.size, tuple(sorted(g.variants))))
            if cap is not None and len(g.variants) > 1:
                assert all(a.batch <= cap.get(a.variant, a.batch) for a in g.assignments), (g, cap)
    assert plan(devices, demands, LATENCY, current=current, **options) == result
