"""From what the controller knows to the layout the planner wants. Pure and synchronous.

Inputs: the live agents' devices, the repository, stored profiles and co-location samples, and
the demand target. Output: the planner's Plan and the DesiredWorkers the reconciler moves to.
Every variant keeps a small floor of planned demand, so a model nobody asked for lately still
has a worker to answer its next request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.accuracy import (
    ScalingPlan,
    ScalingProblem,
    Slot,
    VariantChoice,
    capacities,
    solve,
    split_capacities,
    to_desired,
)
from controller.family_demand import variant_floor
from controller.planning import (
    CoLocation,
    Demand,
    DeviceSlot,
    InterferenceModel,
    LatencyModel,
    Plan,
    ProfilePoint,
    ProfileTable,
    Serving,
    plan,
)
from controller.planning.audit import gpulet_slowdown
from controller.planning.fleet import MEMORY_FRACTION, overhead_of
from controller.planning.cycle import saturated
from controller.reconciler import DesiredWorker
from controller.repository import Variant, reservation
from protocol.types import ColocationSample, DeviceInfo, ProfileSample

MIN_COLOCATIONS_TO_FIT = 6
# The most of a gpu-let's time a family the scaled plan hosts nowhere may take beside the variant
# the gpu-let serves (see ``cohost``): a floor of demand, not a second tenant.
GUEST_SHARE = 0.05


@dataclass(frozen=True, slots=True)
class Layout:
    plan: Plan
    desired: tuple[DesiredWorker, ...]
    planned_for: dict[str, float]

    def drops(self, serving: set[str]) -> list[str]:
        """Of the variants ``serving`` now, those with demand that this layout gives no worker."""
        planned = {v for d in self.desired for v in d.variants}
        return sorted(v for v in serving - planned if self.planned_for.get(v, 0.0) > 0)


def profile_table(samples: Sequence[ProfileSample]) -> ProfileTable:
    return ProfileTable(
        ProfilePoint(variant=s.variant, device_kind=s.device_kind, partition=s.partition, batch=s.batch,
                     p50_ms=max(s.p50_ms, 1e-6), p99_ms=max(s.p99_ms, s.p50_ms, 1e-6))
        for s in samples
    )


def colocation_samples(colocations: Sequence[ColocationSample]) -> list[CoLocation]:
    return [
        CoLocation(device_kind=c.device_kind, a=(c.variant, c.partition, c.batch),
                   b=(c.other, c.other_partition, c.other_batch), slowdown=max(1.0, c.shared_p50_ms / c.solo_p50_ms))
        for c in colocations if c.solo_p50_ms > 0
    ]


def interference_model(colocations: Sequence[ColocationSample], table: ProfileTable | None = None) -> InterferenceModel:
    """gpu-let's linear model fitted on the measured pairs (features from the profile table)."""
    samples = colocation_samples(colocations)
    if len(samples) < MIN_COLOCATIONS_TO_FIT:
        return InterferenceModel.none()
    return InterferenceModel.fit(samples, table=table)


def layout(
    agents: Mapping[str, Sequence[DeviceInfo]],
    variants: Mapping[str, Variant],
    samples: Sequence[ProfileSample],
    colocations: Sequence[ColocationSample],
    target: Mapping[str, float],
    *,
    policy: str = "gpulet",
    floor_rps: float = 1.0,
    slowdown: Mapping[tuple[str, str], float] | None = None,
    current: Sequence[DesiredWorker] = (),
    worker_overhead: Mapping[str, int] | None = None,
) -> Layout | None:
    """The layout for ``target`` demand; None until every variant has a profile on some device kind.
    ``current``: the gpu-lets serving now, ``batches`` the largest each worker runs; kept as they
    are when that carries as much on as few devices as a fresh packing (see :func:`plan`).
    ``worker_overhead``: "agent/device", else device kind -> the memory a worker holds beyond its
    variants' needs (controller.worker_memory), reserved once per gpu-let."""
    kinds = {d.kind for devices in agents.values() for d in devices}
    profiled = {(s.variant, s.device_kind) for s in samples}
    if not kinds or any(not any((name, k) in profiled for k in kinds) for name in variants):
        return None
    slots, where = [], {}
    for agent_id in sorted(agents):
        for d in agents[agent_id]:
            slot_id = f"{agent_id}/{d.device_id}"
            capacity = 100 if d.kind == "cuda" else d.cores
            slots.append(DeviceSlot(device_id=slot_id, kind=d.kind, capacity=capacity, memory_bytes=d.memory_bytes))
            where[slot_id] = (agent_id, d.device_id)
    planned_for = variant_floor(variants, target, floor_rps)
    demands = [Demand(variant=name, rate_rps=rate, slo_ms=variants[name].default_slo_ms,
                      memory_bytes=variants[name].memory_need())
               for name, rate in planned_for.items()]
    table = profile_table(samples)
    # A GPU whose host runs no MPS daemon cannot enforce a share of it: whole GPUs only (the menu
    # is per device kind, so one such GPU makes every GPU of the fleet whole).
    whole_gpus = any(d.kind == "cuda" and not d.mps for devices in agents.values() for d in devices)
    slot_of = {place: slot_id for slot_id, place in where.items()}
    serving = [Serving(slot_of[(d.agent_id, d.device_id)], d.size, d.variants, d.batches) for d in current
               if (d.agent_id, d.device_id) in slot_of]
    latency, max_batch = LatencyModel(table, slowdown=slowdown), max(v.max_batch for v in variants.values())
    interference = interference_model(colocations, table)
    result = plan(
        slots, demands, latency,
        interference=interference, policy=policy,
        max_batch=max_batch,
        partition_menu={"cuda": (100,)} if whole_gpus else None,
        current=serving,
        worker_overhead_bytes=dict(worker_overhead or {}),
    )
    desired = []
    slo = {name: v.default_slo_ms for name, v in variants.items()}
    for g, caps in zip(result.gpulets, worker_batches(result, latency, interference, max_batch, slo), strict=True):
        agent_id, device_id = where[g.device_id]
        batches = tuple(sorted((v, min(b, variants[v].max_batch)) for v, b in caps.items()))
        need = tuple(sorted((a.variant, min(a.batch, variants[a.variant].max_batch)) for a in g.assignments))
        rates = tuple(sorted((a.variant, a.rate_rps) for a in g.assignments))
        desired.append(DesiredWorker(agent_id, device_id, g.kind, g.size, tuple(sorted(g.variants)), batches, rates,
                                     need))
    return Layout(result, tuple(desired), planned_for)


def memory_overcommitted(desired: Sequence[DesiredWorker], agents: Mapping[str, Sequence[DeviceInfo]],
                         variants: Mapping[str, Variant], worker_overhead: Mapping[str, int] | None = None) -> list[str]:
    """Devices ("agent/device") whose workers in ``desired`` need more memory than the planner
    admits on them (MEMORY_FRACTION of what the device has; a device of unknown memory: none),
    each worker its variants' needs and the ``worker_overhead`` of its device (as for :func:`layout`).
    An accuracy-scaled layout is checked with this before it is applied."""
    bound = memory_bounds(agents)
    overhead = worker_overhead or {}
    need: dict[tuple[str, str], int] = {}
    for d in desired:
        key = (d.agent_id, d.device_id)
        need[key] = need.get(key, 0) + overhead_of(overhead, f"{d.agent_id}/{d.device_id}", d.kind) + \
            reservation(variants, d.variants)
    return sorted(f"{a}/{dev}" for (a, dev), n in need.items() if bound.get((a, dev), 0) > 0 and n > bound[(a, dev)])


def memory_bounds(agents: Mapping[str, Sequence[DeviceInfo]]) -> dict[tuple[str, str], int]:
    """(agent, device) -> the bytes the planner lets its workers need together (0: memory unknown)."""
    return {(a, d.device_id): int(MEMORY_FRACTION * d.memory_bytes) for a, devices in agents.items() for d in devices}


def worker_batches(result: Plan, latency: LatencyModel, interference: InterferenceModel, max_batch: int,
                   slo_ms: Mapping[str, float]) -> list[dict[str, int]]:
    """Per gpu-let of ``result``, the largest batch its worker may run of each variant. Beside
    other variants, the plan's: a bigger one would stretch the round the others wait through.
    Alone, the largest whose two runs fit the SLO at the predicted slowdown (the plan's own bound
    on a batch) and that raises no neighbour on its device past the slowdown the plan predicted
    for it (the interference model's, as ``audit`` recomputes it): the plan's batch only carries
    the rate planned for, and a worker capped at it could take no rise that a re-plan would
    otherwise leave with it (see ``plan(current=...)``)."""
    on_device: dict[str, list[int]] = {}
    for i, g in enumerate(result.gpulets):
        on_device.setdefault(g.device_id, []).append(i)
    out = []
    for i, g in enumerate(result.gpulets):
        caps = {a.variant: a.batch for a in g.assignments}
        out.append(caps)
        if len(g.assignments) != 1:
            continue
        (a,) = g.assignments
        top = saturated(latency.curve(a.variant, g.kind, g.size, max_batch), slo_ms[a.variant], g.predicted_slowdown)[0]
        local = [result.gpulets[j] for j in on_device[g.device_id]]
        me = on_device[g.device_id].index(i)
        for b in range(a.batch + 1, top + 1):
            trial = list(local)
            trial[me] = dataclasses.replace(g, assignments=(dataclasses.replace(a, batch=b),))
            device = Plan(tuple(trial))
            if any(gpulet_slowdown(device, j, interference) > local[j].predicted_slowdown * (1 + 1e-9)
                   for j in range(len(local)) if j != me):
                break
            caps[a.variant] = b
    return out


@dataclass(frozen=True, slots=True)
class ScaledLayout:
    plan: ScalingPlan
    desired: tuple[DesiredWorker, ...]
    demand: dict[str, float]
    # family -> the variant co-hosted for it on a worker the plan filled (see ``cohost``): the
    # MILP gave the family no gpu-let of its own, and its demand needs little of that worker's time.
    cohosted: dict[str, str] = field(default_factory=dict)

    def fractions(self) -> dict[str, dict[str, float]]:
        out = {f: dict(v) for f, v in self.plan.variant_fractions.items()}
        out.update({f: {v: 1.0} for f, v in self.cohosted.items()})
        return out

    def shed_rps(self) -> dict[str, float]:
        """Per family, the req/s the plan turns away (a family co-hosted as a guest is served)."""
        return {f: rps for f, rps in self.plan.shed.items() if f not in self.cohosted}

    def shed_share(self) -> dict[str, float]:
        return {f: min(1.0, rps / self.demand[f]) for f, rps in self.plan.shed.items()
                if self.demand.get(f, 0) > 0 and f not in self.cohosted}


def cohost(
    plan_: ScalingPlan,
    desired: Sequence[DesiredWorker],
    choices: Sequence[VariantChoice],
    caps: Mapping[tuple[str, str], tuple[float, int]],
    demand: Mapping[str, float],
    named: Mapping[str, float] | None = None,
    memory: Mapping[str, tuple[tuple[str, str], int]] | None = None,
    per_worker: int = 0,
) -> tuple[tuple[DesiredWorker, ...], dict[str, str]]:
    """Give what the plan hosts nowhere a place beside a variant it does host: each family the
    plan drops whole (the variant of it that leaves the most time), then each variant clients name that the plan
    dropped (``named``: variant -> req/s of requests naming it, never served by another variant).

    One variant per gpu-let makes the MILP drop whole families when there are more families than
    gpu-lets (two one-core slots on a two-core host), and variants that only its family's split
    would use: such requests are refused until the next plan (a dropped family fails readiness
    too). Here a guest joins the filled gpu-let with the most time to spare (routed load /
    capacity of the hosted variant, plus demand / capacity of the guest) when it needs at most
    ``GUEST_SHARE`` of that gpu-let's time. Under overload the hosted variants run at their
    capacity, so a guest costs them that share: some of their overflow is refused (503 with
    Retry-After) instead of every request to the guest. Least demand first. ``desired`` is
    ``to_desired(plan_, ...)``: one worker per filled slot, in slot order. ``memory``: slot id ->
    (its device, the bytes its device's slots may hold together; 0: no bound): a guest joins no
    gpu-let whose device it would take past that, each filled slot's worker holding ``per_worker``
    bytes besides its variant's need (a guest adds only its own need). Returns the workers and
    family -> the variant co-hosted for it (named guests serve named requests only).
    """
    index = {slot_id: i for i, slot_id in enumerate(sorted(plan_.hosts))}
    used: dict[str, float] = {}
    for slot_id, variant in plan_.hosts.items():
        cap = caps.get((slot_id, variant), (0.0, 1))[0]
        used[slot_id] = plan_.load.get(slot_id, 0.0) / cap if cap > 0 else 1.0
    hosted = set(plan_.hosts.values())
    hosted_families = {c.family for c in choices if c.variant in hosted}
    out = list(desired)
    guests: dict[str, str] = {}
    memory = memory or {}
    need = {c.variant: c.memory_bytes for c in choices}
    held: dict[tuple[str, str], int] = {}

    def hold(slot_id: str, variant: str, extra: int = 0) -> None:
        if slot_id in memory:
            held[memory[slot_id][0]] = held.get(memory[slot_id][0], 0) + need.get(variant, 0) + extra

    for slot_id, variant in plan_.hosts.items():
        hold(slot_id, variant, per_worker)  # a worker each; a guest joins one

    def fits(slot_id: str, variant: str) -> bool:
        device, bound = memory.get(slot_id, (("", ""), 0))
        return bound <= 0 or held.get(device, 0) + need.get(variant, 0) <= bound

    def place(options: Sequence[VariantChoice], rps: float) -> str | None:
        best = None
        for c in options:
            for slot_id in sorted(plan_.hosts):
                cap, batch = caps.get((slot_id, c.variant), (0.0, 1))
                share = rps / cap if cap > 0 else float("inf")
                after = used[slot_id] + share
                if share <= GUEST_SHARE and fits(slot_id, c.variant) and (best is None or after < best[0]):
                    best = (after, slot_id, c.variant, batch)
        if best is None:
            return None
        after, slot_id, variant, batch = best
        used[slot_id] = after
        hold(slot_id, variant)
        d = out[index[slot_id]]
        out[index[slot_id]] = DesiredWorker(d.agent_id, d.device_id, d.kind, d.size, tuple(sorted((*d.variants, variant))),
                                            tuple(sorted((*d.batches, (variant, batch)))), d.rates)
        hosted.add(variant)
        return variant

    for family in sorted((f for f, rps in demand.items() if rps > 0 and f not in hosted_families),
                         key=lambda f: (demand[f], f)):
        variant = place([c for c in choices if c.family == family], demand[family])
        if variant is not None:
            guests[family] = variant
    by_name = {c.variant: c for c in choices}
    for name, rps in sorted((named or {}).items(), key=lambda kv: (kv[1], kv[0])):
        if rps > 0 and name in by_name and name not in hosted:
            place([by_name[name]], rps)
    return tuple(out), guests


def scaling_slots(agents: Mapping[str, Sequence[DeviceInfo]]) -> tuple[list[Slot], dict[tuple[str, str], int]]:
    """Each device offered as alternatives: one-core (or half-GPU) gpu-lets, or the whole device
    (a GPU without an MPS daemon only whole: nothing would hold a half to its share)."""
    slots, capacity = [], {}
    for agent_id in sorted(agents):
        for d in agents[agent_id]:
            total = 100 if d.kind == "cuda" else d.cores
            capacity[(agent_id, d.device_id)] = total
            small = (50 if d.mps else 100) if d.kind == "cuda" else 1
            sizes = [small] * (total // small) + ([total] if total != small else [])
            for i, size in enumerate(sizes):
                slots.append(Slot(slot_id=f"{agent_id}/{d.device_id}/{i}", device_id=d.device_id, kind=d.kind,
                                  size=size, agent_id=agent_id))
    return slots, capacity


def scaled_layout(
    agents: Mapping[str, Sequence[DeviceInfo]],
    variants: Mapping[str, Variant],
    samples: Sequence[ProfileSample],
    colocations: Sequence[ColocationSample],
    family_demand: Mapping[str, float],
    *,
    current: ScalingPlan | None = None,
    time_limit_s: float = 2.0,
    beta: float = 1.05,
    slowdown: Mapping[tuple[str, str], float] | None = None,
    named: Mapping[str, float] | None = None,
    worker_overhead: Mapping[str, int] | None = None,
) -> ScaledLayout:
    """Accuracy scaling: the MILP's choice of variants, placement and split for ``family_demand``,
    with the beta ladder starting from ``beta`` and profiled latencies times ``slowdown``.
    ``named``: variant -> req/s of requests that named it; co-hosted when the plan drops it.
    ``worker_overhead``: as for :func:`layout`; the MILP hosts one variant per worker, so each
    variant it hosts needs the largest figure of the fleet's devices besides its own (a device
    with a smaller figure, a GPU beside CPU workers, is counted more than it holds, never less)."""
    slots, device_capacity = scaling_slots(agents)
    kinds = {d.kind for devices in agents.values() for d in devices}
    places = {f"{a}/{d.device_id}" for a, devices in agents.items() for d in devices}
    per_worker = max((n for key, n in (worker_overhead or {}).items() if key in kinds or key in places), default=0)
    table = profile_table(samples)
    choices = tuple(VariantChoice(variant=v.name, family=v.family, accuracy=v.accuracy, slo_ms=v.default_slo_ms,
                                  memory_bytes=v.memory_need())
                    for v in sorted(variants.values(), key=lambda v: v.name))
    memory = memory_bounds(agents)
    caps = capacities(slots, choices, LatencyModel(table, slowdown=slowdown), interference_model(colocations, table),
                      device_capacity=device_capacity)
    rates, batches = split_capacities(caps)
    hosting = tuple(dataclasses.replace(c, memory_bytes=c.memory_bytes + per_worker) for c in choices)
    problem = ScalingProblem(tuple(slots), hosting, dict(family_demand), rates, device_capacity=device_capacity,
                             device_memory=memory)
    plan_ = solve(problem, current=current, time_limit_s=time_limit_s, beta=beta)
    bounds = {s.slot_id: (s.device_key, memory.get(s.device_key, 0)) for s in slots}
    desired, guests = cohost(plan_, to_desired(plan_, slots, batches), choices, caps, family_demand, named or {},
                             memory=bounds, per_worker=per_worker)
    return ScaledLayout(plan_, desired, dict(family_demand), guests)
