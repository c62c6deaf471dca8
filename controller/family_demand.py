"""Demand between its two views: per variant (what gateways report and the planner places) and
per family (what accuracy scaling solves for). Pure functions of the variants the controller knows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class _Variant(Protocol):
    name: str
    family: str
    accuracy: float


def by_family(variants: Mapping[str, _Variant], rates: Mapping[str, float]) -> dict[str, float]:
    """Per-variant rates summed per family; a variant the controller does not know is left out."""
    out: dict[str, float] = {}
    for name, rate in rates.items():
        v = variants.get(name)
        if v is not None:
            out[v.family] = out.get(v.family, 0.0) + rate
    return out


def family_floor(variants: Mapping[str, _Variant], rates: Mapping[str, float], floor_rps: float) -> dict[str, float]:
    """Per family, its rate or ``floor_rps`` if higher: every known family, none other."""
    families = {v.family for v in variants.values()}
    return {f: max(rates.get(f, 0.0), floor_rps) for f in sorted(families)}


def variant_floor(variants: Mapping[str, _Variant], target: Mapping[str, float], floor_rps: float) -> dict[str, float]:
    """Per variant, its target or ``floor_rps`` if higher: every known variant, none other, by name."""
    return {name: max(target.get(name, 0.0), floor_rps) for name in sorted(variants)}


def at_full_accuracy(variants: Mapping[str, _Variant], target: Mapping[str, float]) -> dict[str, float]:
    """The demand as if every family were served at full accuracy: its most accurate variant
    carries the whole family's rate (the others keep theirs). How requests were split lately
    reflects past plans and choices; sizing on it would let a scaled-down mix look like it fits
    and oscillate."""
    out = dict(target)
    families: dict[str, list[_Variant]] = {}
    for v in variants.values():
        families.setdefault(v.family, []).append(v)
    for members in families.values():
        best = max(members, key=lambda v: (v.accuracy, v.name))
        total = sum(target.get(v.name, 0.0) for v in members)
        out[best.name] = max(out.get(best.name, 0.0), total)
    return out
