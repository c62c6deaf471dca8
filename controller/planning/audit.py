"""Independent checks of a Plan against devices, demands, profiles and an interference model.

Recomputes everything from the plan's own numbers (no planner internals): capacity and split
limits, batch limits, duty-cycle feasibility and SLOs under the slowdown the interference model
predicts now, routing and rate conservation. Used by tests, by the benchmark to ask how a plan
made without the interference model fares under it, and by callers that want to reject a plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from controller.planning.fleet import split_limit
from controller.planning.interference import InterferenceModel
from controller.planning.planner import Demand, DeviceSlot, GpuLet, Plan
from controller.planning.profile import LatencyModel


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule. ``rule``: capacity | split | batch | latency | cycle | slo | rate | slowdown | conservation."""

    rule: str
    detail: str
    gpulet: int = -1  # index into Plan.gpulets, -1 when not about one gpu-let
    variant: str = ""


def gpulet_slowdown(plan: Plan, index: int, interference: InterferenceModel) -> float:
    """Slowdown of ``plan.gpulets[index]`` predicted from the gpu-lets on its device: per victim
    variant, 1 + the sum over neighbouring gpu-lets of the worst excess among that neighbour's
    variants; the worst victim decides."""
    g = plan.gpulets[index]
    neighbours = [h for j, h in enumerate(plan.gpulets) if j != index and h.device_id == g.device_id and h.assignments]
    if not neighbours:
        return 1.0
    worst = 1.0
    for a in g.assignments:
        me = (a.variant, g.size, a.batch)
        excess = sum(
            max(0.0, max(interference.predict(g.kind, me, (b.variant, h.size, b.batch)) for b in h.assignments) - 1.0)
            for h in neighbours
        )
        worst = max(worst, 1.0 + excess)
    return worst


def audit(
    plan: Plan,
    devices: Sequence[DeviceSlot],
    demands: Sequence[Demand],
    latency: LatencyModel,
    interference: InterferenceModel,
    *,
    max_batch: int = 32,
    max_models_per_gpulet: int = 3,
    tolerance: float = 1e-6,
) -> list[Violation]:
    """Every rule ``plan`` breaks; empty when it is sound. SLO and cycle checks use the larger of
    the plan's predicted slowdown and the one ``interference`` predicts from the final batches."""
    out: list[Violation] = []
    slot = {d.device_id: d for d in devices}
    slo = {d.variant: d.slo_ms for d in demands}
    tol = 1 + tolerance
    per_device: dict[str, list[GpuLet]] = {}
    for i, g in enumerate(plan.gpulets):
        per_device.setdefault(g.device_id, []).append(g)
        d = slot.get(g.device_id)
        if d is None or d.kind != g.kind:
            out.append(Violation("capacity", f"gpu-let on unknown device {g.device_id!r}", i))
            continue
        if not g.assignments or len(g.assignments) > max_models_per_gpulet:
            out.append(Violation("capacity", f"{len(g.assignments)} variants in one gpu-let", i))
        alpha = max(g.predicted_slowdown, gpulet_slowdown(plan, i, interference))
        if gpulet_slowdown(plan, i, interference) > g.predicted_slowdown * tol:
            out.append(Violation("slowdown", f"predicted {g.predicted_slowdown:.4f} below recomputed {gpulet_slowdown(plan, i, interference):.4f}", i))
        round_ms = 0.0
        for a in g.assignments:
            if not 1 <= a.batch <= max_batch:
                out.append(Violation("batch", f"batch {a.batch}", i, a.variant))
                continue
            expected = latency.curve(a.variant, g.kind, g.size, max_batch)[a.batch - 1]
            if not math.isclose(a.latency_ms, expected, rel_tol=1e-9):
                out.append(Violation("latency", f"latency {a.latency_ms} but profile says {expected}", i, a.variant))
            round_ms += alpha * expected
            if a.rate_rps > 1000.0 * a.batch / g.duty_cycle_ms * tol:
                out.append(Violation("rate", f"{a.rate_rps:.3f} rps > {a.batch} per {g.duty_cycle_ms:.3f} ms", i, a.variant))
        if round_ms > g.duty_cycle_ms * tol:
            out.append(Violation("cycle", f"round {round_ms:.3f} ms > duty cycle {g.duty_cycle_ms:.3f} ms", i))
        for a in g.assignments:
            if a.variant not in slo:
                out.append(Violation("conservation", "variant without demand", i, a.variant))
            elif round_ms + g.duty_cycle_ms > slo[a.variant] * tol:
                out.append(Violation("slo", f"round {round_ms:.3f} + cycle {g.duty_cycle_ms:.3f} ms > SLO {slo[a.variant]} ms", i, a.variant))
    for device_id, lets in sorted(per_device.items()):
        d = slot.get(device_id)
        if d is None:
            continue
        if sum(g.size for g in lets) > d.capacity:
            out.append(Violation("capacity", f"{device_id}: {sum(g.size for g in lets)} of {d.capacity} allocated"))
        if len(lets) > split_limit(d.kind, d.capacity):
            out.append(Violation("split", f"{device_id}: {len(lets)} gpu-lets"))
    served = plan.served()
    for d in demands:
        total = served.get(d.variant, 0.0) + plan.unserved.get(d.variant, 0.0)
        if not math.isclose(total, d.rate_rps, rel_tol=1e-6, abs_tol=1e-5):
            out.append(Violation("conservation", f"served + unserved = {total} != demand {d.rate_rps}", variant=d.variant))
    return out
