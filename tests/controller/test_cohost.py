"""Accuracy scaling on a host with fewer gpu-lets than families: a family the MILP gives no gpu-let
of its own still gets a worker, beside a variant the plan does host, when its demand is a small
share of that gpu-let's time."""

from __future__ import annotations

from pathlib import Path

from controller.accuracy import ScalingPlan, VariantChoice
from controller.reconciler import DesiredWorker
from controller.replanner import cohost, scaled_layout
from controller.repository import Variant
from protocol.types import DeviceInfo, ProfileSample

# Two costly families that each want a whole core, and a cheap one asked for at a floor rate.
MODELS = {  # name -> (family, accuracy, batch-1 ms on one core)
    "cls-large": ("cls", 0.95, 20.0),
    "cls-small": ("cls", 0.80, 8.0),
    "det-large": ("det", 0.90, 20.0),
    "det-small": ("det", 0.70, 8.0),
    "echo": ("trivial", 1.0, 0.2),
}
TWO_CORES = {"a0": (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=2, memory_bytes=8 << 30),)}


def variants() -> dict[str, Variant]:
    return {name: Variant(name=name, family=family, version="1", backend="torchscript", accuracy=acc, max_batch=32,
                          default_slo_ms=200.0, energy_j=0.0, inputs=(), outputs=(), artifact=Path("/nonexistent"),
                          sha256="0" * 64, size_bytes=1, profile_ms={})
            for name, (family, acc, _) in MODELS.items()}


def samples() -> list[ProfileSample]:
    out = []
    for name, (_, _, ms) in MODELS.items():
        for cores in (1, 2):
            for b in (1, 2, 4, 8, 16, 32):
                p50 = ms * b / cores ** 0.9  # per row: batching gains nothing
                out.append(ProfileSample(variant=name, device_kind="cpu", partition=cores, batch=b, p50_ms=p50,
                                         p99_ms=p50 * 1.05, runs=5))
    return out


def test_a_family_left_without_a_gpulet_is_cohosted_when_its_demand_fits() -> None:
    scaled = scaled_layout(TWO_CORES, variants(), samples(), [], {"cls": 120.0, "det": 120.0, "trivial": 1.0},
                           time_limit_s=5.0, beta=1.0)
    assert not any(v.startswith("echo") for v in scaled.plan.hosts.values()), "the MILP fills both cores with cls and det"
    hosting = [d for d in scaled.desired if "echo" in d.variants]
    assert len(hosting) == 1 and len(hosting[0].variants) == 2, scaled.desired
    assert dict(hosting[0].batches)["echo"] >= 1
    assert scaled.fractions()["trivial"] == {"echo": 1.0}
    assert "trivial" not in scaled.shed_share(), "a co-hosted family is served, not turned away"
    assert scaled.plan.shed.get("trivial", 0.0) > 0 and "trivial" not in scaled.shed_rps()  # as status reports it
    assert scaled.cohosted == {"trivial": "echo"}


def test_a_family_whose_demand_would_take_a_large_share_of_a_gpulet_stays_shed() -> None:
    full = ScalingPlan(hosts={"s0": "cls-small", "s1": "det-small"}, routing={}, variant_fractions={},
                       effective_accuracy=0.75, beta=1.0, shed={"cls": 5.0, "det": 5.0, "trivial": 1000.0},
                       solve_s=0.0, status="infeasible", load={"s0": 100.0, "s1": 100.0})
    choices = [VariantChoice(variant=n, family=f, accuracy=a, slo_ms=200.0) for n, (f, a, _) in MODELS.items()]
    caps = {(slot, n): (rate, 8) for slot in ("s0", "s1") for n, rate in
            (("cls-small", 100.0), ("det-small", 100.0), ("echo", 5000.0))}
    workers = tuple(DesiredWorker("a0", "cpu0", "cpu", 1, (v,), ((v, 8),)) for v in ("cls-small", "det-small"))
    desired, guests = cohost(full, workers, choices, caps, {"cls": 105.0, "det": 105.0, "trivial": 1000.0})
    assert not guests and desired == workers, "1,000 req/s of echo would take a fifth of a core"
    desired, guests = cohost(full, workers, choices, caps, {"cls": 105.0, "det": 105.0, "trivial": 50.0})
    assert guests == {"trivial": "echo"} and desired[0].variants == ("cls-small", "echo"), "50 req/s takes 1 %"


def test_a_variant_clients_name_stays_deployed_when_the_plan_drops_it() -> None:
    # cls-large is asked for by name at 2 req/s; the overloaded family is carried by cls-small.
    demand = {"cls": 120.0, "det": 120.0, "trivial": 1.0}
    plain = scaled_layout(TWO_CORES, variants(), samples(), [], demand, time_limit_s=5.0, beta=1.0)
    assert "cls-large" not in plain.plan.hosts.values() and all("cls-large" not in d.variants for d in plain.desired)
    named = scaled_layout(TWO_CORES, variants(), samples(), [], demand, time_limit_s=5.0, beta=1.0,
                          named={"cls-large": 2.0, "no-such-variant": 5.0})
    hosting = [d for d in named.desired if "cls-large" in d.variants]
    assert len(hosting) == 1 and len(hosting[0].variants) >= 2, named.desired
    assert "cls-large" not in named.fractions().get("cls", {}), "family requests keep the plan's split"


def test_a_guest_joins_no_gpulet_whose_device_it_would_take_past_its_memory() -> None:
    full = ScalingPlan(hosts={"s0": "cls-small", "s1": "det-small"}, routing={}, variant_fractions={},
                       effective_accuracy=0.75, beta=1.0, shed={"cls": 5.0, "det": 5.0, "trivial": 50.0},
                       solve_s=0.0, status="infeasible", load={"s0": 100.0, "s1": 100.0})
    gib = 1 << 30
    choices = [VariantChoice(variant=n, family=f, accuracy=a, slo_ms=200.0, memory_bytes=gib) for n, (f, a, _) in MODELS.items()]
    caps = {(slot, n): (rate, 8) for slot in ("s0", "s1") for n, rate in
            (("cls-small", 100.0), ("det-small", 100.0), ("echo", 5000.0))}
    workers = tuple(DesiredWorker("a0", "cpu0", "cpu", 1, (v,), ((v, 8),)) for v in ("cls-small", "det-small"))
    demand = {"cls": 105.0, "det": 105.0, "trivial": 50.0}
    device = ("a0", "cpu0")
    full_device = {"s0": (device, 2 * gib), "s1": (device, 2 * gib)}  # the two hosted variants fill it
    desired, guests = cohost(full, workers, choices, caps, demand, memory=full_device)
    assert not guests and desired == workers
    room = {"s0": (device, 3 * gib), "s1": (device, 3 * gib)}
    desired, guests = cohost(full, workers, choices, caps, demand, memory=room)
    assert guests == {"trivial": "echo"}


def test_each_hosted_worker_holds_its_runtime_and_a_guest_only_its_own_need() -> None:
    """Workers that hold 1 GiB of their own beside their variant's: a guest needs only its model
    there, since it joins a worker that already runs."""
    full = ScalingPlan(hosts={"s0": "cls-small", "s1": "det-small"}, routing={}, variant_fractions={},
                       effective_accuracy=0.75, beta=1.0, shed={"cls": 5.0, "det": 5.0, "trivial": 50.0},
                       solve_s=0.0, status="infeasible", load={"s0": 100.0, "s1": 100.0})
    mib = 1 << 20
    choices = [VariantChoice(variant=n, family=f, accuracy=a, slo_ms=200.0, memory_bytes=100 * mib)
               for n, (f, a, _) in MODELS.items()]
    caps = {(slot, n): (rate, 8) for slot in ("s0", "s1") for n, rate in
            (("cls-small", 100.0), ("det-small", 100.0), ("echo", 5000.0))}
    workers = tuple(DesiredWorker("a0", "cpu0", "cpu", 1, (v,), ((v, 8),)) for v in ("cls-small", "det-small"))
    demand = {"cls": 105.0, "det": 105.0, "trivial": 50.0}
    device = ("a0", "cpu0")
    bound = {"s0": (device, 2348 * mib), "s1": (device, 2348 * mib)}  # 2 x (1024 + 100) held, and 100 more
    _, guests = cohost(full, workers, choices, caps, demand, memory=bound, per_worker=1024 * mib)
    assert guests == {"trivial": "echo"}
    tight = {"s0": (device, 2348 * mib - 1), "s1": (device, 2348 * mib - 1)}
    assert cohost(full, workers, choices, caps, demand, memory=tight, per_worker=1024 * mib)[1] == {}
