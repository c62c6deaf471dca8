"""How much slower than profiled each variant runs now, per device kind, for the planners.

Every worker reports, per variant, the filtered ratio of its batches' compute time to its own
warm-up curve. Multiplied by the ratio of that warm-up to the stored profile, it says how much
slower than profiled the variant runs on that kind of device now: the gateway and the clients
sharing the host's cores, a noisy neighbour, throttling. The planners multiply profiled
latencies by it (``LatencyModel(slowdown=...)``), so capacity is planned for the host as it is.

A worker that is retired takes its reports with it, so each figure is held for ``hold_s`` after
its last report: the plan that moved a family to other variants must not forget why. A variant
nobody has run lately on a kind gets the mean of that kind's figures. Pure and synchronous.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controller.planning import ProfileTable
from protocol.types import WorkerState

if TYPE_CHECKING:
    from controller.registry import Registry


@dataclass(frozen=True, slots=True)
class Observation:
    """One worker's report for one variant."""

    variant: str
    device_kind: str
    partition: int  # cores, or MPS %
    ratio: float  # compute time / the worker's warm-up latency
    warmup_ms: float  # the worker's warm-up latency of a batch of one; 0 when unknown


@dataclass(slots=True)
class LiveSlowdown:
    hold_s: float = 30.0
    # Slower than profiled is planned for; faster is not trusted (the profile's tail is what
    # deadlines rest on, and a quiet moment is not the busy one the plan must carry).
    low: float = 1.0
    high: float = 4.0
    _seen: dict[tuple[str, str], tuple[tuple[Observation, ...], float]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        """True when some report is held."""
        return bool(self._seen)

    def update(self, observations: Iterable[Observation], now: float) -> None:
        """The reports of the workers serving now; a variant's earlier reports on that kind are replaced."""
        fresh: dict[tuple[str, str], list[Observation]] = {}
        for o in observations:
            if o.ratio > 0:
                fresh.setdefault((o.variant, o.device_kind), []).append(o)
        for key, reports in fresh.items():
            self._seen[key] = (tuple(reports), now)
        for key in [k for k, (_, t) in self._seen.items() if now - t > self.hold_s]:
            del self._seen[key]

    def factors(self, table: ProfileTable, variants: Iterable[str], kinds: Iterable[str]) -> dict[tuple[str, str], float]:
        """(variant, kind) -> observed / profiled, for every pair with a figure of its own or of its kind."""
        own = {key: self._factor(reports, table) for key, (reports, _) in self._seen.items()}
        by_kind: dict[str, list[float]] = {}
        for (_, kind), factor in own.items():
            by_kind.setdefault(kind, []).append(factor)
        out = {}
        for kind in kinds:
            known = by_kind.get(kind)
            if not known:
                continue
            default = sum(known) / len(known)
            for variant in variants:
                out[(variant, kind)] = own.get((variant, kind), default)
        return out

    def _factor(self, reports: tuple[Observation, ...], table: ProfileTable) -> float:
        """The mean over a variant's workers of (compute / warm-up) x (warm-up / profile), bounded."""
        factors = []
        for o in reports:
            factor = o.ratio
            if o.warmup_ms > 0 and table.has(o.variant, o.device_kind):
                profiled = table.latency_ms(o.variant, o.device_kind, max(o.partition, 1), 1, quantile="p50")
                if profiled > 0:
                    factor *= o.warmup_ms / profiled
            factors.append(factor)
        return min(self.high, max(self.low, sum(factors) / len(factors)))


def reported_slowdowns(reg: Registry) -> list[Observation]:
    """What ready workers report of their batches against their warm-up, per variant, with the
    device kind and partition size each was measured on."""
    kinds = {(a, d.device_id): d.kind for a, r in reg.agents.items() for d in r.devices}
    observations = []
    for w in reg.workers.values():
        if w.state != WorkerState.READY or not w.slowdown:
            continue
        p = w.plan.partition
        kind = kinds.get((w.plan.agent_id, p.device_id), p.kind)
        size = p.mps_percent if p.kind == "cuda" else len(p.cores)
        for variant, ratio in w.slowdown.items():
            warmup = w.batch_latency_ms.get(variant, ())
            observations.append(Observation(variant, kind, size, ratio, warmup[0] if warmup else 0.0))
    return observations
