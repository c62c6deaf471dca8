"""Accuracy scaling: one MILP over variant choice x gpu-let placement x routing fractions (Proteus).

Maximises demand-weighted accuracy subject to throughput, with a headroom beta that steps down
(then sheds an explicit, per-family fraction) when even the cheapest variants cannot carry the
demand. Solved with HiGHS through ``scipy.optimize.milp``. Pure and synchronous: the only
outside state read is the injected timer that bounds the solve. Imports numpy and scipy only.

Formulation (the exact linearisation of Proteus' bilinear z.x terms). For every pair p = (slot s,
variant j of family k) whose capacity is positive: binary x_p (s hosts j) and continuous v_p
(share of k's demand that s serves with j); per demanded family a shed share u_k.
    max  sum_p (d_k/D)(A_j/A_max) v_p - lambda sum_k (d_k/D) u_k
    s.t. sum_j x_sj <= 1                   per slot (a slot may stay empty)
         sum_s size_s sum_j x_sj <= C_dev  per device with a known capacity (alternative partitionings)
         v_p <= min(1, cap_p / (f d_k)) x_p   per pair: v <= x and the capacity with headroom f in one row
         sum_p v_p + u_k = 1               per family
         0 <= u_k <= 0 (beta >= 1), 1 - beta (beta < 1), 1 (best effort)
where f = max(beta, 1). Since a slot hosts one variant, the per-pair rows are exactly Proteus'
per-device capacity rows. Routing for the chosen hosts is then recomputed in closed form (most
accurate first, spread over the slots hosting a variant in proportion to their capacity): for
fixed hosts that is optimal, so it only ever improves on the solver's continuous part.

"Warm start": scipy's ``milp`` takes no initial solution. The current plan is used instead as
(a) an incumbent evaluated in closed form before any solve; the beta ladder never goes below the
rung the incumbent already reaches, and at that rung a solver answer that is not better keeps
it; (b) the fallback when the time budget runs out; and (c) a tie-break: a tiny objective bonus
for keeping current hosts, and slots the optimum leaves idle keep their current variant.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

SHED_PENALTY = 10.0  # cost of one shed request, in units of the best accuracy: shed only when forced
KEEP_BONUS = 1e-4  # total objective bonus for keeping every current host: a tie-break, not a preference
TINY = 1e-9
STATUSES = ("optimal", "time_limit", "kept_current", "infeasible")


@dataclass(frozen=True, slots=True)
class Slot:
    """A gpu-let the MILP can fill with one variant: ``size`` cores or MPS % of a device."""

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
    """A variant of a family with its accuracy (any unit, higher is better) and latency SLO."""

    variant: str
    family: str
    accuracy: float
    slo_ms: float

    def __post_init__(self) -> None:
        if not (self.accuracy >= 0 and math.isfinite(self.accuracy)) or not self.slo_ms > 0:
            raise ValueError(f"variant {self.variant!r} needs a finite accuracy >= 0 and a positive SLO")


@dataclass(frozen=True, slots=True)
class ScalingProblem:
    """Slots, variants, demand (family -> req/s) and capacity ((slot_id, variant) -> peak req/s
    within the SLO; 0 or missing: cannot host). ``device_capacity`` ((agent_id, device_id) ->
    cores or 100) makes slots of one device alternatives: the sizes of the filled ones must fit.
    Without it the slots of a device are taken to be disjoint."""

    slots: tuple[Slot, ...]
    variants: tuple[VariantChoice, ...]
    demand: Mapping[str, float]
    capacity: Mapping[tuple[str, str], float]
    device_capacity: Mapping[tuple[str, str], int] = field(default_factory=dict)

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
                raise ValueError(f"capacity given for unknown slot or variant {(slot_id, variant)!r}")
            if not (rate >= 0 and math.isfinite(rate)):
                raise ValueError(f"capacity of {(slot_id, variant)!r} must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class ScalingPlan:
    """What to deploy and how to route. ``routing`` and ``variant_fractions`` are shares of each
    family's *served* requests (each sums to 1); ``shed`` (req/s) is what is knowingly not
    carried; ``load`` is the req/s routed to each filled slot. ``beta`` >= 1 is the capacity
    headroom kept; below 1, every family still gets at least that share of its demand served.
    ``status``: "optimal" (solved to the gap), "time_limit" (best solution found in time; with no
    hosts, nothing was found and the caller should keep what runs), "kept_current" (the current
    hosts, re-routed for this demand, because nothing better was found in time), "infeasible"
    (even ``min_beta`` cannot be met; a best-effort plan shedding as little as it can)."""

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


@dataclass(frozen=True, slots=True)
class _Rung:
    beta: float
    factor: float  # capacity is divided by this (headroom)
    shed_cap: float  # each family may shed up to this share of its demand


def _rung(beta: float, best_effort: bool = False) -> _Rung:
    if best_effort:
        return _Rung(beta, 1.0, 1.0)
    return _Rung(beta, max(beta, 1.0), 0.0 if beta >= 1.0 else 1.0 - beta)


@dataclass(slots=True)
class _Routed:
    hosts: dict[int, int]  # slot index -> variant index
    load: dict[int, float]  # slot index -> req/s
    served: dict[int, float]  # variant index -> req/s
    shed: dict[int, float]  # family index -> req/s
    value: float  # the MILP's objective, without the keep bonus


class _Instance:
    """The data every rung shares, in one fixed order (sorted ids) so that solves are deterministic."""

    def __init__(self, problem: ScalingProblem, current: ScalingPlan | None, shed_penalty: float) -> None:
        self.slots = sorted(problem.slots, key=lambda s: s.slot_id)
        self.variants = sorted(problem.variants, key=lambda v: (v.family, v.variant))
        self.families = sorted(f for f, d in problem.demand.items() if d > 0)
        slot_at = {s.slot_id: i for i, s in enumerate(self.slots)}
        var_at = {v.variant: j for j, v in enumerate(self.variants)}
        fam_at = {f: k for k, f in enumerate(self.families)}
        self.demand = np.array([float(problem.demand[f]) for f in self.families])
        self.total = float(self.demand.sum()) or 1.0
        self.acc_max = max((v.accuracy for v in self.variants), default=0.0) or 1.0
        self.penalty = shed_penalty
        self.cap = np.zeros((len(self.slots), len(self.variants)))
        for (slot_id, variant), rate in problem.capacity.items():
            self.cap[slot_at[slot_id], var_at[variant]] = rate
        self.family_of = [fam_at.get(v.family, -1) for v in self.variants]
        pairs = [(i, j) for i in range(len(self.slots)) for j in range(len(self.variants))
                 if self.cap[i, j] > 0 and self.family_of[j] >= 0]
        self.p_slot = np.array([i for i, _ in pairs], dtype=int)
        self.p_var = np.array([j for _, j in pairs], dtype=int)
        self.p_fam = np.array([self.family_of[j] for j in self.p_var], dtype=int)
        self.p_cap = self.cap[self.p_slot, self.p_var] if pairs else np.zeros(0)
        acc = np.array([self.variants[j].accuracy for j in self.p_var])
        self.p_weight = (self.demand[self.p_fam] / self.total) * (acc / self.acc_max) if pairs else np.zeros(0)
        self.servable = np.zeros(len(self.families), dtype=bool)
        self.servable[self.p_fam] = True
        self.device_rows = []  # (capacity, slot indices) per device with a known capacity
        for key, capacity in sorted(problem.device_capacity.items()):
            members = [i for i, s in enumerate(self.slots) if s.device_key == key]
            if members:
                self.device_rows.append((float(capacity), members))
        self.current: dict[int, int] = {}
        if current is not None:
            for slot_id, variant in sorted(current.hosts.items()):
                i, j = slot_at.get(slot_id), var_at.get(variant)
                if i is not None and j is not None and self.cap[i, j] > 0:
                    self.current[i] = j

    def share_bound(self, rung: _Rung) -> np.ndarray:
        """Per pair: the largest share of its family's demand the pair can carry at this rung."""
        return np.minimum(1.0, self.p_cap / (rung.factor * self.demand[self.p_fam]))

    def could_carry(self, rung: _Rung) -> bool:
        """A cheap necessary condition: every servable family fits if it had every slot to itself."""
        if not len(self.p_var):
            return True
        best = np.zeros((len(self.families), len(self.slots)))
        np.maximum.at(best, (self.p_fam, self.p_slot), self.share_bound(rung))
        need = 1.0 - rung.shed_cap
        return bool(np.all(best.sum(axis=1)[self.servable] >= need - 1e-9))

    # --- closed-form routing for fixed hosts ---------------------------------------------------

    def route(self, hosts: Mapping[int, int], rung: _Rung) -> _Routed:
        """Most accurate variant first, each variant's load spread over its slots in proportion
        to their capacity; serving as much as the capacity allows (optimal for fixed hosts)."""
        slots_of: dict[int, list[int]] = {}
        for i, j in sorted(hosts.items()):
            slots_of.setdefault(j, []).append(i)
        load: dict[int, float] = {i: 0.0 for i in hosts}
        served: dict[int, float] = {}
        shed: dict[int, float] = {}
        value = 0.0
        for k, family in enumerate(self.families):
            left = float(self.demand[k])
            mine = sorted((j for j in slots_of if self.family_of[j] == k),
                          key=lambda j: (-self.variants[j].accuracy, self.variants[j].variant))
            for j in mine:
                caps = [self.cap[i, j] / rung.factor for i in slots_of[j]]
                carried = min(left, sum(caps))
                if carried <= TINY * self.demand[k]:
                    continue
                left -= carried
                served[j] = carried
                for i, c in zip(slots_of[j], caps, strict=True):
                    load[i] = carried * c / sum(caps)
                value += carried * self.variants[j].accuracy / self.acc_max / self.total
            left = left if left > TINY * self.demand[k] else 0.0
            shed[k] = left
            value -= self.penalty * left / self.total
        return _Routed(dict(hosts), load, served, shed, value)

    def meets(self, routed: _Routed, rung: _Rung) -> bool:
        return all(routed.shed[k] <= (rung.shed_cap + 1e-9) * self.demand[k]
                   for k in range(len(self.families)) if self.servable[k])

    def fill_spare(self, routed: _Routed, rung: _Rung) -> _Routed:
        """Slots the optimum leaves idle keep their current variant, else take the most accurate
        variant they can host of the most loaded family; the objective never gets worse."""
        hosts = {i: j for i, j in routed.hosts.items() if routed.load.get(i, 0.0) > 0}
        used = {d: sum(self.slots[i].size for i in members if i in hosts) for d, (_, members) in enumerate(self.device_rows)}
        device_of = {i: d for d, (_, members) in enumerate(self.device_rows) for i in members}
        hosted = np.zeros(len(self.families))
        for i, j in hosts.items():
            hosted[self.family_of[j]] += self.cap[i, j] / rung.factor
        served = self.demand - np.array([routed.shed[k] for k in range(len(self.families))])
        for i in range(len(self.slots)):
            if i in hosts:
                continue
            d = device_of.get(i)
            if d is not None and used[d] + self.slots[i].size > self.device_rows[d][0]:
                continue
            choice = self.current.get(i)
            if choice is None:
                options = [j for j in range(len(self.variants)) if self.cap[i, j] > 0 and self.family_of[j] >= 0]
                if not options:
                    continue
                tight = {k: served[k] / hosted[k] if hosted[k] > 0 else math.inf for k in {self.family_of[j] for j in options}}
                k = min(tight, key=lambda k: (-tight[k], self.families[k]))
                choice = min((j for j in options if self.family_of[j] == k),
                             key=lambda j: (-self.variants[j].accuracy, self.variants[j].variant))
            hosts[i] = choice
            if self.family_of[choice] >= 0:
                hosted[self.family_of[choice]] += self.cap[i, choice] / rung.factor
            if d is not None:
                used[d] += self.slots[i].size
        return self.route(hosts, rung)

    # --- the MILP ----------------------------------------------------------------------------

    def solve_rung(self, rung: _Rung, time_left_s: float, mip_gap: float) -> tuple[str, dict[int, int] | None]:
        """One HiGHS call: ("optimal" | "time_limit" | "infeasible" | "unknown", hosts or None)."""
        n_p, n_k = len(self.p_var), len(self.families)
        if n_p == 0:
            return "optimal", {}
        ix, iv, iu = np.arange(n_p), n_p + np.arange(n_p), 2 * n_p + np.arange(n_k)
        rows = _Rows()
        slot_row = {i: n for n, i in enumerate(sorted(set(self.p_slot.tolist())))}
        rows.add(np.array([slot_row[i] for i in self.p_slot]), ix, np.ones(n_p), len(slot_row), -np.inf, 1.0)
        for capacity, members in self.device_rows:
            inside = np.isin(self.p_slot, members)
            sizes = np.array([self.slots[i].size for i in self.p_slot[inside]], dtype=float)
            rows.add(np.zeros(len(sizes), dtype=int), ix[inside], sizes, 1, -np.inf, capacity)
        pairs = np.arange(n_p)
        rows.add(np.concatenate([pairs, pairs]), np.concatenate([iv, ix]),
                 np.concatenate([np.ones(n_p), -self.share_bound(rung)]), n_p, -np.inf, 0.0)
        rows.add(np.concatenate([self.p_fam, np.arange(n_k)]), np.concatenate([iv, iu]), np.ones(n_p + n_k), n_k, 1.0, 1.0)
        c = np.concatenate([np.zeros(n_p), -self.p_weight, self.penalty * self.demand / self.total])
        if self.current:
            keep = np.array([self.current.get(int(i)) == int(j) for i, j in zip(self.p_slot, self.p_var, strict=True)])
            c[ix[keep]] -= KEEP_BONUS / len(self.current)
        upper_u = np.where(self.servable, rung.shed_cap, 1.0)
        bounds = Bounds(np.zeros(2 * n_p + n_k), np.concatenate([np.ones(2 * n_p), upper_u]))
        integrality = np.concatenate([np.ones(n_p), np.zeros(n_p + n_k)])
        result = milp(c, integrality=integrality, bounds=bounds,
                      constraints=[rows.constraint(2 * n_p + n_k)],
                      options={"time_limit": max(time_left_s, 1e-3), "mip_rel_gap": mip_gap})
        if result.status == 2:
            return "infeasible", None
        if result.x is None or result.status not in (0, 1):
            return "unknown", None
        chosen = result.x[ix] > 0.5
        hosts = {int(i): int(j) for i, j in zip(self.p_slot[chosen], self.p_var[chosen], strict=True)}
        return ("optimal" if result.status == 0 else "time_limit"), hosts

    # --- output ------------------------------------------------------------------------------

    def plan(self, routed: _Routed, beta: float, status: str, solve_s: float, extra_shed: Mapping[str, float]) -> ScalingPlan:
        routing: dict[str, dict[str, float]] = {}
        fractions: dict[str, dict[str, float]] = {}
        for k, family in enumerate(self.families):
            carried = self.demand[k] - routed.shed[k]
            if carried <= 0:
                continue
            routing[family] = {self.slots[i].slot_id: routed.load[i] / carried for i in sorted(routed.hosts)
                               if self.family_of[routed.hosts[i]] == k and routed.load[i] > 0}
            fractions[family] = {self.variants[j].variant: rate / carried for j, rate in sorted(routed.served.items())
                                 if self.family_of[j] == k}
        served = sum(routed.served.values())
        accuracy = sum(rate * self.variants[j].accuracy for j, rate in routed.served.items()) / served if served > 0 else 0.0
        shed = {self.families[k]: rate for k, rate in routed.shed.items() if rate > 0}
        shed.update({f: r for f, r in extra_shed.items() if r > 0})
        return ScalingPlan(
            hosts={self.slots[i].slot_id: self.variants[j].variant for i, j in sorted(routed.hosts.items())},
            routing=dict(sorted(routing.items())),
            variant_fractions=dict(sorted(fractions.items())),
            effective_accuracy=accuracy,
            beta=beta,
            shed=dict(sorted(shed.items())),
            solve_s=solve_s,
            status=status,
            load={self.slots[i].slot_id: rate for i, rate in sorted(routed.load.items()) if rate > 0},
        )


class _Rows:
    """Constraint rows gathered block by block, then handed to HiGHS as one sparse matrix."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.count = 0

    def add(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int, lo: float, hi: float) -> None:
        """A block of ``n`` rows, ``lo <= A x <= hi``; ``rows`` are numbered inside the block."""
        self.rows.append(self.count + rows)
        self.cols.append(cols)
        self.vals.append(vals)
        self.lo.append(np.full(n, lo))
        self.hi.append(np.full(n, hi))
        self.count += n

    def constraint(self, n_vars: int) -> LinearConstraint:
        shape = (self.count, n_vars)
        matrix = coo_array((np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))), shape=shape)
        return LinearConstraint(matrix.tocsr(), np.concatenate(self.lo), np.concatenate(self.hi))


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
    """The plan with the highest feasible beta on the ladder, then the highest accuracy.

    Every HiGHS call gets what is left of ``time_limit_s``. A family that no slot can host is
    shed entirely and does not pull beta down for the others. Deterministic for the same inputs
    whenever no call hits the time limit."""
    if not (0 < min_beta <= beta) or time_limit_s <= 0 or not 0 <= mip_gap < 1:
        raise ValueError("need 0 < min_beta <= beta, time_limit_s > 0 and 0 <= mip_gap < 1")
    start = timer()
    inst = _Instance(problem, current, shed_penalty)
    unservable = {f: float(problem.demand[f]) for k, f in enumerate(inst.families) if not inst.servable[k]}
    rungs = [_rung(b) for b in beta_ladder(beta, min_beta)] + [_rung(min_beta, best_effort=True)]

    def finish(routed: _Routed, rung_at: int, status: str) -> ScalingPlan:
        rung = rungs[rung_at]
        reported = rung.beta
        if rung_at == len(rungs) - 1:
            status = "kept_current" if status == "kept_current" else "infeasible"
            fractions = [1 - routed.shed[k] / inst.demand[k] for k in range(len(inst.families)) if inst.servable[k]]
            reported = min(fractions, default=min_beta)
        return inst.plan(routed, reported, status, timer() - start, unservable)

    incumbent: tuple[int, _Routed] | None = None
    if current is not None:
        for at, rung in enumerate(rungs):
            routed = inst.route(inst.current, rung)
            if inst.meets(routed, rung):
                incumbent = (at, routed)
                break
    for at, rung in enumerate(rungs):
        if incumbent is not None and at > incumbent[0]:
            break
        if not inst.could_carry(rung):
            continue
        left = time_limit_s - (timer() - start)
        if left <= 0:
            break
        state, hosts = inst.solve_rung(rung, left, mip_gap)
        if state == "infeasible":
            continue
        if hosts is None:
            break  # out of time with nothing found at this rung
        found = inst.fill_spare(inst.route(hosts, rung), rung)
        if incumbent is not None and at == incumbent[0] and incumbent[1].value >= found.value - TINY:
            return finish(incumbent[1], at, "kept_current")
        return finish(found, at, state)
    if incumbent is not None:
        return finish(incumbent[1], incumbent[0], "kept_current")
    empty = inst.route({}, rungs[-1])
    return inst.plan(empty, 0.0, "time_limit", timer() - start, unservable)


__all__ = ["STATUSES", "ScalingPlan", "ScalingProblem", "Slot", "VariantChoice", "beta_ladder", "solve"]
