"""Accuracy scaling: hand-solved optima, shedding below beta 1, invariants checked independently
of the solver (every plan is re-verified here), a brute-force optimum on random small instances,
the time bound and the current plan as warm start, capacities from profiles, the re-solve policy."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.accuracy import (
    ResolvePolicy,
    ScalingPlan,
    ScalingProblem,
    Slot,
    VariantChoice,
    beta_ladder,
    capacities,
    solve,
    split_capacities,
    to_desired,
)
from controller.planning import (
    InterferenceModel,
    LatencyModel,
    ProfilePoint,
    ProfileTable,
)
from controller.reconciler import DesiredWorker

HI = VariantChoice("cls-hi", "cls", 90.0, 100.0)
LO = VariantChoice("cls-lo", "cls", 70.0, 100.0)


def gpus(n: int, size: int = 100) -> tuple[Slot, ...]:
    return tuple(Slot(f"s{i}", f"gpu{i}", "cuda", size, agent_id="a0") for i in range(n))


def uniform(slots, rates: dict[str, float]) -> dict[tuple[str, str], float]:
    """Every slot carries ``rates[variant]`` req/s of a variant."""
    return {(s.slot_id, v): r for s in slots for v, r in rates.items()}


def verify(problem: ScalingProblem, plan: ScalingPlan) -> None:
    """The plan's promises, recomputed from the problem alone."""
    variants = {v.variant: v for v in problem.variants}
    slots = {s.slot_id: s for s in problem.slots}
    factor = max(plan.beta, 1.0)  # beta above 1 is headroom every slot keeps
    for slot_id, variant in plan.hosts.items():
        assert problem.capacity.get((slot_id, variant), 0.0) > 0, "a slot hosts a variant it cannot run"
    load = {s: 0.0 for s in plan.hosts}
    accuracy_sum = served_sum = 0.0
    servable = {variants[v].family for (s, v), r in problem.capacity.items() if hostable(problem, s, v)}
    for family, demand in problem.demand.items():
        shed = plan.shed.get(family, 0.0)
        assert 0.0 <= shed <= demand * (1 + 1e-9)
        served = demand - shed
        if family in servable:
            assert shed <= max(0.0, 1 - plan.beta) * demand + 1e-6  # every family keeps beta of its demand
        if served <= 1e-9:
            assert family not in plan.routing
            continue
        routes, fractions = plan.routing[family], plan.variant_fractions[family]
        assert sum(routes.values()) == pytest.approx(1.0)
        assert sum(fractions.values()) == pytest.approx(1.0)
        by_variant: dict[str, float] = {}
        for slot_id, share in routes.items():
            host = plan.hosts[slot_id]
            assert variants[host].family == family, "requests routed to a slot without the family"
            load[slot_id] += share * served
            by_variant[host] = by_variant.get(host, 0.0) + share
        assert by_variant == pytest.approx(fractions)
        for v, share in fractions.items():
            accuracy_sum += share * served * variants[v].accuracy
        served_sum += served
    for slot_id, rate in load.items():
        assert rate <= problem.capacity[(slot_id, plan.hosts[slot_id])] / factor * (1 + 1e-6) + 1e-9
        assert plan.load.get(slot_id, 0.0) == pytest.approx(rate, abs=1e-6)
    if served_sum > 0:
        assert plan.effective_accuracy == pytest.approx(accuracy_sum / served_sum)
    for key, capacity in problem.device_capacity.items():
        assert sum(slots[s].size for s in plan.hosts if slots[s].device_key == key) <= capacity
    for key, memory in problem.device_memory.items():
        if memory > 0:
            assert sum(variants[v].memory_bytes for s, v in plan.hosts.items() if slots[s].device_key == key) <= memory


def hostable(problem: ScalingProblem, slot_id: str, variant: str) -> bool:
    """Whether the slot can run the variant at all: capacity there, and its need within its device's memory."""
    slot = next(s for s in problem.slots if s.slot_id == slot_id)
    need = next(v.memory_bytes for v in problem.variants if v.variant == variant)
    return problem.capacity.get((slot_id, variant), 0) > 0 and need <= (problem.device_memory.get(slot.device_key) or math.inf)


def test_light_demand_runs_the_accurate_variant_on_every_slot() -> None:
    slots = gpus(2)
    problem = ScalingProblem(slots, (HI, LO), {"cls": 100.0}, uniform(slots, {"cls-hi": 100.0, "cls-lo": 300.0}))
    plan = solve(problem)
    verify(problem, plan)
    assert plan.status == "optimal" and plan.beta == pytest.approx(1.05) and plan.shed == {}
    assert plan.hosts == {"s0": "cls-hi", "s1": "cls-hi"}
    assert plan.routing == {"cls": {"s0": pytest.approx(0.5), "s1": pytest.approx(0.5)}}
    assert plan.effective_accuracy == pytest.approx(90.0)


@pytest.mark.parametrize(("beta", "accuracy"), [
    (1.0, (100 * 90 + 150 * 70) / 250),  # the accurate slot full, the rest on the cheap one: 78
    (1.05, (100 / 1.05 * 90 + (250 - 100 / 1.05) * 70) / 250),  # the same, keeping 5 % headroom
])
def test_twice_the_accurate_capacity_mixes_variants_at_the_best_accuracy(beta: float, accuracy: float) -> None:
    slots = gpus(2)
    problem = ScalingProblem(slots, (HI, LO), {"cls": 250.0}, uniform(slots, {"cls-hi": 100.0, "cls-lo": 300.0}))
    plan = solve(problem, beta=beta, mip_gap=0.0)
    verify(problem, plan)
    assert plan.status == "optimal" and plan.beta == pytest.approx(beta) and plan.shed == {}
    assert sorted(plan.hosts.values()) == ["cls-hi", "cls-lo"]
    assert plan.effective_accuracy == pytest.approx(accuracy)
    hi_share = 100 / beta / 250
    assert plan.variant_fractions == {"cls": {"cls-hi": pytest.approx(hi_share), "cls-lo": pytest.approx(1 - hi_share)}}


def test_demand_beyond_the_cheapest_capacity_steps_beta_below_one_and_sheds_exactly_the_excess() -> None:
    slots = gpus(2)
    problem = ScalingProblem(slots, (HI, LO), {"cls": 1000.0}, uniform(slots, {"cls-hi": 100.0, "cls-lo": 300.0}))
    plan = solve(problem)
    verify(problem, plan)
    # 600 req/s is all the fleet carries: 60 % served, the highest rung is beta = 0.6
    assert plan.status == "optimal" and plan.beta == pytest.approx(0.6)
    assert plan.hosts == {"s0": "cls-lo", "s1": "cls-lo"}
    assert plan.shed == {"cls": pytest.approx(400.0)}
    assert plan.effective_accuracy == pytest.approx(70.0)


def test_below_min_beta_the_plan_is_best_effort_and_says_so() -> None:
    slots = gpus(2)
    problem = ScalingProblem(slots, (HI, LO), {"cls": 10_000.0}, uniform(slots, {"cls-hi": 100.0, "cls-lo": 300.0}))
    plan = solve(problem, min_beta=0.2)
    verify(problem, plan)
    assert plan.status == "infeasible"
    assert plan.shed == {"cls": pytest.approx(9_400.0)}
    assert plan.beta == pytest.approx(0.06)  # the share still served, reported honestly


def test_two_families_competing_for_slots_get_the_split_with_the_best_total_accuracy() -> None:
    # A on one slot (cheap variant) + B on two (accurate): 86; A on two + B on one: 85
    variants = (VariantChoice("a-hi", "a", 95, 100), VariantChoice("a-lo", "a", 80, 100),
                VariantChoice("b-hi", "b", 92, 100), VariantChoice("b-lo", "b", 75, 100))
    slots = gpus(3)
    caps = uniform(slots, {"a-hi": 100.0, "a-lo": 250.0, "b-hi": 100.0, "b-lo": 200.0})
    problem = ScalingProblem(slots, variants, {"a": 150.0, "b": 150.0}, caps)
    for beta in (1.0, 1.05):
        plan = solve(problem, beta=beta, mip_gap=0.0)
        verify(problem, plan)
        assert plan.status == "optimal" and plan.shed == {}
        assert sorted(plan.hosts.values()) == ["a-lo", "b-hi", "b-hi"]
        assert plan.effective_accuracy == pytest.approx(86.0)
        assert plan.variant_fractions == {"a": {"a-lo": pytest.approx(1.0)}, "b": {"b-hi": pytest.approx(1.0)}}


def test_variants_that_cannot_meet_their_slo_on_a_slot_are_never_placed_there() -> None:
    perfect = VariantChoice("cls-perfect", "cls", 100.0, 100.0)
    slots = gpus(3)
    caps = uniform(slots, {"cls-hi": 100.0, "cls-lo": 300.0, "cls-perfect": 0.0})
    caps[("s2", "cls-perfect")] = 60.0  # only slot s2 can run it, and it is the most accurate
    problem = ScalingProblem(slots, (HI, LO, perfect), {"cls": 150.0}, caps)
    plan = solve(problem, mip_gap=0.0)
    verify(problem, plan)
    assert plan.hosts["s2"] == "cls-perfect"
    assert all(v != "cls-perfect" for s, v in plan.hosts.items() if s != "s2")


def test_a_family_no_slot_can_host_is_shed_whole_without_lowering_beta_for_the_others() -> None:
    ghost = VariantChoice("ghost-v1", "ghost", 80.0, 100.0)
    slots = gpus(2)
    caps = uniform(slots, {"cls-hi": 100.0, "cls-lo": 300.0})
    problem = ScalingProblem(slots, (HI, LO, ghost), {"cls": 100.0, "ghost": 40.0}, caps)
    plan = solve(problem)
    verify(problem, plan)
    assert plan.status == "optimal" and plan.beta == pytest.approx(1.05)
    assert plan.shed == {"ghost": pytest.approx(40.0)}
    assert "ghost" not in plan.routing


def test_a_device_capacity_makes_its_slots_alternative_partitionings() -> None:
    # gpu0 is one 100 % slot (150 req/s) or two 50 % slots (100 req/s each): 180 req/s needs the halves
    v = VariantChoice("m", "m", 90.0, 100.0)
    slots = (Slot("full", "gpu0", "cuda", 100), Slot("half-a", "gpu0", "cuda", 50), Slot("half-b", "gpu0", "cuda", 50))
    caps = {("full", "m"): 150.0, ("half-a", "m"): 100.0, ("half-b", "m"): 100.0}
    problem = ScalingProblem(slots, (v,), {"m": 180.0}, caps, device_capacity={("", "gpu0"): 100})
    plan = solve(problem, beta=1.0)
    verify(problem, plan)
    assert plan.hosts == {"half-a": "m", "half-b": "m"} and plan.shed == {}
    light_problem = ScalingProblem(slots, (v,), {"m": 50.0}, caps, device_capacity={("", "gpu0"): 100})
    light = solve(light_problem)
    verify(light_problem, light)  # checks the filled sizes fit the device
    assert light.shed == {} and light.hosts


def test_the_same_problem_in_any_order_gives_the_same_plan() -> None:
    rng = random.Random(7)
    slots, variants, caps, demand = random_instance(rng, n_slots=8, families=3, per_family=3)
    problem = ScalingProblem(slots, variants, demand, caps)
    first = solve(problem, time_limit_s=10.0)
    other_slots, other_variants = list(slots), list(variants)
    rng.shuffle(other_slots)
    rng.shuffle(other_variants)
    reordered = ScalingProblem(tuple(other_slots), tuple(other_variants), dict(reversed(demand.items())), caps)
    again = solve(reordered, time_limit_s=10.0)
    verify(problem, first)
    assert first.status == "optimal"
    assert (first.hosts, first.routing, first.variant_fractions, first.shed, first.beta) == \
        (again.hosts, again.routing, again.variant_fractions, again.shed, again.beta)
    assert first.effective_accuracy == again.effective_accuracy


# --- time bound and warm start ---------------------------------------------------------------


def random_instance(rng: random.Random, *, n_slots: int, families: int, per_family: int):
    """Distinct capacities on every slot: no two slots interchangeable, the hardest shape."""
    slots = tuple(Slot(f"s{i:03d}", f"gpu{i // 2}", "cuda", 50) for i in range(n_slots))
    variants, caps = [], {}
    for f in range(families):
        for j in range(per_family):
            variants.append(VariantChoice(f"f{f}v{j}", f"f{f}", 70 + 30 * j / max(per_family - 1, 1), 100.0))
    for s in slots:
        for f in range(families):
            base = rng.uniform(50, 150)
            for j in range(per_family):
                caps[(s.slot_id, f"f{f}v{j}")] = base * 1.6 ** (per_family - 1 - j) * rng.uniform(0.9, 1.1)
    per = n_slots / families * 100 * 1.6 ** 2
    demand = {f"f{f}": per * rng.uniform(0.5, 1.5) for f in range(families)}
    return slots, tuple(variants), caps, demand


def test_a_big_instance_under_a_short_budget_returns_a_valid_plan_marked_time_limit() -> None:
    # How long solving takes is measured in benchmarks/accuracy_scaling.py, not asserted here;
    # the budget's bookkeeping is checked deterministically with ExpensiveTimer below.
    slots, variants, caps, demand = random_instance(random.Random(3), n_slots=100, families=9, per_family=5)
    problem = ScalingProblem(slots, variants, demand, caps)
    plan = solve(problem, time_limit_s=0.2, mip_gap=0.0)
    assert plan.status in ("time_limit", "optimal")  # a fast machine may finish inside the budget
    assert plan.hosts
    verify(problem, plan)
    again = solve(problem, time_limit_s=0.2, mip_gap=0.0, current=plan)
    assert again.status in ("time_limit", "kept_current", "optimal")
    verify(problem, again)


class ExpensiveTimer:
    """A timer each reading of which costs ``step_s``: the budget runs out after a few readings."""

    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def test_when_the_budget_runs_out_the_current_plan_is_kept_and_rerouted_for_the_new_demand() -> None:
    slots = gpus(2)
    caps = uniform(slots, {"cls-hi": 100.0, "cls-lo": 300.0})
    current = solve(ScalingProblem(slots, (HI, LO), {"cls": 100.0}, caps))
    assert current.hosts == {"s0": "cls-hi", "s1": "cls-hi"}
    burst = ScalingProblem(slots, (HI, LO), {"cls": 180.0}, caps)
    gone = ScalingPlan({**current.hosts, "s9": "cls-hi"}, {}, {}, 90.0, 1.05, {}, 0.0, "optimal")  # s9 left the fleet
    kept = solve(burst, current=gone, time_limit_s=1.0, timer=ExpensiveTimer(2.0))
    verify(burst, kept)
    assert kept.status == "kept_current" and kept.hosts == current.hosts
    assert kept.shed == {} and kept.beta == pytest.approx(1.05)  # 180 fits in 2 x 100 / 1.05
    quick = solve(burst, time_limit_s=1.0, timer=ExpensiveTimer(2.0))  # no solver call, only the quick plan
    verify(burst, quick)
    assert quick.status == "time_limit" and quick.hosts == {"s0": "cls-lo", "s1": "cls-lo"} and quick.shed == {}



def test_when_the_budget_runs_out_the_quick_plan_shares_devices_between_families() -> None:
    # Three 4-core hosts, each a 4-core slot (35 req/s) or four 1-core slots (10 req/s each), and
    # five families of 15 req/s: a whole host per family in turn left two families shed whole.
    slots, caps, device_capacity = [], {}, {}
    families = [VariantChoice(f"f{k}", f"f{k}", 80.0, 100.0) for k in range(5)]
    for d in range(3):
        device_capacity[("a0", f"h{d}")] = 4
        shapes = [(f"h{d}-whole", 4, 35.0)] + [(f"h{d}-core{c}", 1, 10.0) for c in range(4)]
        for slot_id, size, rate in shapes:
            slots.append(Slot(slot_id, f"h{d}", "cpu", size, agent_id="a0"))
            caps.update({(slot_id, v.variant): rate for v in families})
    problem = ScalingProblem(tuple(slots), tuple(families), {v.family: 15.0 for v in families}, caps,
                             device_capacity=device_capacity)

    quick = solve(problem, time_limit_s=1.0, timer=ExpensiveTimer(2.0))  # no solver call, only the quick plan

    verify(problem, quick)
    assert quick.status == "time_limit"
    assert set(quick.hosts.values()) == {v.variant for v in families}, quick.hosts  # every family hosted
    assert all(quick.shed.get(v.family, 0.0) < 15.0 for v in families), quick.shed  # none shed whole

def test_a_current_plan_that_is_still_optimal_is_kept_and_a_worse_one_is_replaced() -> None:
    slots = gpus(3)
    caps = uniform(slots, {"cls-hi": 100.0, "cls-lo": 300.0})
    problem = ScalingProblem(slots, (HI, LO), {"cls": 250.0}, caps)
    best = solve(problem)
    again = solve(problem, current=best)
    assert again.status == "kept_current" and again.hosts == best.hosts
    cheap = ScalingPlan({"s0": "cls-lo", "s1": "cls-lo", "s2": "cls-lo"}, {}, {}, 70.0, 1.05, {}, 0.0, "optimal")
    better = solve(problem, current=cheap)
    verify(problem, better)
    assert better.status == "optimal" and better.effective_accuracy == pytest.approx(best.effective_accuracy)
    assert better.effective_accuracy > 85.0


def test_the_burst_passes_and_full_accuracy_returns() -> None:
    slots = gpus(4)
    caps = uniform(slots, {"cls-hi": 100.0, "cls-lo": 300.0})
    calm = ScalingProblem(slots, (HI, LO), {"cls": 300.0}, caps)
    burst = ScalingProblem(slots, (HI, LO), {"cls": 900.0}, caps)
    plan = solve(calm)
    assert set(plan.hosts.values()) == {"cls-hi"}
    plan = solve(burst, current=plan)
    verify(burst, plan)
    assert "cls-lo" in plan.hosts.values() and plan.shed == {}
    plan = solve(calm, current=plan)
    verify(calm, plan)
    assert set(plan.hosts.values()) == {"cls-hi"} and plan.effective_accuracy == pytest.approx(90.0)


# --- a brute-force optimum on random small instances ---------------------------------------


def brute_force(problem: ScalingProblem, beta: float) -> tuple[float | None, float]:
    """(best demand-weighted accuracy carrying everything at headroom beta, or None; least shed),
    over every host assignment, routing each family most-accurate-first."""
    slot_ids = [s.slot_id for s in problem.slots]
    names = [v.variant for v in problem.variants]
    accuracy = {v.variant: v.accuracy for v in problem.variants}
    family = {v.variant: v.family for v in problem.variants}
    total = sum(problem.demand.values())
    best, least_shed = None, math.inf
    for choice in itertools.product([None, *names], repeat=len(slot_ids)):
        room: dict[str, float] = {}
        for slot_id, v in zip(slot_ids, choice, strict=True):
            if v is not None:
                cap = problem.capacity.get((slot_id, v), 0.0)
                if cap <= 0:
                    break
                room[v] = room.get(v, 0.0) + cap / beta
        else:
            if not fits_devices(problem, [s for s, v in zip(problem.slots, choice, strict=True) if v is not None],
                                [v for v in choice if v is not None]):
                continue
            score, shed = 0.0, 0.0
            for fam, demand in problem.demand.items():
                left = demand
                for v in sorted((v for v in room if family[v] == fam), key=lambda v: -accuracy[v]):
                    carried = min(left, room[v])
                    score += carried * accuracy[v]
                    left -= carried
                shed += left
            least_shed = min(least_shed, shed)
            value = score / total if total > 0 else 0.0
            if shed <= 1e-9 * max(total, 1) and (best is None or value > best):
                best = value
    return best, least_shed


def fits_devices(problem: ScalingProblem, filled, hosted=None) -> bool:
    """Whether the ``filled`` slots fit their devices' cores and, ``hosted`` giving each its
    variant, their memory bounds."""
    used: dict[tuple[str, str], int] = {}
    held: dict[tuple[str, str], int] = {}
    need = {v.variant: v.memory_bytes for v in problem.variants}
    for i, slot in enumerate(filled):
        used[slot.device_key] = used.get(slot.device_key, 0) + slot.size
        if hosted is not None:
            held[slot.device_key] = held.get(slot.device_key, 0) + need[hosted[i]]
    return all(size <= problem.device_capacity.get(key, math.inf) for key, size in used.items()) and \
        all(n <= (problem.device_memory.get(key) or math.inf) for key, n in held.items())


def all_cheapest(problem: ScalingProblem, beta: float) -> float | None:
    """The accuracy of the best allocation using only each family's least accurate variant."""
    cheapest = {}
    for v in problem.variants:
        if v.family not in cheapest or v.accuracy < cheapest[v.family].accuracy:
            cheapest[v.family] = v
    only = tuple(cheapest.values())
    caps = {k: r for k, r in problem.capacity.items() if k[1] in {v.variant for v in only}}
    return brute_force(ScalingProblem(problem.slots, only, problem.demand, caps, device_capacity=problem.device_capacity,
                                      device_memory=problem.device_memory), beta)[0]


@st.composite
def small_problems(draw) -> ScalingProblem:
    n_families = draw(st.integers(1, 2))
    variants = []
    for f in range(n_families):
        for j in range(draw(st.integers(1, 2))):
            variants.append(VariantChoice(f"f{f}v{j}", f"f{f}", float(draw(st.integers(50, 100))), 100.0))
    slots = gpus(draw(st.integers(1, 3)))
    caps = {(s.slot_id, v.variant): float(draw(st.sampled_from([0, 0, 20, 50, 80, 150]))) for s in slots for v in variants}
    demand = {f"f{f}": float(draw(st.sampled_from([0, 10, 40, 90, 200]))) for f in range(n_families)}
    return ScalingProblem(slots, tuple(variants), demand, caps)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_plans_are_feasible_and_as_accurate_as_the_brute_force_optimum(problem: ScalingProblem) -> None:
    check_against_brute_force(problem)


def check_against_brute_force(problem: ScalingProblem) -> None:
    plan = solve(problem, beta=1.0, min_beta=1.0, mip_gap=0.0, time_limit_s=10.0)
    verify(problem, plan)
    best, least_shed = brute_force(problem, 1.0)
    servable = {v.family for v in problem.variants if any(hostable(problem, s.slot_id, v.variant) for s in problem.slots)}
    unservable_demand = sum(d for f, d in problem.demand.items() if f not in servable)
    if best is not None:
        assert plan.status == "optimal" and plan.total_shed == pytest.approx(0.0, abs=1e-6)
        assert plan.effective_accuracy == pytest.approx(best, rel=1e-6) or sum(problem.demand.values()) == 0
        cheap = all_cheapest(problem, 1.0)
        assert cheap is None or plan.effective_accuracy >= cheap - 1e-6
    elif unservable_demand == 0:
        assert plan.status == "infeasible"
        assert plan.total_shed >= least_shed - 1e-6
    else:
        assert plan.total_shed >= unservable_demand - 1e-6


@st.composite
def core_problems(draw) -> ScalingProblem:
    n_families = draw(st.integers(1, 2))
    variants = [VariantChoice(f"f{f}v{j}", f"f{f}", float(draw(st.integers(50, 100))), 100.0)
                for f in range(n_families) for j in range(draw(st.integers(1, 2 if n_families == 1 else 1)))]
    hosts = [f"h{i}" for i in range(draw(st.integers(1, 2)))]
    slots, caps, sizes = [], {}, {}
    for host in hosts:
        cores = draw(st.integers(2, 4 if len(hosts) == 1 else 2))
        sizes[(host, "cpu0")] = cores
        one_core = {v.variant: float(draw(st.sampled_from([0, 10, 25, 40]))) for v in variants}
        whole = {v.variant: float(draw(st.sampled_from([0, 1, 1.5, 3]))) * cores * one_core[v.variant] for v in variants}
        for i in range(cores + 1):
            slot = Slot(f"{host}/{i}", "cpu0", "cpu", cores if i == cores else 1, agent_id=host)
            slots.append(slot)
            caps.update({(slot.slot_id, v): (whole if i == cores else one_core)[v] for v in one_core})
    demand = {f"f{f}": float(draw(st.sampled_from([0, 10, 40, 90, 200]))) for f in range(n_families)}
    return ScalingProblem(tuple(slots), tuple(variants), demand, caps, device_capacity=sizes)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(core_problems())
def test_hosts_offered_as_cores_or_whole_are_planned_as_well_as_the_brute_force_optimum(problem: ScalingProblem) -> None:
    # A host's one-core slots are interchangeable: the solver counts them as one class.
    check_against_brute_force(problem)


@st.composite
def memory_problems(draw) -> ScalingProblem:
    """Hosts offered as cores or whole, whose memory holds only some mixes of the variants' needs."""
    problem = draw(core_problems())
    gib = 1 << 30
    variants = tuple(dataclasses.replace(v, memory_bytes=draw(st.sampled_from([0, 1, 2, 3])) * gib)
                     for v in problem.variants)
    memory = {key: draw(st.sampled_from([0, 2, 3, 5])) * gib for key in problem.device_capacity}
    return dataclasses.replace(problem, variants=variants, device_memory=memory)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(memory_problems())
def test_hosts_whose_memory_bounds_the_mix_are_planned_as_well_as_the_brute_force_optimum(problem) -> None:
    check_against_brute_force(problem)


def test_a_hosts_interchangeable_cores_are_one_class_of_the_milp() -> None:
    from controller.accuracy_milp import Index

    variants = (HI, LO)
    slots, caps, sizes = [], {}, {}
    for host, cores in (("big", 16), ("edge", 4)):
        sizes[(host, "cpu0")] = cores
        for i in range(cores + 1):
            slot = Slot(f"{host}/{i:02d}", "cpu0", "cpu", cores if i == cores else 1, agent_id=host)
            slots.append(slot)
            caps.update({(slot.slot_id, "cls-hi"): 10.0 * slot.size, (slot.slot_id, "cls-lo"): 25.0 * slot.size})
    problem = ScalingProblem(tuple(slots), variants, {"cls": 300.0}, caps, device_capacity=sizes)

    index = Index(problem, {}, shed_penalty=1.0)

    assert sorted(len(unit) for unit in index.units) == [1, 1, 4, 16]
    plan = solve(problem, beta=1.0, time_limit_s=30.0)
    verify(problem, plan)
    assert plan.status == "optimal" and plan.shed == {}
    # 300 req/s on 20 cores carrying 10 (accurate) or 25 (cheap) req/s each: 13 accurate, 7 cheap.
    assert plan.effective_accuracy == pytest.approx((130 * 90 + 170 * 70) / 300)


def highest_rung(problem: ScalingProblem, ladder: tuple[float, ...]) -> float | None:
    """The highest beta some host assignment meets: everything carried within capacity / beta
    (beta >= 1), or every family served at least beta of its demand (beta < 1)."""
    slot_ids = [s.slot_id for s in problem.slots]
    names = [v.variant for v in problem.variants]
    family = {v.variant: v.family for v in problem.variants}
    servable = {family[v] for (s, v), r in problem.capacity.items() if r > 0}
    best = None
    for choice in itertools.product([None, *names], repeat=len(slot_ids)):
        room: dict[str, float] = {}
        for slot_id, v in zip(slot_ids, choice, strict=True):
            if v is not None:
                room[family[v]] = room.get(family[v], 0.0) + problem.capacity.get((slot_id, v), 0.0)
        for beta in ladder:
            ok = all(room.get(f, 0.0) / max(beta, 1.0) >= min(beta, 1.0) * d * (1 - 1e-9)
                     for f, d in problem.demand.items() if f in servable and d > 0)
            if ok:
                best = beta if best is None else max(best, beta)
                break
    return best


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_beta_is_the_highest_rung_of_the_ladder_the_fleet_can_meet(problem: ScalingProblem) -> None:
    plan = solve(problem, time_limit_s=10.0)
    verify(problem, plan)
    expected = highest_rung(problem, beta_ladder(1.05, 0.2))
    if expected is None:
        assert plan.status == "infeasible" and plan.beta < 0.2
    else:
        assert plan.status == "optimal" and plan.beta == pytest.approx(expected)


# --- capacities from profiles, workers from a plan -------------------------------------------


def linear_profile(variant: str = "m") -> LatencyModel:
    """p99 latency = 2 + batch * 100 / partition ms on a "cuda" device, no margin."""
    points = [ProfilePoint(variant, "cuda", part, b, 2.0 + b * 100 / part, 2.0 + b * 100 / part)
              for part in (50, 100) for b in (1, 2, 4, 8, 16, 32)]
    return LatencyModel(ProfileTable(points), margin=1.0)


def test_capacities_follow_the_half_slo_rule_and_pay_for_a_neighbour() -> None:
    latency = linear_profile()
    alpha = InterferenceModel({"cuda": (1.3, 0.0, 0.0)}, lambda kind, v, p, b: (p / 100,))
    slots = (Slot("alone", "gpu1", "cuda", 100), Slot("half-a", "gpu0", "cuda", 50), Slot("half-b", "gpu0", "cuda", 50))
    variants = (VariantChoice("m", "m", 90.0, 40.0), VariantChoice("slow", "m", 99.0, 40.0))  # no profile for "slow"
    caps = capacities(slots, variants, latency, alpha)
    # alone, 100 %: 2 + b <= 20 -> b = 16 (18 ms) -> 888.9 req/s
    assert caps[("alone", "m")] == (pytest.approx(16_000 / 18), 16)
    # 50 % next to a neighbour: 1.3 (2 + 2b) <= 20 -> b = 4 (13 ms) -> 307.7 req/s
    assert caps[("half-a", "m")] == (pytest.approx(4_000 / 13), 4)
    assert ("alone", "slow") not in caps
    no_interference = capacities(slots, variants, latency, None)
    assert no_interference[("half-b", "m")] == (pytest.approx(8_000 / 18), 8)  # 2 + 2b <= 20 -> b = 8
    tight = capacities(slots, (VariantChoice("m", "m", 90.0, 5.0),), latency, None)
    assert tight == {}  # batch 1 already takes 3 ms > 2.5 ms on every slot
    rates, batches = split_capacities(caps)
    assert rates[("alone", "m")] == pytest.approx(16_000 / 18) and batches[("half-a", "m")] == 4


def test_alternative_partitions_of_a_device_are_not_neighbours() -> None:
    latency = linear_profile()
    alpha = InterferenceModel({"cuda": (1.3, 0.0, 0.0)}, lambda kind, v, p, b: (p / 100,))
    slots = (Slot("full", "gpu0", "cuda", 100), Slot("half-a", "gpu0", "cuda", 50), Slot("half-b", "gpu0", "cuda", 50))
    caps = capacities(slots, (VariantChoice("m", "m", 90.0, 40.0),), latency, alpha, device_capacity={("", "gpu0"): 100})
    assert caps[("full", "m")] == (pytest.approx(16_000 / 18), 16)  # nothing fits beside 100 %
    assert caps[("half-a", "m")] == (pytest.approx(4_000 / 13), 4)


def test_a_plan_becomes_one_worker_per_filled_slot() -> None:
    slots = (Slot("s0", "gpu0", "cuda", 50, agent_id="a1"), Slot("s1", "gpu0", "cuda", 50, agent_id="a1"),
             Slot("s2", "cpu", "cpu", 2, agent_id="a2"))
    plan = ScalingPlan({"s0": "cls-hi", "s2": "cls-lo"}, {}, {}, 80.0, 1.05, {}, 0.0, "optimal")
    desired = to_desired(plan, slots, {("s0", "cls-hi"): 8, ("s1", "cls-hi"): 4})
    assert desired == [
        DesiredWorker("a1", "gpu0", "cuda", 50, ("cls-hi",), (("cls-hi", 8),)),
        DesiredWorker("a2", "cpu", "cpu", 2, ("cls-lo",), (("cls-lo", 1),)),
    ]


# --- the ladder and the re-solve policy ------------------------------------------------------


def test_beta_ladder_steps_like_proteus() -> None:
    ladder = beta_ladder(1.05, 0.2)
    assert ladder[:3] == (1.05, 1.0, 0.95) and ladder[-1] == pytest.approx(0.2) and len(ladder) == 18
    assert beta_ladder(1.7, 1.4) == (1.7, 1.6, 1.5, 1.45, 1.4)


def test_resolve_policy_runs_on_its_period_and_sooner_when_demand_jumps() -> None:
    policy = ResolvePolicy(period_s=10.0, fast_period_s=2.0, jump=0.2, rises_only=False)
    last = {"a": 100.0, "b": 50.0}
    assert policy.due(0.0, last, None, None)  # never solved
    assert not policy.due(105.0, {"a": 110.0, "b": 50.0}, last, 100.0)  # 10 %: wait for the period
    assert policy.due(110.0, last, last, 100.0)  # the period
    assert not policy.due(101.0, {"a": 150.0, "b": 50.0}, last, 100.0)  # a jump, but too soon
    assert policy.due(102.0, {"a": 150.0, "b": 50.0}, last, 100.0)
    assert policy.due(102.0, {"a": 100.0, "b": 30.0}, last, 100.0)  # falls count too
    assert policy.due(102.0, {**last, "c": 5.0}, last, 100.0)  # a new family
    assert not policy.due(102.0, {**last, "c": 0.5}, last, 100.0)  # below the noise floor
    rises = ResolvePolicy(period_s=10.0, fast_period_s=2.0, jump=0.2)
    assert rises.due(102.0, {"a": 150.0, "b": 50.0}, last, 100.0)
    assert not rises.due(102.0, {"a": 100.0, "b": 30.0}, last, 100.0)  # a fall waits for the period
    assert rises.due(110.0, {"a": 100.0, "b": 30.0}, last, 100.0)


def test_a_current_plan_that_no_longer_fits_its_device_s_memory_is_not_kept() -> None:
    """A variant's need (or a device's memory) changed since the plan was made: what runs now is
    routed only as far as it fits, and the plan returned fits."""
    gib = 1 << 30
    big = VariantChoice("cls-hi", "cls", 90.0, 100.0, memory_bytes=2 * gib)
    small = VariantChoice("cls-lo", "cls", 70.0, 100.0, memory_bytes=gib)
    slots = tuple(Slot(f"h/{i}", "cpu0", "cpu", 1, agent_id="h") for i in range(2))
    caps = {(s.slot_id, v): rate for s in slots for v, rate in (("cls-hi", 50.0), ("cls-lo", 100.0))}
    # 60 req/s: two accurate workers would carry it all at full accuracy, but only one fits beside another.
    problem = ScalingProblem(slots, (big, small), {"cls": 60.0}, caps, device_capacity={("h", "cpu0"): 2},
                             device_memory={("h", "cpu0"): 3 * gib})
    both_big = ScalingPlan({"h/0": "cls-hi", "h/1": "cls-hi"}, {}, {}, 90.0, 1.05, {}, 0.0, "optimal")
    plan = solve(problem, current=both_big, beta=1.0, min_beta=0.5)
    verify(problem, plan)  # memory included
    assert sorted(plan.hosts.values()) == ["cls-hi", "cls-lo"]
