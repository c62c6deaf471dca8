"""The planner: devices + latency profiles + demand + SLOs -> gpu-lets, batch sizes and routing weights.

Pure, synchronous and deterministic (same inputs give an identical Plan): no clock, no I/O, no
randomness, every iteration over sorted keys. Policies: "gpulet" (interference-aware elastic
partitioning with temporal sharing inside partitions; a few greedy packings of the same rules are
tried and the one that carries the most kept, see ``policy.STRATEGIES``), "temporal" (Nexus-style
squishy bin packing on whole devices) and "whole" (one variant per whole device). Imports only
the planning package; never sockets, processes, torch or the registry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.planning.error import DuplicateDemand, UnknownPolicy
from controller.planning.fleet import TINY_RPS, Fleet, Need
from controller.planning.interference import InterferenceModel
from controller.planning.policy import PACKINGS, POLICIES, STRATEGIES, Serving, retain, run_strategy
from controller.planning.profile import LatencyModel

MAX_BATCH = 32
DEFAULT_WORKER_OVERHEAD_BYTES = 0  # callers that know their runtime's per-process cost pass it in
CARRY_TOLERANCE = 1e-6  # max_rate: unserved below this share of demand counts as carried


@dataclass(frozen=True, slots=True)
class DeviceSlot:
    """A device the planner may partition: ``capacity`` is cores on a CPU, 100 on a CUDA GPU."""

    device_id: str
    kind: str
    capacity: int
    memory_bytes: int = 0  # 0: unknown, no memory admission

    def __post_init__(self) -> None:
        if self.capacity <= 0:
            raise ValueError(f"device {self.device_id!r} needs a positive capacity")


@dataclass(frozen=True, slots=True)
class Demand:
    """Requests per second for one variant, with its latency objective."""

    variant: str
    rate_rps: float
    slo_ms: float
    memory_bytes: int = 0

    def __post_init__(self) -> None:
        if not (self.rate_rps >= 0 and math.isfinite(self.rate_rps)):
            raise ValueError(f"demand rate of {self.variant!r} must be finite and >= 0")
        if not self.slo_ms > 0:
            raise ValueError(f"SLO of {self.variant!r} must be positive")


@dataclass(frozen=True, slots=True)
class Assignment:
    """The share of a variant's demand one gpu-let carries. ``latency_ms`` is the profiled
    latency of ``batch`` on this partition (margin and live slowdown in, interference not)."""

    variant: str
    batch: int
    rate_rps: float
    latency_ms: float


@dataclass(frozen=True, slots=True)
class GpuLet:
    """One partition and what it serves. Every cycle of ``duty_cycle_ms`` runs one batch of each
    assignment; the round takes ``predicted_slowdown`` × Σ latency_ms <= duty_cycle_ms, and
    round + duty cycle stays within each assigned variant's SLO."""

    device_id: str
    kind: str
    size: int
    assignments: tuple[Assignment, ...]
    duty_cycle_ms: float
    predicted_slowdown: float

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(a.variant for a in self.assignments)

    @property
    def round_ms(self) -> float:
        return self.predicted_slowdown * sum(a.latency_ms for a in self.assignments)


@dataclass(frozen=True, slots=True)
class Plan:
    gpulets: tuple[GpuLet, ...]
    unserved: Mapping[str, float] = field(default_factory=dict)  # variant -> rps the plan cannot carry
    policy: str = "gpulet"
    strategy: str = ""  # which of the policy's candidate packings produced this plan

    def routing_weights(self) -> dict[str, dict[int, float]]:
        """variant -> {index into ``gpulets``: fraction of the variant's served rate}."""
        rates: dict[str, dict[int, float]] = {}
        for i, g in enumerate(self.gpulets):
            for a in g.assignments:
                rates.setdefault(a.variant, {})[i] = a.rate_rps
        out = {}
        for v in sorted(rates):
            total = sum(rates[v].values())
            out[v] = {i: r / total for i, r in sorted(rates[v].items())} if total > 0 else {}
        return out

    def devices_used(self) -> int:
        return len({g.device_id for g in self.gpulets})

    def served(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for g in self.gpulets:
            for a in g.assignments:
                out[a.variant] = out.get(a.variant, 0.0) + a.rate_rps
        return dict(sorted(out.items()))

    def total_unserved(self) -> float:
        return sum(self.unserved.values())


def plan(
    devices: Sequence[DeviceSlot],
    demands: Sequence[Demand],
    latency: LatencyModel,
    *,
    interference: InterferenceModel,
    policy: str = "gpulet",
    partition_menu: Mapping[str, Sequence[int]] | None = None,
    max_models_per_gpulet: int = 3,
    min_residual_rps: float = 0.0,
    max_batch: int = MAX_BATCH,
    worker_overhead_bytes: int | Mapping[str, int] = DEFAULT_WORKER_OVERHEAD_BYTES,
    keep: float = 0.85,
    strategies: Sequence[str] | None = None,
    current: Sequence[Serving] = (),
) -> Plan:
    """Plan ``demands`` onto ``devices``. Demand that cannot be carried within its SLO is reported
    in ``Plan.unserved``. ``partition_menu`` maps a device kind to the partition sizes allowed
    (default: 20/40/50/60/80/100 % on CUDA kinds, every core count on others).
    ``min_residual_rps``: a leftover below it gets no gpu-let of its own (only temporal sharing).
    ``worker_overhead_bytes``: the memory each worker process holds beyond its variants' needs
    (its runtime's), one figure, or per device id, else kind (``fleet.overhead_of``); counted once
    per gpu-let.
    ``keep``: a co-location is accepted only if it keeps this share of what the moved variant
    would carry alone, after subtracting what its neighbours lose to interference.
    ``strategies``: the candidate packings to try, in order (default: the policy's own, see
    ``STRATEGIES``); the plan that leaves the least demand unserved wins, ties going to fewer
    devices, fewer gpu-lets, then the earlier candidate.
    ``current``: the gpu-lets serving now, under the "gpulet" policy. One more candidate
    (strategy "retain") re-creates them, each variant at most at the batch its worker runs, loads
    them first and packs the rest around them; it wins whenever it leaves no more unserved on no
    more devices and gpu-lets than the best fresh packing. A re-plan then moves only what it must,
    instead of restarting workers for a regrouping that carries no more (a fresh greedy packing
    groups variants differently as their rates move, even when the devices it uses are the same)."""
    if policy not in POLICIES:
        raise UnknownPolicy(f"unknown planning policy {policy!r}; known: {', '.join(POLICIES)}")
    candidates = tuple(strategies) if strategies is not None else STRATEGIES[policy]
    unknown = [s for s in candidates if s not in PACKINGS]
    if unknown or not candidates:
        raise UnknownPolicy(f"unknown packing strategies {unknown}; known: {', '.join(PACKINGS)}")
    if max_models_per_gpulet < 1 or max_batch < 1:
        raise ValueError("max_models_per_gpulet and max_batch must be at least 1")
    seen: set[str] = set()
    for d in demands:
        if d.variant in seen:
            raise DuplicateDemand(f"variant {d.variant!r} appears in more than one demand")
        seen.add(d.variant)
    ordered = sorted(demands, key=lambda d: d.variant)
    needs = {d.variant: Need(d.variant, d.slo_ms, d.memory_bytes) for d in ordered}

    def packed(rules: str) -> tuple[Fleet, dict[str, float], dict[str, tuple[int, ...]]]:
        fleet = Fleet(
            devices,
            needs,
            latency,
            interference if rules == "gpulet" else InterferenceModel.none(),  # whole devices have no neighbours
            max_batch=max_batch,
            max_models=1 if rules == "whole" else max_models_per_gpulet,
            worker_overhead_bytes=worker_overhead_bytes,
        )
        menus = {kind: _menu(kind, fleet.capacity(kind), partition_menu) for kind in fleet.kinds()}
        return fleet, {d.variant: float(d.rate_rps) for d in ordered}, menus

    best: tuple[tuple, Plan] | None = None
    for rank, strategy in enumerate(candidates):
        fleet, remaining, menus = packed(PACKINGS[strategy].rules)
        run_strategy(strategy, fleet, remaining, menus, min_residual_rps=min_residual_rps, keep=keep)
        candidate = _to_plan(fleet, remaining, policy, strategy)
        key = (round(candidate.total_unserved(), 6), candidate.devices_used(), len(candidate.gpulets), rank)
        if best is None or key < best[0]:
            best = (key, candidate)
        if key[0] == 0:
            break  # carries everything: later candidates are fallbacks, not refinements
    assert best is not None
    if current and policy == "gpulet":
        fleet, remaining, menus = packed("gpulet")
        retain(fleet, remaining, current, keep)
        run_strategy("gpulet", fleet, remaining, menus, min_residual_rps=min_residual_rps, keep=keep)
        kept = _to_plan(fleet, remaining, policy, "retain")
        if (round(kept.total_unserved(), 6), kept.devices_used(), len(kept.gpulets)) <= best[0][:3]:
            return kept
    return best[1]


def _menu(kind: str, capacity: int, menu: Mapping[str, Sequence[int]] | None) -> tuple[int, ...]:
    if menu is not None and kind in menu:
        sizes = menu[kind]
    elif kind.startswith("cuda"):
        sizes = (20, 40, 50, 60, 80, 100)
    else:
        sizes = range(1, capacity + 1)
    return tuple(sorted({int(s) for s in sizes if 0 < int(s) <= capacity}))


def _to_plan(fleet: Fleet, remaining: Mapping[str, float], policy: str, strategy: str) -> Plan:
    gpulets = []
    for device in fleet.devices:
        kind = device.slot.kind
        for let in sorted(device.lets, key=lambda g: g.serial):
            assignments = tuple(
                Assignment(i.variant, i.batch, i.rate, fleet.curve(i.variant, kind, let.size)[i.batch - 1])
                for i in sorted(let.items, key=lambda i: i.variant)
            )
            gpulets.append(GpuLet(device.slot.device_id, kind, let.size, assignments, let.duty, let.alpha))
    unserved = {v: r for v, r in sorted(remaining.items()) if r > TINY_RPS}
    return Plan(tuple(gpulets), unserved, policy, strategy)


def max_rate(
    devices: Sequence[DeviceSlot],
    demands_shape: Sequence[Demand],
    latency: LatencyModel,
    interference: InterferenceModel,
    policy: str = "gpulet",
    *,
    levels: int | None = None,
    tolerance: float = 0.005,
    upper: float = 2.0**20,
    **options,
) -> float:
    """The highest scale factor s such that ``plan`` carries every demand at ``s × rate_rps``.

    With ``levels``, s is an integer in [0, levels] (a rate grid: ``rate_rps`` is the step);
    otherwise a real number found to ``tolerance`` relative precision. Binary search, so it
    assumes that a mix the planner can carry stays carriable when scaled down.
    """

    def carries(scale: float) -> bool:
        scaled = [dataclasses.replace(d, rate_rps=d.rate_rps * scale) for d in demands_shape]
        total = sum(d.rate_rps for d in scaled)
        result = plan(devices, scaled, latency, interference=interference, policy=policy, **options)
        return result.total_unserved() <= CARRY_TOLERANCE * max(total, 1.0)

    if levels is not None:
        good, bad = 0, levels + 1
        while bad - good > 1:
            mid = (good + bad) // 2
            if carries(mid):
                good = mid
            else:
                bad = mid
        return float(good)
    good, bad = 0.0, 1.0
    while carries(bad):
        good, bad = bad, bad * 2
        if bad > upper:
            return good
    while bad - good > tolerance * bad:
        mid = (good + bad) / 2
        if carries(mid):
            good = mid
        else:
            bad = mid
    return good


__all__ = [
    "Assignment",
    "Demand",
    "DeviceSlot",
    "GpuLet",
    "Plan",
    "Serving",
    "max_rate",
    "plan",
]
