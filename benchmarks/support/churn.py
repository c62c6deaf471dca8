"""Re-plan churn: how many workers each re-plan restarts while demand wanders, re-planning from
scratch or around the workers serving (what the controller does). The moves are the reconciler's
own (``begin``) and the workers' batch caps the controller's (``worker_batches``)."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

from controller.placement import PlannedWorker
from controller.planning import Demand, DeviceSlot, InterferenceModel, LatencyModel, Plan, Serving, plan
from controller.planning.planner import MAX_BATCH
from controller.reconciler import DesiredWorker, begin
from controller.replanner import worker_batches

CHURN_SIGMA = 0.25  # a re-plan's demand step: each variant's rate times exp(N(0, 0.25))
CHURN_BAND = (0.15, 0.85)  # each variant's rate stays within this share of the peak level carried


def desired_of(result: Plan, latency: LatencyModel, interference: InterferenceModel, max_batch: int,
               slo: dict[str, float]) -> list[DesiredWorker]:
    """The plan's gpu-lets as the controller hands them to the reconciler (one agent per device),
    each worker's batches as the controller starts it."""
    return [DesiredWorker(g.device_id, g.device_id, g.kind, g.size, tuple(sorted(g.variants)), tuple(sorted(caps.items())),
                          need=tuple(sorted((a.variant, a.batch) for a in g.assignments)))
            for g, caps in zip(result.gpulets, worker_batches(result, latency, interference, max_batch, slo), strict=True)]


def replan_churn(devices: Sequence[DeviceSlot], shape: Sequence[Demand], latency: LatencyModel,
                 interference: InterferenceModel, top: float, steps: int, seed: int,
                 options: dict[str, Any]) -> dict[str, Any]:
    """Each variant's demand (``shape`` x a level) walks within ``CHURN_BAND`` of ``top`` (the
    peak level the planner carries); per mode, the workers restarted per re-plan, the re-plans
    that moved any, the share of demand left unserved and the planning time."""
    slo = {d.variant: d.slo_ms for d in shape}
    cores = {(d.device_id, d.device_id): (d.capacity if d.kind == "cpu" else 0) for d in devices}
    rng = random.Random(seed)
    level = {d.variant: 0.5 * top for d in shape}
    walks = []
    for _ in range(steps):
        for v in level:
            level[v] = min(CHURN_BAND[1] * top, max(CHURN_BAND[0] * top, level[v] * math.exp(rng.gauss(0.0, CHURN_SIGMA))))
        walks.append([dataclasses.replace(d, rate_rps=d.rate_rps * level[d.variant]) for d in shape])
    out: dict[str, Any] = {"steps": steps, "peak_level": int(top)}
    for mode in ("fresh", "retain"):
        running: list[PlannedWorker] = []
        restarted, unserved, seconds = [], [], []
        for generation, demands in enumerate(walks, start=1):
            current = [Serving(w.partition.device_id, len(w.partition.cores) if w.partition.kind == "cpu" else w.partition.mps_percent,
                               w.variants, w.batches) for w in running] if mode == "retain" else ()
            t0 = time.perf_counter()
            result = plan(devices, demands, latency, interference=interference, current=current, **options)
            seconds.append(time.perf_counter() - t0)
            unserved.append(result.total_unserved() / max(sum(d.rate_rps for d in demands), 1e-9))
            t = begin(running, desired_of(result, latency, interference, MAX_BATCH, slo), cores, generation=generation, now=0.0)
            if t is None:
                restarted.append(0)
                continue
            if running:
                restarted.append(len(t.new))
            running = [w for w in running if w.worker_id in t.keep] + list(t.new)
        out[mode] = {"restarts_per_replan": statistics.fmean(restarted), "replans_moving_workers": sum(1 for r in restarted if r),
                     "mean_unserved_share": statistics.fmean(unserved), "median_plan_s": statistics.median(seconds)}
    return out
