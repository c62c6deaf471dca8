"""The accuracy-scaling optimisation proper: Proteus' MILP linearised exactly for HiGHS, the MILP
that finds the highest beta rung, and the closed-form routing for fixed hosts.

Private to ``controller.accuracy`` (which owns the data types and the solve loop); works on
plain arrays. Imports numpy and scipy only. Formulation, per pair p = (slot class c, variant j of
a demanded family k) whose capacity is positive: integer x_p (slots of c hosting j), continuous
v_p (share of k's demand c serves with j), per family a shed share u_k:
    max  sum_p (d_k/D)(A_j/A_max) v_p - lambda sum_k (d_k/D) u_k
    s.t. sum_j x_cj <= |c|                 per class (a slot may stay empty)
         sum size_c x_p <= C_dev           per device with a known capacity (its classes: its slots of one size)
         sum mem_j x_p <= M_dev            per device with a known memory bound (mem_j: variant j's need)
         v_p <= min(1, cap_p / (f d_k)) x_p   per pair: v <= x and capacity with headroom f, in one row
         sum_p v_p + u_k = 1               per family
         0 <= u_k <= 0 (beta >= 1), 1 - beta (beta < 1), 1 (best effort);  f = max(beta, 1)
A slot hosts one variant, so the pair rows are exactly Proteus' per-device capacity rows with
v = z.x. Slots with identical capacities form one class, which removes the symmetry identical
gpu-lets would give the branch and bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

TINY = 1e-9


@dataclass(frozen=True, slots=True)
class Rung:
    """One step of the beta ladder: capacity is divided by ``factor``; a family may shed up to
    ``shed_cap`` of its demand."""

    beta: float
    factor: float
    shed_cap: float

    @classmethod
    def of(cls, beta: float, *, best_effort: bool = False) -> Rung:
        if best_effort:
            return cls(beta, 1.0, 1.0)
        return cls(beta, max(beta, 1.0), 0.0 if beta >= 1.0 else 1.0 - beta)


@dataclass(slots=True)
class Routed:
    """Fixed hosts routed: slot -> variant, slot -> req/s, variant -> req/s, family -> shed req/s."""

    hosts: dict[int, int]
    load: dict[int, float]
    served: dict[int, float]
    shed: dict[int, float]
    value: float  # the MILP objective


class Index:
    """A problem in fixed, sorted order (so that solves are deterministic) and the solves on it.

    Built once per ``solve`` call and discarded; not shared between threads. ``problem`` needs
    ``slots``, ``variants``, ``demand``, ``capacity`` and ``device_capacity`` as in ScalingProblem.
    """

    def __init__(self, problem, current: Mapping[str, str], shed_penalty: float) -> None:
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
        self.device_rows: list[tuple[float, list[int]]] = []
        for key, capacity in sorted(problem.device_capacity.items()):
            members = [i for i, s in enumerate(self.slots) if s.device_key == key]
            if members:
                self.device_rows.append((float(capacity), members))
        self.device_of = {i: d for d, (_, members) in enumerate(self.device_rows) for i in members}
        self.need = np.array([float(v.memory_bytes) for v in self.variants])
        self.memory_rows: list[tuple[float, list[int]]] = []
        for key, memory in sorted(getattr(problem, "device_memory", {}).items()):
            members = [i for i, s in enumerate(self.slots) if s.device_key == key]
            if members and memory > 0:
                self.memory_rows.append((float(memory), members))
        self.memory_of = {i: d for d, (_, members) in enumerate(self.memory_rows) for i in members}
        self.sizes = np.array([max(float(s.size), TINY) if i in self.device_of else 1.0
                               for i, s in enumerate(self.slots)])
        classes: dict[tuple, list[int]] = {}
        for i in range(len(self.slots)):
            # A device's slots of one size and the same capacities are one class too: a 16-core
            # host offered as 16 one-core slots is then one count, not 16 interchangeable integers.
            key = (("device", self.device_of[i], float(self.slots[i].size)) if i in self.device_of else ("cap",)) \
                + (self.memory_of.get(i, -1),) + tuple(self.cap[i].tolist())
            classes.setdefault(key, []).append(i)
        self.units = sorted(classes.values())
        pairs = [(u, j) for u, members in enumerate(self.units) for j in self._useful(members[0])]
        self.p_unit = np.array([u for u, _ in pairs], dtype=int)
        self.p_var = np.array([j for _, j in pairs], dtype=int)
        self.p_fam = np.array([self.family_of[j] for j in self.p_var], dtype=int)
        self.p_cap = np.array([self.cap[self.units[u][0], j] for u, j in pairs])
        self.p_count = np.array([len(self.units[u]) for u in self.p_unit], dtype=float)
        acc = np.array([self.variants[j].accuracy for j in self.p_var])
        self.p_weight = self.demand[self.p_fam] / self.total * acc / self.acc_max if pairs else np.zeros(0)
        self.servable = np.zeros(len(self.families), dtype=bool)
        self.servable[self.p_fam] = True
        # What runs now, as far as it still fits (a need or a device's memory may have changed).
        self.current: dict[int, int] = {}
        for s, v in sorted(current.items()):
            if s in slot_at and v in var_at and self.cap[slot_at[s], var_at[v]] > 0 \
                    and self._fits(slot_at[s], var_at[v], self.current):
                self.current[slot_at[s]] = var_at[v]

    def _useful(self, i: int) -> list[int]:
        """Variants slot ``i`` can host for a demanded family (within its device's memory bound),
        less those a sibling beats there on accuracy, capacity and memory need (never worth choosing)."""
        d = self.memory_of.get(i)
        memory = self.memory_rows[d][0] if d is not None else math.inf
        able = [j for j in range(len(self.variants))
                if self.cap[i, j] > 0 and self.family_of[j] >= 0 and self.need[j] <= memory]

        def rank(j: int) -> tuple:
            return (self.variants[j].accuracy, self.cap[i, j], -self.need[j], -j)

        def beaten(j: int) -> bool:
            return any(self.family_of[o] == self.family_of[j] and self.variants[o].accuracy >= self.variants[j].accuracy
                       and self.cap[i, o] >= self.cap[i, j] and self.need[o] <= self.need[j] and rank(o) > rank(j)
                       for o in able)

        return [j for j in able if not beaten(j)]

    # --- closed-form routing for fixed hosts -------------------------------------------------

    def _serve(self, k: int, totals: Mapping[int, float]) -> tuple[float, dict[int, float], float]:
        """Family ``k`` given capacity per variant: most accurate first, as much as fits.
        Returns (objective contribution, req/s per variant, req/s shed)."""
        left, served, value = float(self.demand[k]), {}, 0.0
        for j in sorted(totals, key=lambda j: (-self.variants[j].accuracy, self.variants[j].variant)):
            carried = min(left, totals[j])
            if carried > TINY * self.demand[k]:
                left -= carried
                served[j] = carried
                value += carried * self.variants[j].accuracy / self.acc_max / self.total
        left = left if left > TINY * self.demand[k] else 0.0
        return value - self.penalty * left / self.total, served, left

    def route(self, hosts: Mapping[int, int], rung: Rung) -> Routed:
        """The best routing for fixed hosts (optimal: families are independent once hosts are
        fixed); each variant's load is spread over its slots in proportion to their capacity."""
        slots_of: dict[int, list[int]] = {}
        for i, j in sorted(hosts.items()):
            slots_of.setdefault(j, []).append(i)
        totals = {j: sum(self.cap[i, j] for i in members) / rung.factor for j, members in slots_of.items()}
        load = {i: 0.0 for i in hosts}
        served: dict[int, float] = {}
        shed: dict[int, float] = {}
        value = 0.0
        for k in range(len(self.families)):
            v, s, shed[k] = self._serve(k, {j: t for j, t in totals.items() if self.family_of[j] == k})
            value += v
            served.update(s)
        for j, rate in served.items():
            for i in slots_of[j]:
                load[i] = rate * self.cap[i, j] / rung.factor / totals[j]
        return Routed(dict(hosts), load, served, shed, value)

    def meets(self, routed: Routed, rung: Rung) -> bool:
        return all(routed.shed[k] <= (rung.shed_cap + 1e-6) * self.demand[k]  # HiGHS' tolerances
                   for k in range(len(self.families)) if self.servable[k])

    def _fits(self, i: int, j: int, hosts: Mapping[int, int]) -> bool:
        """Whether slot ``i`` may host variant ``j`` beside ``hosts``: its device's cores and memory."""
        d = self.device_of.get(i)
        if d is not None:
            capacity, members = self.device_rows[d]
            if sum(self.slots[m].size for m in members if m in hosts) + self.slots[i].size > capacity:
                return False
        d = self.memory_of.get(i)
        if d is not None:
            memory, members = self.memory_rows[d]
            return sum(self.need[hosts[m]] for m in members if m in hosts) + self.need[j] <= memory
        return True

    def fill_spare(self, routed: Routed, rung: Rung) -> Routed:
        """Slots left idle keep their current variant, else take the most accurate variant they
        can host of the most loaded family (more room for it); the objective never gets worse."""
        hosts = {i: j for i, j in routed.hosts.items() if routed.load.get(i, 0.0) > 0}
        hosted = np.zeros(len(self.families))
        for i, j in hosts.items():
            hosted[self.family_of[j]] += self.cap[i, j] / rung.factor
        served = self.demand - np.array([routed.shed[k] for k in range(len(self.families))])
        for i in range(len(self.slots)):
            if i in hosts:
                continue
            choice = self.current.get(i)
            if choice is not None and not self._fits(i, choice, hosts):
                choice = None  # another variant may fit where the current one no longer does
            if choice is None:
                options = [j for j in range(len(self.variants))
                           if self.cap[i, j] > 0 and self.family_of[j] >= 0 and self._fits(i, j, hosts)]
                if not options:
                    continue
                tight = {k: served[k] / hosted[k] if hosted[k] > 0 else math.inf for k in {self.family_of[j] for j in options}}
                k = min(tight, key=lambda k: (-tight[k], self.families[k]))
                choice = min((j for j in options if self.family_of[j] == k),
                             key=lambda j: (-self.variants[j].accuracy, self.variants[j].variant))
            hosts[i] = choice
            if self.family_of[choice] >= 0:
                hosted[self.family_of[choice]] += self.cap[i, choice] / rung.factor
        return self.route(hosts, rung)

    def spread_cheapest(self) -> dict[int, int]:
        """A quick plan that keeps every family served: each slot in turn goes to the family
        with the smallest share of its demand covered so far, running whichever of its variants
        carries the most there, on the free slot that carries the most per unit of its device
        (so one family does not take a whole device that several could share). A floor for the
        rung search, and a fallback when time runs out."""
        share = np.where(self.servable, 0.0, math.inf)
        fam = np.array(self.family_of)
        best_cap = np.zeros((len(self.families), len(self.slots)))
        best_var = np.zeros((len(self.families), len(self.slots)), dtype=int)
        bound = np.array([self.memory_rows[self.memory_of[i]][0] if i in self.memory_of else math.inf
                          for i in range(len(self.slots))])
        for k in np.flatnonzero(self.servable):
            mine = np.flatnonzero(fam == k)
            able = np.where(self.need[mine][None, :] <= bound[:, None], self.cap[:, mine], 0.0)  # alone within memory
            pick = np.argmax(able, axis=1)
            best_var[k] = mine[pick]
            best_cap[k] = able[np.arange(len(self.slots)), pick]
        free = np.ones(len(self.slots), dtype=bool)
        hosts: dict[int, int] = {}
        while np.isfinite(share).any():
            k = int(np.argmin(share))
            room = np.where(free, best_cap[k], 0.0)
            for i in np.argsort(-room / self.sizes, kind="stable"):
                if room[i] <= 0:
                    share[k] = math.inf  # nothing left that can host it
                    break
                if self._fits(int(i), int(best_var[k, i]), hosts):
                    hosts[int(i)] = int(best_var[k, i])
                    share[k] += room[i] / self.demand[k]
                    break
                free[i] = False  # its device is full (cores, or memory for this family's variant)
            free[list(hosts)] = False
        return hosts

    # --- the MILPs ---------------------------------------------------------------------------

    def _placement(self, rows: _Rows, bound: np.ndarray) -> None:
        """Rows both MILPs share over variables [x, v, ...]: class sizes, device capacities and
        memory bounds, and v_p <= bound_p x_p (a bound <= the class-free one keeps the row valid for counts)."""
        n_p = len(self.p_var)
        ix, iv = np.arange(n_p), n_p + np.arange(n_p)
        used = sorted(set(self.p_unit.tolist()))
        unit_row = {u: n for n, u in enumerate(used)}
        rows.add(np.array([unit_row[u] for u in self.p_unit]), ix, np.ones(n_p), len(used), -np.inf,
                 np.array([len(self.units[u]) for u in used], dtype=float))
        unit_of = {i: u for u, members in enumerate(self.units) for i in members}
        for capacity, members in self.device_rows:
            inside = np.isin(self.p_unit, [unit_of[i] for i in members])
            sizes = np.array([self.slots[self.units[u][0]].size for u in self.p_unit[inside]], dtype=float)
            rows.add(np.zeros(len(sizes), dtype=int), ix[inside], sizes, 1, -np.inf, capacity)
        for memory, members in self.memory_rows:  # in shares of the device's bound: bytes would span 1e10
            inside = np.isin(self.p_unit, [unit_of[i] for i in members])
            rows.add(np.zeros(int(inside.sum()), dtype=int), ix[inside], self.need[self.p_var[inside]] / memory, 1,
                     -np.inf, 1.0)
        rows.add(np.concatenate([ix, ix]), np.concatenate([iv, ix]), np.concatenate([np.ones(n_p), -bound]), n_p, -np.inf, 0.0)

    @staticmethod
    def _run(c, upper, integral, rows: _Rows, time_left_s: float, gap: float):
        result = milp(c, integrality=integral.astype(int), bounds=Bounds(np.zeros(len(c)), upper),
                      constraints=[rows.constraint(len(c))],
                      options={"time_limit": max(time_left_s, 1e-3), "mip_rel_gap": gap})
        return result, (result.x if result.status in (0, 1) else None)

    def _decode(self, counts: np.ndarray) -> dict[int, int]:
        """Class counts back to slots; a slot keeps its current variant where the count allows."""
        hosts: dict[int, int] = {}
        for u, members in enumerate(self.units):
            mine = self.p_unit == u
            want = {int(j): int(n) for j, n in zip(self.p_var[mine], counts[mine], strict=True) if n > 0}
            free = []
            for i in members:
                j = self.current.get(i)
                if want.get(j, 0) > 0:
                    hosts[i], want[j] = j, want[j] - 1
                else:
                    free.append(i)
            for j in sorted(want):
                for _ in range(want[j]):
                    hosts[free.pop(0)] = j
        return hosts

    def solve_service(self, ladder: Sequence[float], time_left_s: float) -> tuple[int, int, dict[int, int] | None]:
        """How many rungs (from the bottom) the fleet can meet, ignoring accuracy: binaries g_r
        (monotone), every servable family served at least sum_r (beta_r - beta_r+1) g_r of its
        demand within capacity. An integer objective, so HiGHS proves it exactly when it has the
        time. Returns (rungs surely met, rungs possibly met, hosts meeting them or None)."""
        n_p, n_r = len(self.p_var), len(ladder)
        steps = np.array([ladder[r] - (ladder[r + 1] if r + 1 < n_r else 0.0) for r in range(n_r)])
        rows = _Rows()
        self._placement(rows, np.minimum(ladder[0], self.p_cap / self.demand[self.p_fam]))
        ig = 2 * n_p + np.arange(n_r)
        fam = np.flatnonzero(self.servable)
        fam_row = np.full(len(self.families), -1)
        fam_row[fam] = np.arange(len(fam))
        rows.add(np.concatenate([fam_row[self.p_fam], np.repeat(np.arange(len(fam)), n_r)]),
                 np.concatenate([n_p + np.arange(n_p), np.tile(ig, len(fam))]),
                 np.concatenate([np.ones(n_p), -np.tile(steps, len(fam))]), len(fam), 0.0, np.inf)
        if n_r > 1:  # g_r <= g_r+1: meeting a rung means meeting every lower one
            rows.add(np.repeat(np.arange(n_r - 1), 2), np.ravel(np.column_stack([ig[:-1], ig[1:]])),
                     np.tile([1.0, -1.0], n_r - 1), n_r - 1, -np.inf, 0.0)
        c = np.concatenate([np.zeros(2 * n_p), -np.ones(n_r)])
        integral = np.concatenate([np.ones(n_p), np.zeros(n_p), np.ones(n_r)])
        upper = np.concatenate([self.p_count, np.full(n_p, ladder[0]), np.ones(n_r)])
        result, x = self._run(c, upper, integral, rows, time_left_s, 0.0)
        bound = result.get("mip_dual_bound")
        possible = n_r if bound is None or not math.isfinite(bound) else min(n_r, math.floor(-bound + 1e-6))
        if x is None:
            return 0, possible, None
        met = round(float(x[2 * n_p:].sum()))
        return met, max(met, possible), self._decode(np.rint(x[:n_p]).astype(int))

    def _accuracy_model(self, rung: Rung):
        n_p, n_k = len(self.p_var), len(self.families)
        rows = _Rows()
        self._placement(rows, np.minimum(1.0, self.p_cap / (rung.factor * self.demand[self.p_fam])))
        rows.add(np.concatenate([self.p_fam, np.arange(n_k)]), np.concatenate([n_p + np.arange(n_p), 2 * n_p + np.arange(n_k)]),
                 np.ones(n_p + n_k), n_k, 1.0, 1.0)
        c = np.concatenate([np.zeros(n_p), -self.p_weight, self.penalty * self.demand / self.total])
        upper = np.concatenate([self.p_count, np.ones(n_p), np.where(self.servable, rung.shed_cap, 1.0)])
        return c, upper, rows

    def solve_accuracy(self, rung: Rung, time_left_s: float, mip_gap: float) -> tuple[str, dict[int, int] | None]:
        """The accuracy MILP at one rung: ("optimal" | "time_limit" | "unknown", hosts or None)."""
        c, upper, rows = self._accuracy_model(rung)
        n_p = len(self.p_var)
        result, x = self._run(c, upper, np.concatenate([np.ones(n_p), np.zeros(len(c) - n_p)]), rows, time_left_s, mip_gap)
        if x is None:
            return "unknown", None
        return ("optimal" if result.status == 0 else "time_limit"), self._decode(np.rint(x[:n_p]).astype(int))

    def relaxation_bound(self, rung: Rung, time_left_s: float) -> float:
        """The LP relaxation's optimum: no plan at this rung has a higher objective."""
        c, upper, rows = self._accuracy_model(rung)
        result, x = self._run(c, upper, np.zeros(len(c)), rows, time_left_s, 0.0)
        return -float(result.fun) if x is not None and result.status == 0 else math.inf


class _Rows:
    """Constraint rows gathered block by block, then handed to HiGHS as one sparse matrix."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.count = 0

    def add(self, rows, cols, vals, n: int, lo: float, hi: float | np.ndarray) -> None:
        """A block of ``n`` rows, ``lo <= A x <= hi``; ``rows`` are numbered inside the block."""
        self.rows.append(self.count + np.asarray(rows, dtype=int))
        self.cols.append(np.asarray(cols, dtype=int))
        self.vals.append(np.asarray(vals, dtype=float))
        self.lo.append(np.broadcast_to(np.asarray(lo, dtype=float), (n,)))
        self.hi.append(np.broadcast_to(np.asarray(hi, dtype=float), (n,)))
        self.count += n

    def constraint(self, n_vars: int) -> LinearConstraint:
        data = (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols)))
        matrix = coo_array(data, shape=(self.count, n_vars)).tocsr()
        return LinearConstraint(matrix, np.concatenate(self.lo), np.concatenate(self.hi))
