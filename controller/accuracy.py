"""Accuracy scaling under overload: which variant of each family runs on which gpu-let, and how
requests split among them, so that a fixed fleet keeps its deadlines losing as little accuracy
as possible (Proteus' joint optimisation, made gpu-let aware).

Pure and synchronous; the only outside state read is an injectable timer that bounds the solve.
The optimisation itself is in ``controller.accuracy_milp``. Imports the planning core (profiles,
interference) and the reconciler's DesiredWorker only; never sockets, actors or the registry.

"Warm start": scipy's ``milp`` takes no initial solution, so the current plan is used as
(a) an incumbent routed for the new demand in closed form before any solve: the search for the
highest beta rung starts from the rung it meets, and a solver answer that is not better keeps it;
(b) the fallback when the time budget runs out; (c) a tie-break: when the solver's class counts
are mapped back to slots, and on slots the optimum leaves idle, a slot keeps its current variant.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.accuracy_milp import TINY, Index, Routed, Rung
from controller.planning import InterferenceModel, LatencyModel
from controller.reconciler import DesiredWorker

BATCHES = (1, 2, 4, 8, 16, 32)
SHED_PENALTY = 10.0  # one shed request costs this many best-accuracy units: shed only when forced
SEARCH_SHARE = 0.5  # of the time budget, at most, for finding the highest rung
STATUSES = ("optimal", "time_limit", "kept_current", "infeasible")


@dataclass(frozen=True, slots=True)
class Slot:
    """A gpu-let the solver can fill with one variant: ``size`` cores or MPS % of a device."""

    slot_id: str
    device_id: str
    kind: str
    size: int
    agent_id: str = ""

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"slot {self.slot_id!r} needs a positive size")

    @property
    def device_key(self) -> tuple[str, str]:
        return (self.agent_id, self.device_id)


@dataclass(frozen=True, slots=True)
class VariantChoice:
    """A variant of a family, with its accuracy (any unit, higher is better) and latency SLO."""

    variant: str
    family: str
    accuracy: float
    slo_ms: float
    memory_bytes: int = 0  # what a slot hosting it holds of its device's memory

    def __post_init__(self) -> None:
        if not (self.accuracy >= 0 and math.isfinite(self.accuracy)) or not self.slo_ms > 0:
            raise ValueError(f"variant {self.variant!r} needs a finite accuracy >= 0 and a positive SLO")
        if self.memory_bytes < 0:
            raise ValueError(f"variant {self.variant!r} needs a memory need >= 0")


@dataclass(frozen=True, slots=True)
class ScalingProblem:
    """Slots, variants, demand (family -> req/s) and capacity ((slot_id, variant) -> peak req/s
    within the SLO; 0 or missing: cannot host). ``device_capacity`` ((agent_id, device_id) ->
    cores, or 100 on a GPU) makes the slots of that device alternatives whose filled sizes must
    fit; without it the slots of a device are disjoint partitions. ``device_memory``
    ((agent_id, device_id) -> bytes its slots may hold together; missing or 0: no bound) bounds
    the memory needs of the variants its filled slots host."""

    slots: tuple[Slot, ...]
    variants: tuple[VariantChoice, ...]
    demand: Mapping[str, float]
    capacity: Mapping[tuple[str, str], float]
    device_capacity: Mapping[tuple[str, str], int] = field(default_factory=dict)
    device_memory: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        slot_ids = [s.slot_id for s in self.slots]
        names = [v.variant for v in self.variants]
        if len(set(slot_ids)) != len(slot_ids) or len(set(names)) != len(names):
            raise ValueError("slot ids and variant names must be unique")
        for family, rate in self.demand.items():
            if not (rate >= 0 and math.isfinite(rate)):
                raise ValueError(f"demand of {family!r} must be finite and >= 0")
        known_slots, known_variants = set(slot_ids), set(names)
        for (slot_id, variant), rate in self.capacity.items():
            if slot_id not in known_slots or variant not in known_variants:
                raise ValueError(f"capacity given for an unknown slot or variant: {(slot_id, variant)!r}")
            if not (rate >= 0 and math.isfinite(rate)):
                raise ValueError(f"capacity of {(slot_id, variant)!r} must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class ScalingPlan:
    """What to deploy and how to route. ``routing`` (family -> slot -> share) and
    ``variant_fractions`` (family -> variant -> share) split each family's *served* requests and
    sum to 1; ``effective_accuracy`` is the accuracy of the served requests, weighted by their
    rates; ``shed`` is the req/s knowingly not carried, per family; ``load`` the req/s routed
    to each slot. ``beta`` >= 1 is the capacity headroom kept; below 1, every family still gets
    at least that share of its demand served.

    ``status``: "optimal" (within the MIP gap at the highest rung), "time_limit" (the best found
    in time; with no hosts nothing was found and the caller should keep what runs),
    "kept_current" (the current hosts re-routed for this demand: nothing better was found),
    "infeasible" (not even ``min_beta`` can be met: a best-effort plan shedding what it must)."""

    hosts: Mapping[str, str]
    routing: Mapping[str, Mapping[str, float]]
    variant_fractions: Mapping[str, Mapping[str, float]]
    effective_accuracy: float
    beta: float
    shed: Mapping[str, float]
    solve_s: float
    status: str
    load: Mapping[str, float] = field(default_factory=dict)

    @property
    def total_shed(self) -> float:
        return sum(self.shed.values())


def beta_ladder(beta: float, min_beta: float) -> tuple[float, ...]:
    """Proteus' step-down: -0.1 while above 1.5, -0.05 below, down to ``min_beta``."""
    out, b = [], float(beta)
    while b >= min_beta - TINY:
        out.append(b)
        b = round(b - (0.1 if b > 1.5 else 0.05), 10)
    return tuple(out)


def solve(
    problem: ScalingProblem,
    *,
    beta: float = 1.05,
    min_beta: float = 0.2,
    time_limit_s: float = 2.0,
    current: ScalingPlan | None = None,
    mip_gap: float = 0.01,
    shed_penalty: float = SHED_PENALTY,
    timer: Callable[[], float] = time.perf_counter,
) -> ScalingPlan:
    """The highest rung of the beta ladder the fleet can meet, and the most accurate plan there.

    Steps, all within ``time_limit_s``: route the current plan (if any) and a quick plan that
    spreads the slots over the families, in closed form; unless one of them already meets the
    top rung, one HiGHS call finds the highest rung (with at most half of the time left); at
    that rung the LP relaxation gives a bound, and the accuracy MILP runs only if no plan in
    hand is within ``mip_gap`` of it. The best plan found is returned, the current one unless
    another beats it by more than the gap. A family no slot can host is shed whole and does
    not pull beta down for the others. Deterministic for the same inputs whenever no call hits
    the time limit."""
    if not (0 < min_beta <= beta) or time_limit_s <= 0 or not 0 <= mip_gap < 1:
        raise ValueError("need 0 < min_beta <= beta, time_limit_s > 0 and 0 <= mip_gap < 1")
    start = timer()

    def left() -> float:
        return time_limit_s - (timer() - start)

    index = Index(problem, current.hosts if current is not None else {}, shed_penalty)
    ladder = beta_ladder(beta, min_beta)
    rungs = [Rung.of(b) for b in ladder] + [Rung.of(min_beta, best_effort=True)]
    has_pairs = len(index.p_var) > 0
    incumbent = _first_met(index, index.current, rungs) if current is not None else None
    quick_at, _ = quick = _first_met(index, index.spread_cheapest(), rungs)
    # 1. the highest rung: no search when a plan in hand meets the top one
    at = min(quick_at, incumbent[0] if incumbent is not None else quick_at)
    proven, searched = at == 0, None
    if at > 0 and (budget := left()) > 0:
        met, possible, searched = index.solve_service(ladder, budget * SEARCH_SHARE)
        met = max(met, len(ladder) - at)
        at, proven = len(ladder) - met, possible <= met
    rung = rungs[at]
    # 2. the most accurate plan there; candidates in order of preference when values tie
    candidates: list[tuple[Routed, bool]] = []  # (plan, is the current one)
    if incumbent is not None and incumbent[0] == at:
        candidates.append((incumbent[1], True))
    for hosts in (searched, quick[1].hosts if quick_at == at else None):
        if hosts is not None:
            candidates.append((index.fill_spare(index.route(hosts, rung), rung), False))
    closed = not has_pairs
    if has_pairs and left() > 0:
        # the LP bound spares the MILP when a plan in hand (typically the current one) is close enough
        closed = _within(candidates, index, rung, index.relaxation_bound(rung, left()), mip_gap)
        if not closed and left() > 0:
            state, hosts = index.solve_accuracy(rung, left(), mip_gap)
            if hosts is not None:
                candidates.insert(1 if candidates and candidates[0][1] else 0,
                                  (index.fill_spare(index.route(hosts, rung), rung), False))
            closed = state == "optimal"
    best = None
    for routed, is_current in candidates:  # a new plan must beat the current one by the MIP gap
        margin = max(TINY, mip_gap * abs(best[0].value)) if best is not None and best[1] else TINY
        if index.meets(routed, rung) and (best is None or routed.value > best[0].value + margin):
            best = (routed, is_current)
    if best is None:
        return _plan(index, index.route({}, rung), 0.0, "time_limit", timer() - start)
    routed, is_current = best
    best_effort = at == len(ladder)
    if is_current:
        status = "kept_current"
    elif proven and (closed or best_effort):
        status = "infeasible" if best_effort else "optimal"
    else:
        status = "time_limit"
    reported = rung.beta
    if best_effort:  # report the share every family still gets
        reported = min((1 - routed.shed[k] / index.demand[k] for k in range(len(index.families)) if index.servable[k]),
                       default=min_beta)
    return _plan(index, routed, reported, status, timer() - start)


def _first_met(index: Index, hosts: Mapping[int, int], rungs: Sequence[Rung]) -> tuple[int, Routed]:
    """The highest rung these hosts meet (the last, best effort, always is) and their routing there."""
    for at, rung in enumerate(rungs):
        routed = index.route(hosts, rung)
        if index.meets(routed, rung):
            return at, routed
    raise AssertionError("the best-effort rung is met by any plan")


def _within(candidates: Sequence[tuple[Routed, bool]], index: Index, rung: Rung, bound: float, gap: float) -> bool:
    values = [r.value for r, _ in candidates if index.meets(r, rung)]
    return bool(values) and math.isfinite(bound) and bound - max(values) <= gap * max(abs(max(values)), 1e-6)


def _plan(index: Index, routed: Routed, beta: float, status: str, solve_s: float) -> ScalingPlan:
    routing: dict[str, dict[str, float]] = {}
    fractions: dict[str, dict[str, float]] = {}
    shed: dict[str, float] = {}
    for k, family in enumerate(index.families):
        if routed.shed[k] > 0:
            shed[family] = float(routed.shed[k])
        carried = float(index.demand[k] - routed.shed[k])
        if carried <= 0:
            continue
        routing[family] = {index.slots[i].slot_id: float(routed.load[i] / carried) for i in sorted(routed.hosts)
                           if index.family_of[routed.hosts[i]] == k and routed.load[i] > 0}
        fractions[family] = {index.variants[j].variant: float(rate / carried) for j, rate in sorted(routed.served.items())
                             if index.family_of[j] == k}
    served = sum(routed.served.values())
    accuracy = sum(rate * index.variants[j].accuracy for j, rate in routed.served.items()) / served if served > 0 else 0.0
    return ScalingPlan(
        hosts={index.slots[i].slot_id: index.variants[j].variant for i, j in sorted(routed.hosts.items())},
        routing=routing,
        variant_fractions=fractions,
        effective_accuracy=float(accuracy),
        beta=float(beta),
        shed=shed,
        solve_s=solve_s,
        status=status,
        load={index.slots[i].slot_id: float(rate) for i, rate in sorted(routed.load.items()) if rate > 0},
    )


# --- from profiles to capacities, and from a plan to workers ----------------------------------


def capacities(
    slots: Sequence[Slot],
    variants: Sequence[VariantChoice],
    latency: LatencyModel,
    interference: InterferenceModel | None,
    *,
    batches: Sequence[int] = BATCHES,
    device_capacity: Mapping[tuple[str, str], int] | None = None,
) -> dict[tuple[str, str], tuple[float, int]]:
    """(slot_id, variant) -> (peak req/s within the SLO, batch), for every pair that can host.

    Proteus' rule on a gpu-let: the largest batch B whose latency, times the predicted
    interference slowdown, is within SLO/2 (one batch waiting, one running); throughput
    B * 1000 / that latency. The slowdown is the worst the model predicts over the neighbour
    slots of the device (those that fit beside it, when ``device_capacity`` is given) running any
    variant they could host at its own solo batch: the same solve decides what the neighbour
    runs, so this is a safe bound. Pairwise, as the model is: several neighbours take the max."""
    sizes = sorted({int(b) for b in batches if int(b) > 0})
    if not sizes:
        raise ValueError("need at least one positive batch size")
    solo: dict[tuple[str, str, int], tuple[float, int] | None] = {}

    def fastest(v: VariantChoice, kind: str, size: int, slowdown: Callable[[int], float]) -> tuple[float, int] | None:
        if not latency.has(v.variant, kind):
            return None
        curve = latency.curve(v.variant, kind, size, sizes[-1])
        for b in reversed(sizes):
            alpha = slowdown(b)
            if curve[b - 1] * alpha <= v.slo_ms / 2:
                return 1000.0 * b / (curve[b - 1] * alpha), b
        return None

    def alone(v: VariantChoice, kind: str, size: int) -> tuple[float, int] | None:
        key = (v.variant, kind, size)
        if key not in solo:
            solo[key] = fastest(v, kind, size, lambda b: 1.0)
        return solo[key]

    worst: dict[tuple, float] = {}

    def slowdown(slot: Slot, v: VariantChoice, batch: int, neighbours: Sequence[Slot]) -> float:
        out = 1.0
        for other in neighbours:
            key = (slot.kind, slot.size, other.size, v.variant, batch)
            if key not in worst:
                theirs = [(o.variant, other.size, found[1]) for o in variants
                          if (found := alone(o, other.kind, other.size)) is not None]
                worst[key] = max((interference.predict(slot.kind, (v.variant, slot.size, batch), t) for t in theirs), default=1.0)
            out = max(out, worst[key])
        return out

    active = interference is not None and interference.enabled
    by_device: dict[tuple[str, str], list[Slot]] = {}
    for s in slots:
        by_device.setdefault(s.device_key, []).append(s)
    out: dict[tuple[str, str], tuple[float, int]] = {}
    for s in sorted(slots, key=lambda s: s.slot_id):
        room = None if device_capacity is None else device_capacity.get(s.device_key)
        neighbours = [o for o in by_device[s.device_key]
                      if active and o.slot_id != s.slot_id and (room is None or o.size + s.size <= room)]
        for v in sorted(variants, key=lambda v: v.variant):
            if alone(v, s.kind, s.size) is None:
                continue  # a neighbour only slows it further
            found = fastest(v, s.kind, s.size, lambda b, s=s, v=v, n=neighbours: slowdown(s, v, b, n))
            if found is not None:
                out[(s.slot_id, v.variant)] = found
    return out


def split_capacities(
    caps: Mapping[tuple[str, str], tuple[float, int]],
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], int]]:
    """``capacities()`` as (rates for ScalingProblem.capacity, batches for ``to_desired``)."""
    return {k: r for k, (r, _) in caps.items()}, {k: b for k, (_, b) in caps.items()}


@dataclass(frozen=True, slots=True)
class ResolvePolicy:
    """When to re-solve: every ``period_s``, or once ``fast_period_s`` has passed when some
    family's demand rose by more than ``jump`` of what the last solve used (and by at least
    ``min_change_rps``, so that near-zero rates do not churn the mesh). With ``rises_only``
    (the default) a fall waits for the period: keeping cheaper variants a few seconds longer
    costs some accuracy, re-planning on every dip costs switches; Proteus re-solves on both."""

    period_s: float = 10.0
    fast_period_s: float = 1.0
    jump: float = 0.2
    min_change_rps: float = 1.0
    rises_only: bool = True

    def due(self, now: float, demand: Mapping[str, float], last_demand: Mapping[str, float] | None,
            last_solve: float | None) -> bool:
        if last_solve is None or last_demand is None:
            return True
        elapsed = now - last_solve
        return elapsed >= self.period_s or (elapsed >= self.fast_period_s and self.jumped(demand, last_demand))

    def jumped(self, demand: Mapping[str, float], last_demand: Mapping[str, float]) -> bool:
        for family in set(demand) | set(last_demand):
            new, old = demand.get(family, 0.0), last_demand.get(family, 0.0)
            change = new - old if self.rises_only else abs(new - old)
            if change >= self.min_change_rps and (old <= 0 or change > self.jump * old):
                return True
        return False


def to_desired(plan: ScalingPlan, slots: Sequence[Slot], batches: Mapping[tuple[str, str], int]) -> list[DesiredWorker]:
    """One worker per filled slot: a partition of the slot's size serving the chosen variant at
    its planned batch (1 when unknown)."""
    out = []
    for s in sorted(slots, key=lambda s: s.slot_id):
        variant = plan.hosts.get(s.slot_id)
        if variant is not None:
            batch = int(batches.get((s.slot_id, variant), 1))
            out.append(DesiredWorker(s.agent_id, s.device_id, s.kind, s.size, (variant,), ((variant, batch),)))
    return out


__all__ = [
    "BATCHES",
    "STATUSES",
    "ResolvePolicy",
    "ScalingPlan",
    "ScalingProblem",
    "Slot",
    "VariantChoice",
    "beta_ladder",
    "capacities",
    "solve",
    "split_capacities",
    "to_desired",
]
