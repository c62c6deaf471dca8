"""The batches a planned worker may run, and a re-plan around workers already running: a worker
alone on its gpu-let may batch up to what the SLO allows there, so it can take a rise in place;
a worker beside other variants keeps the plan's batches; a re-plan never counts on a running
worker batching more than it was started to."""

from __future__ import annotations

from pathlib import Path

from controller.planning import Assignment, Demand, DeviceSlot, GpuLet, InterferenceModel, LatencyModel, Plan, Serving, plan
from controller.planning.cycle import saturated
from controller.replanner import layout, profile_table, worker_batches
from controller.repository import Variant
from protocol.types import DeviceInfo, ProfileSample

SLO_MS = 200.0
MS = {"big": 10.0, "tiny": 0.5}  # batch-1 ms on one core
FOUR_CORES = {"a0": (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=4, memory_bytes=8 << 30),)}


def variants() -> dict[str, Variant]:
    return {name: Variant(name=name, family=name, version="1", backend="torchscript", accuracy=0.9, max_batch=32,
                          default_slo_ms=SLO_MS, energy_j=0.0, inputs=(), outputs=(), artifact=Path("/nonexistent"),
                          sha256="0" * 64, size_bytes=1, profile_ms={})
            for name in MS}


def samples() -> list[ProfileSample]:
    out = []
    for name, ms in MS.items():
        for cores in (1, 2, 3, 4):
            for b in (1, 2, 4, 8, 16, 32):
                p50 = ms * b ** 0.7 / cores ** 0.9
                out.append(ProfileSample(variant=name, device_kind="cpu", partition=cores, batch=b, p50_ms=p50,
                                         p99_ms=p50 * 1.05, runs=5))
    return out


def test_a_worker_alone_on_its_gpulet_may_batch_up_to_what_the_slo_allows_there() -> None:
    low = layout(FOUR_CORES, variants(), samples(), [], {"big": 20.0})
    (alone,) = [d for d in low.desired if d.variants == ("big",)]
    (g,) = [g for g in low.plan.gpulets if g.variants == ("big",)]
    (a,) = g.assignments
    curve = LatencyModel(profile_table(samples())).curve("big", "cpu", g.size, 32)
    top = saturated(curve, SLO_MS, g.predicted_slowdown)[0]
    assert a.batch < top  # 20 req/s needs small batches ...
    assert dict(alone.batches)["big"] == top  # ... but the worker may run up to the SLO's bound


def test_a_worker_beside_other_variants_keeps_the_plans_batches() -> None:
    shared = layout({"a0": (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=1, memory_bytes=8 << 30),)},
                    variants(), samples(), [], {"big": 20.0, "tiny": 20.0})
    (d,) = shared.desired
    (g,) = shared.plan.gpulets
    assert d.variants == ("big", "tiny")
    assert dict(d.batches) == {a.variant: a.batch for a in g.assignments}


def test_a_replan_never_counts_on_a_running_worker_batching_more_than_it_was_started_to() -> None:
    latency = LatencyModel(profile_table(samples()))
    devices = [DeviceSlot("cpu0", "cpu", 1)]
    uncapped, capped = Serving("cpu0", 1, ("big",)), Serving("cpu0", 1, ("big",), (("big", 1),))
    # 50 req/s: one batch at a time carries it, so the worker started never to batch is kept as it is.
    kept = plan(devices, [Demand("big", 50.0, SLO_MS)], latency, interference=InterferenceModel.none(), current=[capped])
    assert kept.strategy == "retain" and kept.unserved == {}
    assert [(g.size, a.batch) for g in kept.gpulets for a in g.assignments] == [(1, 1)]
    # 150 req/s needs batches of several: kept as it is only if it may run them.
    rise = [Demand("big", 150.0, SLO_MS)]
    assert plan(devices, rise, latency, interference=InterferenceModel.none(), current=[uncapped]).strategy == "retain"
    moved = plan(devices, rise, latency, interference=InterferenceModel.none(), current=[capped])
    assert moved.strategy != "retain" and moved.unserved == {}
    assert max(a.batch for g in moved.gpulets for a in g.assignments) > 1


def test_a_worker_beside_another_gpulet_batches_no_more_than_keeps_the_neighbour_within_its_slowdown() -> None:
    # A neighbour is slowed by 1 + 0.5 x (the other's batch / 32). "tiny" was planned at the
    # slowdown "big" at batch 2 causes: "big" may not batch more. With room in the neighbour's
    # prediction (planned for "big" at 8), it may batch up to 8, and never past the SLO's bound.
    latency = LatencyModel(profile_table(samples()))
    interference = InterferenceModel({"cpu": (1.0, 0.0, 0.5)}, lambda kind, v, p, b: (b / 32,))
    slo = {"big": SLO_MS, "tiny": SLO_MS}

    def device(tiny_planned_beside: int) -> Plan:
        return Plan((GpuLet("cpu0", "cpu", 2, (Assignment("big", 2, 50.0, 20.0),), 100.0, 1 + 0.5 / 32),
                     GpuLet("cpu0", "cpu", 2, (Assignment("tiny", 1, 10.0, 1.0),), 100.0, 1 + 0.5 * tiny_planned_beside / 32)))

    assert worker_batches(device(2), latency, interference, 32, slo)[0] == {"big": 2}
    assert worker_batches(device(8), latency, interference, 32, slo)[0] == {"big": 8}
    alone = Plan((GpuLet("cpu0", "cpu", 2, (Assignment("big", 2, 50.0, 20.0),), 100.0, 1.0),))
    top = saturated(latency.curve("big", "cpu", 2, 32), SLO_MS, 1.0)[0]
    assert 8 < top and worker_batches(alone, latency, interference, 32, slo)[0] == {"big": top}
