"""Capacity planning for users: ``letmesh plan``. Plans a workload and a fleet (read from files by
:mod:`letmesh.capacity_inputs`) with the controller's planner and profiles, draws the layout and
finds how many devices it needs.

A CLI module: may import every package of ours; prints only from the ``run_*`` entry points.

Files (TOML, or JSON when the name ends in ``.json``)::

    [[models]]                  # one per variant: variant, rate_rps, slo_ms; memory_mb | memory_bytes
    variant = "resnet50"
    rate_rps = 300
    slo_ms = 108

    [[devices]]                 # one per group of identical devices (in the workload or a --devices file)
    kind = "cuda"               # profile device kind; kinds starting with "cuda" are partitioned in %
    count = 8
    capacity = 100              # cores for CPU kinds (required there); 100 for CUDA kinds (default)
    memory_gb = 11              # optional: memory_gb | memory_mb | memory_bytes; name = id prefix

Profiles come from ``--profiles`` (CSV: variant,device_kind,partition,batch,p50_ms[,p99_ms])
with optional ``--colocations`` (CSV: device_kind,a_variant,a_partition,a_batch,b_variant,
b_partition,b_batch,slowdown), or from ``--state-dir`` (the controller's SQLite store).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller.demand import with_headroom
from controller.planning import POLICIES, Demand, DeviceSlot, GpuLet, LatencyModel, Plan, plan
from controller.planning.profile import DEFAULT_MARGIN
from letmesh.capacity_inputs import (
    CapacityError,
    DeviceGroup,
    Profiles,
    WorkloadFileError,
    fleet,
    load_devices,
    load_profiles,
    load_workload,
)

CARRY_TOLERANCE = 1e-6  # unserved below this share of demand counts as carried (as max_rate does)
SEARCH_LIMIT = 16_384  # devices needed: give up growing the fleet past this many devices
DEFAULT_BAR_WIDTH = 60


# --- planning and the devices-needed search ------------------------------------------------------


def carried(result: Plan, demands: Sequence[Demand]) -> bool:
    total = sum(d.rate_rps for d in demands)
    return result.total_unserved() <= CARRY_TOLERANCE * max(total, 1.0)


@dataclass(frozen=True, slots=True)
class DevicesNeeded:
    """The smallest fleet of the given groups' kinds that carries the demand.

    ``counts``: per group name, None when no fleet up to ``SEARCH_LIMIT`` devices carries it.
    ``impossible``: variants no number of these devices can carry (excluded from the search).
    """

    counts: dict[str, int] | None
    impossible: dict[str, str] = field(default_factory=dict)  # variant -> why
    plans: int = 0  # planner calls the search made

    @property
    def total(self) -> int | None:
        return None if self.counts is None else sum(self.counts.values())


def infeasible_variants(groups: Sequence[DeviceGroup], demands: Sequence[Demand], latency: LatencyModel,
                        plan_with: Callable[[list[DeviceSlot], list[Demand]], Plan]) -> dict[str, str]:
    """Variants that even one whole device of every kind cannot serve at a trickle of load."""
    one_each = fleet(groups, [1] * len(groups))
    kinds = sorted({g.kind for g in groups})
    out = {}
    for d in demands:
        if d.rate_rps <= 0:
            continue
        if not any(latency.has(d.variant, k) for k in kinds):
            out[d.variant] = f"no profile on {', '.join(kinds)}"
        elif plan_with(one_each, [replace(d, rate_rps=1e-3)]).total_unserved() > 0:
            out[d.variant] = f"a batch of 1 on a whole device does not meet its {d.slo_ms:g} ms SLO (or the model does not fit in memory)"
    return out


def devices_needed(groups: Sequence[DeviceGroup], demands: Sequence[Demand],
                   plan_with: Callable[[list[DeviceSlot], list[Demand]], Plan], latency: LatencyModel) -> DevicesNeeded:
    """Search rule: with one group, binary search on its count (growing by doubling first when the
    given count is too small). With several, scale all groups together in proportion to their given
    counts to the smallest scale that carries everything, then shrink each group in file order by
    binary search while the others stay fixed. The result is minimal in that taking one device
    from any group leaves demand unserved (assuming, as the search does, that more devices never
    carry less)."""
    calls = 0
    impossible = infeasible_variants(groups, demands, latency, plan_with)
    wanted = [d for d in demands if d.rate_rps > 0 and d.variant not in impossible]
    if not wanted:
        return DevicesNeeded({g.name: 0 for g in groups}, impossible, 0)
    memo: dict[tuple[int, ...], bool] = {}

    def ok(counts: tuple[int, ...]) -> bool:
        nonlocal calls
        if counts not in memo:
            calls += 1
            memo[counts] = any(counts) and carried(plan_with(fleet(groups, list(counts)), wanted), wanted)
        return memo[counts]

    top = max(g.count for g in groups)

    def scaled(k: int) -> tuple[int, ...]:
        return tuple(math.ceil(k * g.count / top) for g in groups)

    lo, hi = 0, top
    while not ok(scaled(hi)):
        lo, hi = hi, hi * 2
        if sum(scaled(hi)) > SEARCH_LIMIT:
            return DevicesNeeded(None, impossible, calls)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(scaled(mid)) else (mid, hi)
    counts = list(scaled(hi))
    if len(groups) > 1:
        for i in range(len(groups)):
            lo_i, hi_i = -1, counts[i]
            while hi_i - lo_i > 1:
                mid = (lo_i + hi_i) // 2
                trial = tuple(counts[:i] + [mid] + counts[i + 1:])
                lo_i, hi_i = (lo_i, mid) if ok(trial) else (mid, hi_i)
            counts[i] = hi_i
    return DevicesNeeded({g.name: n for g, n in zip(groups, counts, strict=True)}, impossible, calls)


# --- the layout picture --------------------------------------------------------------------------


def _widths(shares: Sequence[float], width: int) -> list[int]:
    """Integer widths summing to ``width``, proportional to ``shares`` (largest remainder), each
    non-empty share at least one character."""
    raw = [s * width for s in shares]
    out = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[: width - sum(out)]:
        out[i] += 1
    for i, s in enumerate(shares):
        if s > 0 and out[i] == 0:
            out[i] = 1
            donor = max(range(len(out)), key=lambda j: out[j])
            out[donor] -= 1
    return out


def _size_label(kind: str, size: int) -> str:
    return f"{size}%" if kind.startswith("cuda") else f"{size}c"


def gpulet_label(g: GpuLet) -> str:
    return f"{'+'.join(f'{a.variant} b{a.batch}' for a in g.assignments)} {_size_label(g.kind, g.size)}"


def _bar(device: DeviceSlot, lets: Sequence[GpuLet], width: int) -> str:
    used = sum(g.size for g in lets)
    shares = [g.size / device.capacity for g in lets] + [max(0, device.capacity - used) / device.capacity]
    widths = _widths(shares, max(width, len(shares)))  # every gpu-let gets at least one character
    parts = []
    for g, w in zip(lets, widths, strict=False):
        label = gpulet_label(g)
        text = label + " " if len(label) < w else (label[: w - 1] + "…" if w > 1 else "")
        parts.append(text + "·" * (w - len(text)))
    if widths[-1] > 0:
        parts.append(" " * widths[-1])
    return "|" + "|".join(parts) + "|"


def _ranges(ids: Sequence[str], positions: Sequence[int], limit: int = 4) -> str:
    """Device ids as ranges of consecutive positions: ``gpu00-gpu41,gpu50``."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    text = [ids[a] if a == b else f"{ids[a]}-{ids[b]}" for a, b in runs]
    return ",".join(text[:limit]) + (f",…(+{len(text) - limit} runs)" if len(text) > limit else "")


def layout_picture(result: Plan, devices: Sequence[DeviceSlot], *, width: int = DEFAULT_BAR_WIDTH, group: bool = True) -> str:
    """One line per device: a bar of ``width`` characters split into its gpu-lets, each labelled
    with its variants, batch sizes and size; unused capacity blank. With ``group``, devices whose
    lines would be identical share one line ``first-last ×N``."""
    by_device: dict[str, list] = {}
    for g in result.gpulets:
        by_device.setdefault(g.device_id, []).append(g)
    ordered = sorted(devices, key=lambda d: d.device_id)
    ids = [d.device_id for d in ordered]
    rows: dict[tuple, list[int]] = {}
    for pos, d in enumerate(ordered):
        lets = by_device.get(d.device_id, [])
        key = (d.kind, d.capacity, tuple((g.size, tuple((a.variant, a.batch) for a in g.assignments)) for g in lets))
        rows.setdefault(key if group else (pos,), []).append(pos)
    lines = []
    for positions in sorted(rows.values()):
        d = ordered[positions[0]]
        lets = by_device.get(d.device_id, [])
        name = _ranges(ids, positions) + (f" ×{len(positions)}" if len(positions) > 1 else "")
        tail = "" if lets else " idle"
        free = d.capacity - sum(g.size for g in lets)
        if lets and free > 0:
            tail = f" {_size_label(d.kind, free)} free"
        lines.append((name, _bar(d, lets, width) + tail))
    pad = min(max((len(n) for n, _ in lines), default=0), 40)
    return "\n".join(f"{n:<{pad}} {bar}" for n, bar in lines)


# --- the report ----------------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    return f"{x:,.1f}"


def plan_summary(result: Plan, demands: Sequence[Demand], planned: Sequence[Demand], groups: Sequence[DeviceGroup],
                 devices: Sequence[DeviceSlot]) -> str:
    """Devices used, then per variant: the workload's rate, the planned target, what the plan
    serves and what of the target it cannot carry."""
    served = result.served()
    target = {d.variant: d.rate_rps for d in planned}
    batches_of: dict[str, list[int]] = {}
    for g in result.gpulets:
        for a in g.assignments:
            batches_of.setdefault(a.variant, []).append(a.batch)
    used = {g.device_id for g in result.gpulets}
    per_group = ", ".join(f"{g.name} ({g.kind}) {sum(1 for s in g.slots() if s.device_id in used)} of {g.count}" for g in groups)
    lines = [f"devices used: {len(used)} of {len(devices)}  [{per_group}]", "",
             f"{'variant':<20} {'slo ms':>7} {'demand rps':>11} {'planned rps':>12} {'served rps':>11} {'unserved rps':>13} "
             f"{'gpu-lets':>9}  batches"]
    short = {}
    for d in sorted(demands, key=lambda d: d.variant):
        miss = result.unserved.get(d.variant, 0.0)
        got = served.get(d.variant, 0.0)
        if got < d.rate_rps * (1 - CARRY_TOLERANCE):
            short[d.variant] = d.rate_rps - got
        batches = batches_of.get(d.variant, [])
        lines.append(f"{d.variant:<20} {d.slo_ms:>7g} {_fmt_rate(d.rate_rps):>11} {_fmt_rate(target.get(d.variant, d.rate_rps)):>12} "
                     f"{_fmt_rate(got):>11} {(_fmt_rate(miss) if miss > 0 else '-'):>13} {len(batches):>9}  "
                     f"{','.join(map(str, sorted(set(batches)))) or '-'}")
    lines.append("")
    if result.unserved:
        lines.append(f"UNSERVED: {_fmt_rate(result.total_unserved())} of the planned {_fmt_rate(sum(target.values()))} rps cannot be "
                     "carried within their SLOs on these devices: "
                     + ", ".join(f"{v} {_fmt_rate(r)} rps" for v, r in sorted(result.unserved.items())))
        if short:
            lines.append("  the workload's own rates are short too: " + ", ".join(f"{v} {_fmt_rate(r)} rps" for v, r in sorted(short.items())))
        else:
            lines.append("  (the workload's own rates are carried; only the headroom above them is not)")
    else:
        lines.append(f"all demand carried: {_fmt_rate(sum(d.rate_rps for d in demands))} rps, planned as {_fmt_rate(sum(target.values()))} rps")
    return "\n".join(lines)


def needed_summary(needed: DevicesNeeded, groups: Sequence[DeviceGroup], policy: str) -> str:
    lines = []
    for v, why in sorted(needed.impossible.items()):
        lines.append(f"cannot serve {v} on any number of these devices: {why}")
    if needed.counts is None:
        lines.append(f"devices needed ({policy}): more than {SEARCH_LIMIT} devices")
        return "\n".join(lines)
    if needed.total == 0:
        if needed.impossible:
            kinds = ", ".join(sorted({g.kind for g in groups}))
            lines.append(f"devices needed ({policy}): no number of these devices ({kinds}) serves any variant with "
                         f"demand; add profiles for them, loosen the SLOs, or plan for another device kind")
        else:
            lines.append(f"devices needed ({policy}): none, the workload has no demand (every rate_rps is 0)")
        return "\n".join(lines)
    given = sum(g.count for g in groups)
    parts = ", ".join(f"{g.name} ({g.kind}) {needed.counts[g.name]}" for g in groups)
    delta = needed.total - given
    verdict = "exactly what you have" if delta == 0 else f"{-delta} fewer than you have" if delta < 0 else f"{delta} more than you have"
    scope = " (for the servable variants)" if needed.impossible else ""
    lines.append(f"devices needed ({policy}){scope}: {needed.total}  [{parts}] — {verdict}; one fewer leaves demand unserved")
    return "\n".join(lines)


def devices_text(needed: DevicesNeeded) -> str:
    if needed.total is None:
        return f"> {SEARCH_LIMIT} devices"
    if needed.total == 0:
        return "nothing servable" if needed.impossible else "0 devices (no demand)"
    return f"{needed.total} devices"


def plan_json(result: Plan, demands: Sequence[Demand], planned: Sequence[Demand], devices: Sequence[DeviceSlot]) -> dict[str, Any]:
    return {
        "policy": result.policy,
        "strategy": result.strategy,
        "devices": [{"device_id": d.device_id, "kind": d.kind, "capacity": d.capacity, "memory_bytes": d.memory_bytes} for d in devices],
        "devices_used": result.devices_used(),
        "gpulets": [
            {"device_id": g.device_id, "kind": g.kind, "size": g.size, "duty_cycle_ms": g.duty_cycle_ms,
             "predicted_slowdown": g.predicted_slowdown,
             "assignments": [{"variant": a.variant, "batch": a.batch, "rate_rps": a.rate_rps, "latency_ms": a.latency_ms}
                             for a in g.assignments]}
            for g in result.gpulets
        ],
        "demand": {d.variant: {"rate_rps": d.rate_rps, "slo_ms": d.slo_ms} for d in demands},
        "planned": {d.variant: d.rate_rps for d in planned},
        "served": result.served(),
        "unserved": dict(result.unserved),
    }


# --- the command ---------------------------------------------------------------------------------


def planning_target(rate_rps: float, headroom: float | None) -> float:
    """The rate a plan is made for. ``headroom`` None: the controller's rule for a steady demand
    (``controller.demand.DemandTracker.target``: ×1.5 below 125 rps, ×1.2 above); else × headroom."""
    if headroom is None:
        return with_headroom(rate_rps)
    return rate_rps * headroom


def parse_headroom(text: str) -> float | None:
    if text == "controller":
        return None
    if text == "none":
        return 1.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 1.0 and math.isfinite(value)):
        raise CapacityError(f"--headroom is controller, none or a factor >= 1 (e.g. 1.3), not {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything ``plan`` and ``simulate`` read from their files and flags. ``demands``: the
    workload's rates (what the simulation replays); ``planned``: the targets plans are made for."""

    demands: tuple[Demand, ...]
    planned: tuple[Demand, ...]
    groups: tuple[DeviceGroup, ...]
    profiles: Profiles
    policy: str
    max_batch: int
    headroom: str = "controller"

    def plan(self, devices: list[DeviceSlot] | None = None, demands: Sequence[Demand] | None = None, policy: str | None = None) -> Plan:
        return plan(fleet(self.groups) if devices is None else devices, list(self.planned if demands is None else demands),
                    self.profiles.latency, interference=self.profiles.interference, policy=policy or self.policy,
                    max_batch=self.max_batch)

    def devices_needed(self, policy: str | None = None) -> DevicesNeeded:
        return devices_needed(self.groups, self.planned, lambda devs, dems: self.plan(devs, dems, policy), self.profiles.latency)


def load_setup(args: argparse.Namespace) -> Setup:
    if getattr(args, "json", None):  # checked first: a long run should not end on a path it cannot write
        target = Path(args.json).expanduser().resolve()
        folder = target.parent
        if target.is_dir():
            raise CapacityError(f"--json {args.json}: is a folder; name a file to write")
        if not folder.is_dir():
            raise CapacityError(f"--json {args.json}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise CapacityError(f"--json {args.json}: folder {folder} is not writable")
    workload = load_workload(args.workload)
    groups = load_devices(args.devices) if args.devices else workload.devices
    if not groups:
        raise WorkloadFileError(f"no devices: pass --devices FILE or add [[devices]] tables to {args.workload}")
    margin = DEFAULT_MARGIN if args.margin is None else args.margin
    if args.max_batch < 1 or not margin > 0:
        raise CapacityError("--max-batch must be at least 1 and --margin positive")
    profiles = load_profiles(profiles_csv=args.profiles, colocations_csv=args.colocations, state_dir=args.state_dir,
                             interference=args.interference, margin=margin)
    factor = parse_headroom(args.headroom)
    planned = tuple(replace(d, rate_rps=planning_target(d.rate_rps, factor)) for d in workload.demands)
    return Setup(workload.demands, planned, tuple(groups), profiles, args.policy, args.max_batch, args.headroom)


def coverage_warnings(setup: Setup) -> list[str]:
    kinds = sorted({g.kind for g in setup.groups})
    return [f"warning: no profile for {d.variant} on {', '.join(kinds)}; it cannot be served"
            for d in setup.demands if not any(setup.profiles.latency.has(d.variant, k) for k in kinds)]


def headroom_note(headroom: str) -> str:
    if headroom == "controller":
        return "planned as the controller would (x1.5 below 125 rps, x1.2 above)"
    return "none" if headroom == "none" else f"planned at x{float(headroom):g} the workload's rates"


def write_json(path: str, doc: Mapping[str, Any]) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def run_plan(args: argparse.Namespace) -> int:
    """``letmesh plan``: 0 when the given devices carry all demand, 1 when some is unserved, 2 on bad input."""
    try:
        setup = load_setup(args)
        devices = fleet(setup.groups)
        result = setup.plan(devices)
        needed = None if args.no_search else setup.devices_needed()
        others = {p: needed if p == setup.policy else setup.devices_needed(p)
                  for p in POLICIES} if args.compare_policies and needed is not None else {}
    except CapacityError as exc:
        print(f"letmesh plan: {exc}", file=sys.stderr)
        return 2
    out = [f"profiles: {setup.profiles.description}", *coverage_warnings(setup),
           f"policy: {result.policy} (packing {result.strategy or result.policy}); headroom: {headroom_note(setup.headroom)}", "",
           layout_picture(result, devices, width=max(10, DEFAULT_BAR_WIDTH if args.width is None else args.width), group=not args.expand), "",
           plan_summary(result, setup.demands, setup.planned, setup.groups, devices)]
    if needed is not None:
        out += ["", needed_summary(needed, setup.groups, setup.policy)]
    for p, n in others.items():
        out.append(f"  {p:<9} {devices_text(n)}")
    print("\n".join(out))
    if args.json:
        doc = plan_json(result, setup.demands, setup.planned, devices)
        doc["profiles"] = setup.profiles.description
        if needed is not None:
            doc["devices_needed"] = {"counts": needed.counts, "total": needed.total, "impossible": needed.impossible}
        if others:
            doc["devices_needed_by_policy"] = {p: n.counts for p, n in others.items()}
        write_json(args.json, doc)
    return 0 if carried(result, setup.demands) else 1
