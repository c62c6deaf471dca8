"""Which worker takes a request: the plan's weights at light load, backed-up workers passed over."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.routing import Route, RoutingView, WorkerPicker
from mesh.latency import reported
from protocol.message import RoutingTable
from protocol.types import ModelInfo, TensorSpec, WorkerRoute


def model(name: str, family: str = "f", accuracy: float = 0.9) -> ModelInfo:
    spec = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
    return ModelInfo(name=name, family=family, version="1", platform="pytorch_torchscript", accuracy=accuracy,
                     inputs=spec, outputs=spec, max_batch=4, default_slo_ms=100.0)


def alive(_worker: str) -> bool:
    return True


def idle(_worker: str) -> int:
    return 0


def split(picker: WorkerPicker, routes: tuple[Route, ...], n: int, outstanding=idle) -> Counter:
    return Counter(picker.pick(routes, alive, outstanding) for _ in range(n))


def test_equal_replicas_share_light_load_in_turn():
    routes = (Route("w1", 1.0), Route("w2", 1.0), Route("w3", 1.0))
    picker = WorkerPicker()
    picks = [picker.pick(routes, alive, idle) for _ in range(6)]
    assert Counter(picks) == {"w1": 2, "w2": 2, "w3": 2}
    assert len(set(picks[:3])) == 3  # a turn each, not the lowest id first


@pytest.mark.parametrize("weights", [(0.7, 0.3), (0.5, 0.25, 0.25), (0.9, 0.1)])
def test_the_split_follows_the_plans_weights(weights):
    routes = tuple(Route(f"w{i}", w) for i, w in enumerate(weights))
    counts = split(WorkerPicker(), routes, 1000)
    for i, w in enumerate(weights):
        assert counts[f"w{i}"] == pytest.approx(1000 * w, abs=2)


def test_a_backed_up_worker_is_passed_over_whatever_its_weight():
    routes = (Route("fast", 0.1), Route("stalled", 0.9))
    load = {"fast": 0, "stalled": 10}
    counts = split(WorkerPicker(slack=2), routes, 50, outstanding=load.get)
    assert counts == {"fast": 50}


def test_dead_and_excluded_workers_are_never_picked():
    routes = (Route("a", 1.0), Route("b", 1.0), Route("c", 1.0))
    picker = WorkerPicker()
    picks = {picker.pick(routes, lambda w: w != "a", idle, exclude="b") for _ in range(10)}
    assert picks == {"c"}
    assert picker.pick(routes, lambda w: False, idle) is None


def test_view_reads_weights_per_variant_and_skips_draining_workers():
    table = RoutingTable(
        version=3,
        models=(model("small", accuracy=0.8), model("large", accuracy=0.95)),
        workers=(
            WorkerRoute(worker_id="w1", variants=("small", "large"), weights={"small": 0.25}),
            WorkerRoute(worker_id="w2", variants=("small",), weights={"small": 0.75}),
            WorkerRoute(worker_id="w3", variants=("large",), draining=True),
        ),
    )
    view = RoutingView(table)
    assert view.version == 3 and view.received
    assert view.routes("small") == (Route("w1", 0.25), Route("w2", 0.75))
    assert view.routes("large") == (Route("w1", 1.0),)  # no weight given: the route's default
    assert [m.name for m in view.families["f"]] == ["large", "small"]  # most accurate first
    assert "w3" in view.workers  # still known: it answers what it holds


def test_an_empty_view_knows_no_model():
    view = RoutingView()
    assert not view.received and view.models == {} and view.routes("x") == ()


def test_a_warm_up_measured_across_a_runtime_switch_still_gives_the_gateway_its_curve():
    """ONNX Runtime serving batches up to 2 and TorchScript above: the worker also timed batch 3,
    one point on each side of the switch. What it reports holds the warm-up sizes alone, so the
    gateway has the curve admission predicts with; every size it timed, as sent before, was a
    report of another length, dropped, and with it admission (the queue ran into 504s)."""
    measured = {1: 2.0, 2: 3.0, 3: 6.0, 4: 7.0}  # batch 3 on TorchScript
    route = WorkerRoute(worker_id="w", variants=("m",), latency_ms={"m": reported(measured, 4)})
    view = RoutingView(RoutingTable(version=1, models=(model("m"),), workers=(route,)))
    curve = view.curves[("w", "m")]
    assert [curve(b) for b in (1, 2, 4, 8)] == [2.0, 3.0, 7.0, 14.0]
    every = WorkerRoute(worker_id="w", variants=("m",), latency_ms={"m": tuple(measured[b] for b in sorted(measured))})
    assert ("w", "m") not in RoutingView(RoutingTable(version=1, models=(model("m"),), workers=(every,))).curves
