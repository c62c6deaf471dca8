"""Demand per variant and per family: the sums, floors and full-accuracy view the layout manager
plans on, and the rule that a plan leaving a served variant without a worker is not applied."""

from __future__ import annotations

from pathlib import Path

from controller.family_demand import at_full_accuracy, by_family, family_floor, variant_floor
from controller.planning import Plan
from controller.reconciler import DesiredWorker
from controller.replanner import Layout
from controller.repository import Variant

MODELS = {"cls-large": ("cls", 0.95), "cls-small": ("cls", 0.80), "det-only": ("det", 0.70)}


def variants() -> dict[str, Variant]:
    return {name: Variant(name=name, family=family, version="1", backend="torchscript", accuracy=acc, max_batch=8,
                          default_slo_ms=100.0, energy_j=0.0, inputs=(), outputs=(), artifact=Path("/nonexistent"),
                          sha256="0" * 64, size_bytes=1, profile_ms={})
            for name, (family, acc) in MODELS.items()}


def test_rates_sum_per_family_and_unknown_variants_are_left_out() -> None:
    assert by_family(variants(), {"cls-large": 3.0, "cls-small": 7.0, "gone": 50.0}) == {"cls": 10.0}


def test_every_known_family_gets_at_least_the_floor() -> None:
    assert family_floor(variants(), {"cls": 10.0, "gone": 5.0}, 1.0) == {"cls": 10.0, "det": 1.0}


def test_every_known_variant_gets_at_least_the_floor_in_name_order() -> None:
    floored = variant_floor(variants(), {"cls-small": 4.0, "gone": 9.0}, 0.5)
    assert floored == {"cls-large": 0.5, "cls-small": 4.0, "det-only": 0.5}
    assert list(floored) == sorted(floored)


def test_the_most_accurate_variant_carries_its_whole_family() -> None:
    # A mix scaled down to the small variant is sized as if the large one served it all.
    full = at_full_accuracy(variants(), {"cls-large": 2.0, "cls-small": 30.0, "det-only": 5.0})
    assert full == {"cls-large": 32.0, "cls-small": 30.0, "det-only": 5.0}


def test_full_accuracy_keeps_a_higher_target_of_the_best_variant() -> None:
    full = at_full_accuracy(variants(), {"cls-large": 40.0})
    assert full["cls-large"] == 40.0


def worker(*names: str) -> DesiredWorker:
    return DesiredWorker("a0", "cpu0", "cpu", 1, names)


def test_a_layout_drops_a_served_variant_it_has_demand_for_and_gives_no_worker() -> None:
    new = Layout(Plan(gpulets=()), (worker("cls-large"),), {"cls-large": 10.0, "cls-small": 3.0, "det-only": 0.0})
    # det-only has no demand: leaving it out is no drop; a variant not serving today is none either.
    assert new.drops({"cls-large", "cls-small", "det-only"}) == ["cls-small"]
    assert new.drops({"cls-large"}) == []
