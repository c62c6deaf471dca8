"""Accuracy scaling under overload: profiles -> gpu-let capacities -> the MILP -> desired workers.

The optimisation itself lives in ``controller.accuracy_milp``; this module turns stored profiles
and the interference model into per-(slot, variant) capacities, says when to re-solve, and maps
a plan onto the reconciler's DesiredWorkers. Pure and synchronous; imports the planning core and
the reconciler's data type only, never sockets, actors or the registry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.accuracy_milp import STATUSES, ScalingPlan, ScalingProblem, Slot, VariantChoice, beta_ladder, solve
from controller.planning import InterferenceModel, LatencyModel
from controller.reconciler import DesiredWorker

BATCHES = (1, 2, 4, 8, 16, 32)


def capacities(
    slots: Sequence[Slot],
    variants: Sequence[VariantChoice],
    latency: LatencyModel,
    interference: InterferenceModel | None,
    *,
    batches: Sequence[int] = BATCHES,
    device_capacity: Mapping[tuple[str, str], int] | None = None,
) -> dict[tuple[str, str], tuple[float, int]]:
    """(slot_id, variant) -> (peak req/s within the SLO, batch) for every pair that can host.

    Proteus' rule on a gpu-let: the largest batch B whose latency, slowed by the predicted
    interference, stays within SLO/2 (one batch waiting, one running), and throughput
    B * 1000 / latency(B). The slowdown is the worst the model predicts over every neighbour
    slot of the same device (those that fit beside it when ``device_capacity`` is given) running
    any variant it could host at that variant's own solo batch: what the neighbour will run is
    decided by the same solve, so the capacity is a safe bound. Pairs are missing when no batch
    fits the SLO or the variant has no profile on the slot's device kind."""
    sizes = sorted({int(b) for b in batches if int(b) > 0})
    if not sizes:
        raise ValueError("need at least one positive batch size")
    solo_memo: dict[tuple[str, str, int], tuple[float, int] | None] = {}

    def best(variant: VariantChoice, kind: str, size: int, slowdown) -> tuple[float, int] | None:
        if not latency.has(variant.variant, kind):
            return None
        curve = latency.curve(variant.variant, kind, size, sizes[-1])
        for b in reversed(sizes):
            alpha = slowdown(b)
            if curve[b - 1] * alpha <= variant.slo_ms / 2:
                return 1000.0 * b / (curve[b - 1] * alpha), b
        return None

    def solo(variant: VariantChoice, kind: str, size: int) -> tuple[float, int] | None:
        key = (variant.variant, kind, size)
        if key not in solo_memo:
            solo_memo[key] = best(variant, kind, size, lambda b: 1.0)
        return solo_memo[key]

    by_device: dict[tuple[str, str], list[Slot]] = {}
    for s in slots:
        by_device.setdefault(s.device_key, []).append(s)
    alpha_memo: dict[tuple, float] = {}

    def worst(slot: Slot, variant: VariantChoice, batch: int, neighbours: Sequence[Slot]) -> float:
        if interference is None or not interference.enabled:
            return 1.0
        out = 1.0
        for other in neighbours:
            key = (slot.kind, slot.size, other.size, variant.variant, batch)
            if key not in alpha_memo:
                found = 1.0
                for v in variants:
                    theirs = solo(v, other.kind, other.size)
                    if theirs is not None:
                        found = max(found, interference.predict(
                            slot.kind, (variant.variant, slot.size, batch), (v.variant, other.size, theirs[1])))
                alpha_memo[key] = found
            out = max(out, alpha_memo[key])
        return out

    out: dict[tuple[str, str], tuple[float, int]] = {}
    for s in sorted(slots, key=lambda s: s.slot_id):
        room = None if device_capacity is None else device_capacity.get(s.device_key)
        neighbours = [o for o in by_device[s.device_key]
                      if o.slot_id != s.slot_id and (room is None or o.size + s.size <= room)]
        for v in sorted(variants, key=lambda v: v.variant):
            if solo(v, s.kind, s.size) is None:
                continue  # interference only slows: nothing fits with a neighbour either
            found = best(v, s.kind, s.size, lambda b, s=s, v=v: worst(s, v, b, neighbours))
            if found is not None and found[0] > 0 and math.isfinite(found[0]):
                out[(s.slot_id, v.variant)] = found
    return out


def split_capacities(caps: Mapping[tuple[str, str], tuple[float, int]]) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], int]]:
    """``capacities()`` output as (rates for ScalingProblem.capacity, batches for ``to_desired``)."""
    return {k: r for k, (r, _) in caps.items()}, {k: b for k, (_, b) in caps.items()}


@dataclass(frozen=True, slots=True)
class ResolvePolicy:
    """When to re-solve: every ``period_s``, or after ``fast_period_s`` when any family's demand
    moved by more than ``jump`` relative to what the last solve used (and by ``min_change_rps``
    at least, so near-zero rates do not churn)."""

    period_s: float = 10.0
    fast_period_s: float = 2.0
    jump: float = 0.2
    min_change_rps: float = 1.0

    def due(self, now: float, demand: Mapping[str, float], last_demand: Mapping[str, float] | None,
            last_solve: float | None) -> bool:
        if last_solve is None or last_demand is None:
            return True
        elapsed = now - last_solve
        if elapsed >= self.period_s:
            return True
        return elapsed >= self.fast_period_s and self.jumped(demand, last_demand)

    def jumped(self, demand: Mapping[str, float], last_demand: Mapping[str, float]) -> bool:
        for family in set(demand) | set(last_demand):
            new, old = demand.get(family, 0.0), last_demand.get(family, 0.0)
            change = abs(new - old)
            if change >= self.min_change_rps and (old <= 0 or change > self.jump * old):
                return True
        return False


def to_desired(plan: ScalingPlan, slots: Sequence[Slot], batches: Mapping[tuple[str, str], int]) -> list[DesiredWorker]:
    """One worker per filled slot: a partition of the slot's size serving the chosen variant at
    its planned batch (1 when unknown)."""
    out = []
    for s in sorted(slots, key=lambda s: s.slot_id):
        variant = plan.hosts.get(s.slot_id)
        if variant is None:
            continue
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
