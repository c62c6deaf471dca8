"""Per-request bounds from Open Inference Protocol parameters."""

from __future__ import annotations

import pytest

from gateway.oip import InvalidParameter
from gateway.edge import EdgeLimits
from gateway.selection import check_variant, parse_bounds
from mesh.bandit import NoCandidate
from protocol.types import ModelInfo, TensorSpec


@pytest.mark.parametrize("parameters, budget_s", [
    ({}, 0.2),
    ({"timeout": 50_000}, 0.05),  # Triton: microseconds
    ({"letmesh_slo_ms": 30}, 0.03),
    ({"timeout": 1000, "letmesh_slo_ms": 30}, 0.001),  # Triton's own parameter wins
])
def test_deadline_sources(parameters, budget_s) -> None:
    assert parse_bounds(parameters, default_slo_ms=200).budget_s == pytest.approx(budget_s)


def test_bounds_and_context() -> None:
    b = parse_bounds({"letmesh_min_accuracy": 0.98, "letmesh_max_energy_j": 0.5,
                      "letmesh_context": {"app": "reader", "tier": 2}}, 100)
    assert (b.min_accuracy, b.max_energy_j, b.context) == (0.98, 0.5, {"app": "reader", "tier": 2})
    assert parse_bounds({"letmesh_context": "app=reader, device=phone"}, 100).context == {
        "app": "reader", "device": "phone"}


@pytest.mark.parametrize("parameters", [
    {"timeout": 0}, {"timeout": -5}, {"letmesh_slo_ms": "soon"}, {"letmesh_slo_ms": True},
    {"letmesh_min_accuracy": -1}, {"letmesh_max_energy_j": "lots"},
    {"letmesh_context": "no-equals-sign"}, {"letmesh_context": 5},
])
def test_bad_parameters_are_rejected(parameters) -> None:
    with pytest.raises(InvalidParameter):
        parse_bounds(parameters, 100)


def test_a_named_variant_keeps_its_bounds() -> None:
    spec = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
    model = ModelInfo(name="small", family="f", accuracy=0.9, max_batch=4, default_slo_ms=10, inputs=spec,
                      outputs=spec, energy_j=0.2)
    check_variant(model, parse_bounds({"letmesh_min_accuracy": 0.9, "letmesh_max_energy_j": 0.2}, 10))
    with pytest.raises(NoCandidate, match="accuracy"):
        check_variant(model, parse_bounds({"letmesh_min_accuracy": 0.95}, 10))
    with pytest.raises(NoCandidate, match="J"):
        check_variant(model, parse_bounds({"letmesh_max_energy_j": 0.1}, 10))


@pytest.mark.parametrize("parameters, field", [
    ({"letmesh_slo_ms": 10**309}, "letmesh_slo_ms"),  # beyond float: must not reach float()
    ({"letmesh_slo_ms": 1e17}, "letmesh_slo_ms"),  # finite but past the longest deadline
    ({"letmesh_slo_ms": 0.0005}, "letmesh_slo_ms"),  # shorter than 1 µs
    ({"timeout": 0.5}, "timeout"),  # µs
    ({"letmesh_slo_ms": float("nan")}, "letmesh_slo_ms"),
    ({"timeout": 10**309}, "timeout"),
    ({"timeout": 601_000_000}, "timeout"),  # µs: past 10 min
    ({"letmesh_min_accuracy": 10**309}, "letmesh_min_accuracy"),
    ({"letmesh_min_accuracy": 1.5}, "letmesh_min_accuracy"),
    ({"letmesh_max_energy_j": float("inf")}, "letmesh_max_energy_j"),
    ({"letmesh_max_energy_j": -0.1}, "letmesh_max_energy_j"),
    ({"letmesh_context": {"u": 10**30}}, "letmesh_context.u"),
    ({"letmesh_context": {"u": -1e16}}, "letmesh_context.u"),
    ({"letmesh_context": {"u": float("nan")}}, "letmesh_context.u"),
    ({"letmesh_context": {"u": {"deeper": {"still": 1}}}}, "letmesh_context.u"),
    ({"letmesh_context": {"u": [1, 2]}}, "letmesh_context.u"),
    ({"letmesh_context": {"u": None}}, "letmesh_context.u"),
    ({"letmesh_context": {"u": "x" * 257}}, "letmesh_context.u"),
    ({"letmesh_context": {"k" * 65: 1}}, "letmesh_context"),
    ({"letmesh_context": {f"k{i}": i for i in range(33)}}, "letmesh_context"),
    ({"letmesh_context": ",".join(f"k{i}=v" for i in range(33))}, "letmesh_context"),
])
def test_out_of_range_parameters_are_refused_naming_the_field(parameters, field) -> None:
    with pytest.raises(InvalidParameter) as err:
        parse_bounds(parameters, 100)
    assert field in str(err.value)
    assert err.value.status == 400


def test_the_longest_deadline_is_configurable() -> None:
    limits = EdgeLimits(max_deadline_ms=1_000)
    assert parse_bounds({"letmesh_slo_ms": 1_000}, 100, limits).budget_s == pytest.approx(1.0)
    with pytest.raises(InvalidParameter, match="letmesh_slo_ms"):
        parse_bounds({"letmesh_slo_ms": 1_001}, 100, limits)


def test_a_context_at_its_limits_is_taken_as_sent() -> None:
    context = {f"k{i:02d}" + "x" * 60: "v" * 256 for i in range(31)} | {"n": -10**15}
    assert parse_bounds({"letmesh_context": context}, 100).context == context
