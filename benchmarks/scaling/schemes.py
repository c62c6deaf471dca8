"""The schemes the accuracy-scaling benchmark compares: ours (the controller's MILP and demand
forecast, the gateway's routing), static Clipper-HA/LA deployments and an INFaaS-like
per-request greedy selector with reactive up/down-scaling."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.scaling.sim import APPLY, Simulator
from benchmarks.scaling.workload import Fleet, Trace
from controller.accuracy import (
    ResolvePolicy,
    ScalingPlan,
    ScalingProblem,
    VariantChoice,
    solve,
)
from controller.demand import DemandTracker
from mesh.shares import ShareTracker, weighted_choice

EPS = 1e-12

# --- schemes --------------------------------------------------------------------------------------


class Scheme:
    """How requests are routed and what is deployed. ``route`` returns a slot index, -1 (shed) or
    -2 (unrouted)."""

    name = ""
    batching = "edf"
    rng = random.Random(0)  # each run installs its own seeded generator

    def start(self, sim: Simulator, trace: Trace) -> None:
        raise NotImplementedError

    def route(self, sim: Simulator, now: float, k: int) -> int:
        raise NotImplementedError

    def tick(self, sim: Simulator, now: float, window: Sequence[int]) -> None:
        """Every simulated second, with the arrivals per family of the second that ended."""

    def apply(self, sim: Simulator, now: float) -> None:
        """An APPLY event the scheme scheduled."""

    def report(self) -> dict[str, Any]:
        return {}


def static_allocation(fleet: Fleet, variant_of: Sequence[str], mean_rps: Sequence[float]) -> list[str]:
    """One variant per slot, slots over families in proportion to their mean demand: every family
    gets a slot, then each next slot goes to the family whose capacity covers the smallest share
    of its mean demand."""
    k_n = len(variant_of)
    if len(fleet.slots) < k_n:
        raise ValueError(f"{len(fleet.slots)} devices cannot give each of {k_n} families one")
    covered = [0.0] * k_n
    out = []
    for _ in fleet.slots:
        unserved = [k for k in range(k_n) if covered[k] == 0]
        k = unserved[0] if unserved else min(range(k_n), key=lambda k: (covered[k] / max(mean_rps[k], EPS), k))
        covered[k] += fleet.info[variant_of[k]].rate
        out.append(variant_of[k])
    return out


class Static(Scheme):
    """Clipper-HA / Clipper-LA: a fixed deployment of one variant per family, sized for the mean
    demand; requests spread uniformly over the family's slots; AIMD batching."""

    batching = "aimd"

    def __init__(self, name: str, high: bool) -> None:
        self.name = name
        self.high = high
        self.slots_of: list[list[int]] = []

    def start(self, sim: Simulator, trace: Trace) -> None:
        fleet = sim.fleet
        pick = [fleet.ladder(k)[-1 if self.high else 0] for k in range(len(fleet.families))]
        hosts = static_allocation(fleet, pick, trace.mean_rps)
        self.slots_of = [[] for _ in fleet.families]
        for i, v in enumerate(hosts):
            sim.deploy(i, v)
            self.slots_of[fleet.info[v].family].append(i)

    def route(self, sim: Simulator, now: float, k: int) -> int:
        mine = self.slots_of[k]
        return mine[int(self.rng.random() * len(mine))] if mine else -2

    def report(self) -> dict[str, Any]:
        return {"slots_per_family": [len(s) for s in self.slots_of]}


@dataclass(frozen=True, slots=True)
class _Option:
    variant: str
    accuracy: float
    slots: tuple[int, ...]


class Proteus(Scheme):
    """Ours: the accuracy-scaling MILP (``controller.accuracy.solve``) as the controller runs it:
    demand from the controller's ``DemandTracker`` fed each second's arrivals, planned for its
    forecast ``horizon_s`` ahead (0: the smoothed rate only), re-solved at the ``ResolvePolicy``
    cadence, warm-started from the current plan, beta ladder from ``beta``; a plan takes effect
    after its measured solve time (the control path runs beside the data path). Data path: the
    gateway's (see ``route``)."""

    name = "ours"

    def __init__(self, *, policy: ResolvePolicy, half_life_s: float, horizon_s: float, time_limit_s: float,
                 beta: float, name: str = "ours", batching: str = "edf") -> None:
        self.name = name
        self.batching = batching
        self.policy = policy
        self.beta = beta
        self.tracker = DemandTracker(half_life_s=half_life_s)
        self.horizon_s = horizon_s
        self.time_limit_s = time_limit_s
        self.plan: ScalingPlan | None = None
        self.waiting: ScalingPlan | None = None  # solved, not yet applied
        self.last_demand: dict[str, float] | None = None
        self.last_solve: float | None = None
        self.shed_share: list[float] = []
        self.built = -1
        self.solves: list[dict[str, Any]] = []
        self.slot_at: dict[str, int] = {}
        self.families: tuple[str, ...] = ()
        self.waiting_demand: dict[str, float] = {}
        self.options: list[list[_Option]] = []
        self.fractions: list[dict[str, float]] = []
        self.shares = ShareTracker(seed=0)

    # --- control path ---

    def _solve(self, sim: Simulator, now: float, demand: dict[str, float]) -> ScalingPlan:
        fleet = sim.fleet
        variants = tuple(VariantChoice(i.variant, fleet.families[i.family], i.accuracy, 1000 * fleet.slo_s[i.family])
                         for i in fleet.info.values())
        problem = ScalingProblem(fleet.slots, variants, demand, fleet.capacity)
        plan = solve(problem, beta=self.beta, current=self.plan, time_limit_s=self.time_limit_s)
        before = self.plan.hosts if self.plan is not None else {}
        changed = [(before.get(s), v) for s, v in plan.hosts.items() if before.get(s) != v]
        moved = sum(1 for old, new in changed if old is None or fleet.info[old].family != fleet.info[new].family)
        self.solves.append({"t": now, "solve_s": plan.solve_s, "status": plan.status, "beta": plan.beta,
                            "effective_accuracy": plan.effective_accuracy, "shed_rps": plan.total_shed,
                            "demand_rps": sum(demand.values()), "changed_slots": len(changed), "family_moves": moved})
        self.last_demand, self.last_solve = demand, now
        return plan

    def start(self, sim: Simulator, trace: Trace) -> None:
        self.slot_at = {s.slot_id: i for i, s in enumerate(sim.fleet.slots)}
        self.shares.rng = self.rng
        self.families = sim.fleet.families
        demand = {f: trace.mean_rps[k] for k, f in enumerate(sim.fleet.families)}  # same knowledge as the static ones
        plan = self._solve(sim, 0.0, demand)
        self.last_solve = None  # the first real solve comes with the first demand estimate
        for slot_id, v in plan.hosts.items():
            sim.deploy(self.slot_at[slot_id], v)
        self._take(plan, demand)

    def _take(self, plan: ScalingPlan, demand: dict[str, float]) -> None:
        self.plan = plan
        self.shed_share = [min(1.0, plan.shed.get(f, 0.0) / demand[f]) if demand.get(f, 0.0) > 0 else 0.0
                           for f in self.families]
        self.built = -1

    def tick(self, sim: Simulator, now: float, window: Sequence[int]) -> None:
        self.tracker.observe(dict(zip(self.families, window, strict=True)), 1.0, now)
        if self.waiting is not None:
            return
        demand = self.tracker.forecast(self.horizon_s) if self.horizon_s > 0 else self.tracker.rates()
        if not demand or not self.policy.due(now, demand, self.last_demand, self.last_solve):
            return
        self.waiting = self._solve(sim, now, demand)
        self.waiting_demand = demand
        sim.push(now + self.waiting.solve_s, APPLY)

    def apply(self, sim: Simulator, now: float) -> None:
        """Take a solved plan: routing and shedding at once, and every slot whose variant changes
        starts switching (drain, then load)."""
        plan, self.waiting = self.waiting, None
        if plan is None or not plan.hosts:  # nothing found in time: keep what runs
            return
        self._take(plan, self.waiting_demand)
        for slot_id, v in sorted(plan.hosts.items()):
            sim.switch(self.slot_at[slot_id], v, now)

    # --- data path ---

    def _build(self, sim: Simulator) -> None:
        """Per family: each variant with a slot up, and those slots (what the gateway's routing
        table lists); the plan's variant fractions."""
        by: list[dict[str, list[int]]] = [{} for _ in sim.fleet.families]
        for i, s in enumerate(sim.servers):
            v = sim.up(i)
            if v is not None:
                by[s.info.family].setdefault(v, []).append(i)
        self.options = [[_Option(v, sim.fleet.info[v].accuracy, tuple(slots)) for v, slots in sorted(d.items())]
                        for d in by]
        self.fractions = [dict(self.plan.variant_fractions.get(f, {})) for f in sim.fleet.families]
        self.built = sim.version

    def route(self, sim: Simulator, now: float, k: int) -> int:
        """The gateway's path: shed the plan's share; each variant's least-loaded slot, kept if it
        is predicted to finish by the deadline (else the request is refused: the gateway answers
        it at once); variants held to the plan's fractions; a draw weighted by them. (The
        simulator's predictions are exact, so the gateway's preference for variants sure to meet
        the deadline over likely ones has nothing to choose between here.)"""
        if self.built != sim.version:
            self._build(sim)
        shares = self.shares
        shed = self.shed_share[k]
        if shed > 0 and shares.shed(shed):
            return -1
        options = self.options[k]
        if not options:
            return -2
        deadline = now + sim.fleet.slo_s[k]
        estimate = sim.finish_estimate
        candidates, best = [], []
        for o in options:
            finish, i = min((estimate(i, now), i) for i in o.slots)
            if finish <= deadline:
                candidates.append(o)
                best.append(i)
        if not candidates:
            return -3
        fam = self.families[k]
        fractions = self.fractions[k]
        allowed = shares.allowed(fam, fractions, candidates, now)
        chosen, _ = weighted_choice(allowed, fractions, shares.rng.random())
        variant = allowed[chosen].variant
        shares.record(fam, variant, now)
        return best[candidates.index(allowed[chosen])]

    def report(self) -> dict[str, Any]:
        times = [s["solve_s"] for s in self.solves[1:]]
        statuses: dict[str, int] = {}
        for s in self.solves[1:]:
            statuses[s["status"]] = statuses.get(s["status"], 0) + 1
        return {"solves": len(self.solves) - 1, "solve_s": times, "statuses": statuses,
                "changed_slots": sum(s["changed_slots"] for s in self.solves[1:]),
                "family_moves": sum(s["family_moves"] for s in self.solves[1:]),
                "min_beta": min((s["beta"] for s in self.solves[1:]), default=None),
                "initial_solve_s": self.solves[0]["solve_s"]}


class Greedy(Scheme):
    """INFaaS-like: each request goes to the most accurate deployed variant of its family whose
    least-loaded slot is predicted to finish it by its deadline (queue in full batches after the
    running one), else to the next cheaper one, else to the slot predicted to finish first. The
    deployment starts as Clipper-HA's and is rescaled every ``period_s`` on the arrival rate seen
    in that period: a family above ``1 - slack`` of its capacity downgrades slots one variant step
    at a time (most accurate first) until it fits, then takes slots from the family with the most
    spare capacity (running its cheapest variant); a family below ``down_slack`` of its capacity
    upgrades one slot one step if the capacity still covers it. EDF batching."""

    name = "infaas"
    batching = "edf"

    def __init__(self, *, period_s: float, slack: float, down_slack: float) -> None:
        self.period_s = period_s
        self.slack = slack
        self.down_slack = down_slack
        self.seen: list[int] = []
        self.since = 0.0
        self.order: list[list[int]] = []  # per family: slots up, most accurate variant first
        self.built = -1
        self.actions = {"downgrade": 0, "upgrade": 0, "move": 0}
        self.target: list[str] = []  # the variant each slot is meant to run

    def start(self, sim: Simulator, trace: Trace) -> None:
        fleet = sim.fleet
        pick = [fleet.ladder(k)[-1] for k in range(len(fleet.families))]
        self.target = static_allocation(fleet, pick, trace.mean_rps)
        for i, v in enumerate(self.target):
            sim.deploy(i, v)
        self.seen = [0] * len(fleet.families)

    def _build(self, sim: Simulator) -> None:
        order: list[list[tuple[float, int]]] = [[] for _ in sim.fleet.families]
        for i, s in enumerate(sim.servers):
            if sim.up(i) is not None:
                order[s.info.family].append((-s.info.accuracy, i))
        self.order = [[i for _, i in sorted(o)] for o in order]
        self.built = sim.version

    def route(self, sim: Simulator, now: float, k: int) -> int:
        if self.built != sim.version:
            self._build(sim)
        mine = self.order[k]
        if not mine:
            return -2
        deadline = now + sim.fleet.slo_s[k]
        servers = sim.servers
        best_i, best_t = -1, math.inf  # fastest overall
        group_acc, group_i, group_t = None, -1, math.inf
        for i in mine:
            acc = servers[i].info.accuracy
            if acc != group_acc:
                if group_i >= 0 and group_t <= deadline:
                    return group_i
                group_acc, group_i, group_t = acc, -1, math.inf
            t = sim.finish_estimate(i, now)
            if t < group_t:
                group_i, group_t = i, t
            if t < best_t:
                best_i, best_t = i, t
        if group_i >= 0 and group_t <= deadline:
            return group_i
        return best_i

    def tick(self, sim: Simulator, now: float, window: Sequence[int]) -> None:
        for k, c in enumerate(window):
            self.seen[k] += c
        if now - self.since < self.period_s - 1e-9:
            return
        rate = [c / (now - self.since) for c in self.seen]
        self.since, self.seen = now, [0] * len(self.seen)
        self._rescale(sim, now, rate)

    def _capacity(self, sim: Simulator, k: int) -> float:
        return sum(sim.fleet.info[v].rate for v in self.target if sim.fleet.info[v].family == k)

    def _rescale(self, sim: Simulator, now: float, rate: Sequence[float]) -> None:
        fleet = sim.fleet
        info = fleet.info
        ladders = [fleet.ladder(k) for k in range(len(fleet.families))]
        step = {v: (ladders[i.family].index(v), i.family) for v, i in info.items()}
        fits = 1.0 - self.slack
        over = sorted(range(len(rate)), key=lambda k: -rate[k] / max(self._capacity(sim, k), EPS))
        for k in over:
            while rate[k] > fits * self._capacity(sim, k):
                mine = [i for i, v in enumerate(self.target) if info[v].family == k and step[v][0] > 0]
                if mine:  # downgrade the most accurate slot one step
                    i = max(mine, key=lambda i: (step[self.target[i]][0], -i))
                    self.target[i] = ladders[k][step[self.target[i]][0] - 1]
                    self.actions["downgrade"] += 1
                    sim.switch(i, self.target[i], now)
                    continue
                # all at the cheapest: take a slot from the family with the most spare capacity
                donors = []
                for i, v in enumerate(self.target):
                    j = info[v].family
                    if j != k and sum(1 for w in self.target if info[w].family == j) > 1:
                        left = self._capacity(sim, j) - info[v].rate
                        if fits * left >= rate[j]:
                            donors.append((-(fits * left - rate[j]) / max(rate[j], EPS), i))
                if not donors:
                    break
                i = min(donors)[1]
                self.target[i] = ladders[k][0]
                self.actions["move"] += 1
                sim.switch(i, self.target[i], now)
        for k in range(len(rate)):
            cap = self._capacity(sim, k)
            if rate[k] >= self.down_slack * cap:
                continue
            mine = [i for i, v in enumerate(self.target) if info[v].family == k and step[v][0] < len(ladders[k]) - 1]
            if not mine:
                continue
            i = min(mine, key=lambda i: (step[self.target[i]][0], i))
            up = ladders[k][step[self.target[i]][0] + 1]
            if fits * (cap - info[self.target[i]].rate + info[up].rate) >= rate[k]:
                self.target[i] = up
                self.actions["upgrade"] += 1
                sim.switch(i, up, now)

    def report(self) -> dict[str, Any]:
        return {"actions": dict(self.actions)}


