"""Per-request bounds from Open Inference Protocol parameters."""

from __future__ import annotations

import pytest

from gateway.oip import InvalidParameter
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
