"""Capacity planning for users: ``letmesh plan``. Reads a workload and a fleet from files, plans them
with the controller's planner and profiles, draws the layout and finds how many devices it needs.

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
import csv
import json
import math
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller.demand import with_headroom
from controller.planning import (
    POLICIES,
    Demand,
    DeviceSlot,
    GpuLet,
    InterferenceModel,
    LatencyModel,
    Plan,
    plan,
)
from controller.planning.profile import DEFAULT_MARGIN
from controller.replanner import (
    MIN_COLOCATIONS_TO_FIT,
    interference_model,
    profile_table,
)
from controller.store import StateStore
from protocol.types import ColocationSample, ProfileSample

STORE_FILE = "controller.sqlite3"
CARRY_TOLERANCE = 1e-6  # unserved below this share of demand counts as carried (as max_rate does)
SEARCH_LIMIT = 16_384  # devices needed: give up growing the fleet past this many devices
DEFAULT_BAR_WIDTH = 60


class CapacityError(Exception):
    """Root of user-facing failures of ``letmesh plan`` / ``letmesh simulate``."""


class WorkloadFileError(CapacityError):
    """A workload or devices file is missing, unreadable or malformed."""


class ProfileSourceError(CapacityError):
    """No usable profile source was named, or the one named is missing or malformed."""


# --- workload and devices files ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceGroup:
    """``count`` identical devices; their ids are ``name`` + index (zero-padded so they sort)."""

    name: str
    kind: str
    count: int
    capacity: int
    memory_bytes: int = 0

    def slots(self, count: int | None = None) -> list[DeviceSlot]:
        n = self.count if count is None else count
        digits = len(str(max(n, self.count) - 1))
        return [DeviceSlot(f"{self.name}{i:0{digits}d}", self.kind, self.capacity, self.memory_bytes) for i in range(n)]


@dataclass(frozen=True, slots=True)
class Workload:
    demands: tuple[Demand, ...]
    devices: tuple[DeviceGroup, ...] = ()  # empty when the workload file names none


def _read_document(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise WorkloadFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WorkloadFileError(f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}") from None


def _number(entry: Mapping, key: str, where: str, *, integer: bool = False, required: bool = True) -> float | int | None:
    if key not in entry:
        if required:
            raise WorkloadFileError(f"{where}: `{key}` is missing")
        return None
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        raise WorkloadFileError(f"{where}: `{key}` must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise WorkloadFileError(f"{where}: `{key}` must be finite, got {value!r}")
    return int(value) if integer else float(value)


def _memory(entry: Mapping, where: str) -> int:
    given = [k for k in ("memory_bytes", "memory_mb", "memory_gb") if k in entry]
    if len(given) > 1:
        raise WorkloadFileError(f"{where}: give one of {', '.join(given)}, not several")
    if not given:
        return 0
    value = _number(entry, given[0], where)
    if value < 0:
        raise WorkloadFileError(f"{where}: `{given[0]}` must not be negative")
    return int(value * {"memory_bytes": 1, "memory_mb": 2**20, "memory_gb": 2**30}[given[0]])


def _entries(doc: Any, key: str, source: str) -> list[Mapping]:
    items = doc if isinstance(doc, list) and key == "devices" else doc.get(key) if isinstance(doc, dict) else None
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(e, dict) for e in items):
        raise WorkloadFileError(f"{source}: `{key}` must be a list of tables ([[{key}]] in TOML)")
    return items


def _check_keys(entry: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise WorkloadFileError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


MODEL_KEYS = {"variant", "rate_rps", "slo_ms", "memory_bytes", "memory_mb", "memory_gb"}
DEVICE_KEYS = {"name", "kind", "count", "capacity", "memory_bytes", "memory_mb", "memory_gb"}


def parse_workload(doc: Any, source: str = "workload") -> Workload:
    """The workload of a parsed TOML/JSON document: ``models`` (required) and ``devices`` (optional)."""
    if not isinstance(doc, dict):
        raise WorkloadFileError(f"{source}: expected a table with a `models` list")
    extra = sorted(set(doc) - {"models", "devices"})
    if extra:
        raise WorkloadFileError(f"{source}: unknown top-level key(s) {', '.join(extra)}; expected `models` and optional `devices`")
    models = _entries(doc, "models", source)
    if not models:
        raise WorkloadFileError(f"{source}: no models; add at least one [[models]] table with variant, rate_rps and slo_ms")
    demands, seen = [], set()
    for i, m in enumerate(models, 1):
        where = f"{source}: models #{i}"
        _check_keys(m, MODEL_KEYS, where)
        variant = m.get("variant")
        if not isinstance(variant, str) or not variant:
            raise WorkloadFileError(f"{where}: `variant` must be a non-empty string")
        where = f"{source}: model {variant!r}"
        if variant in seen:
            raise WorkloadFileError(f"{where} appears twice; give each variant one entry with its total rate")
        seen.add(variant)
        rate = _number(m, "rate_rps", where)
        slo = _number(m, "slo_ms", where)
        if rate < 0:
            raise WorkloadFileError(f"{where}: `rate_rps` must not be negative, got {rate}")
        if slo <= 0:
            raise WorkloadFileError(f"{where}: `slo_ms` must be positive, got {slo}")
        demands.append(Demand(variant, rate, slo, _memory(m, where)))
    devices = parse_devices(doc, source) if "devices" in doc else ()
    return Workload(tuple(demands), devices)


def parse_devices(doc: Any, source: str = "devices") -> tuple[DeviceGroup, ...]:
    """Device groups of a parsed document: a ``devices`` list (or, in JSON, a bare list)."""
    entries = _entries(doc, "devices", source)
    if not entries:
        raise WorkloadFileError(f"{source}: no devices; add [[devices]] tables with kind and count")
    groups = []
    for i, d in enumerate(entries, 1):
        where = f"{source}: devices #{i}"
        _check_keys(d, DEVICE_KEYS, where)
        kind = d.get("kind")
        if not isinstance(kind, str) or not kind:
            raise WorkloadFileError(f"{where}: `kind` must be a non-empty string (the profiles' device_kind, e.g. \"cuda\" or \"cpu\")")
        cuda = kind.startswith("cuda")
        count = _number(d, "count", where, integer=True, required=False)
        count = 1 if count is None else count
        capacity = _number(d, "capacity", where, integer=True, required=not cuda)
        capacity = 100 if capacity is None else capacity
        if count < 1 or capacity < 1:
            raise WorkloadFileError(f"{where}: `count` and `capacity` must be at least 1")
        if cuda and capacity != 100:
            raise WorkloadFileError(f"{where}: a CUDA device is partitioned in percent; `capacity` must be 100")
        name = d.get("name", "gpu" if cuda else "cpu")
        if not isinstance(name, str) or not name:
            raise WorkloadFileError(f"{where}: `name` must be a non-empty string")
        groups.append(DeviceGroup(name, kind, count, capacity, _memory(d, where)))
    names = [g.name for g in groups]
    for name in names:
        if names.count(name) > 1:
            raise WorkloadFileError(f"{source}: several device groups are named {name!r}; give each group a distinct `name`")
        clash = next((o for o in names if o != name and o.startswith(name) and o[len(name)].isdigit()), None)
        if clash is not None:
            raise WorkloadFileError(f"{source}: device groups named {name!r} and {clash!r} would give clashing device ids; rename one")
    return tuple(groups)


def load_workload(path: str | Path) -> Workload:
    path = Path(path)
    return parse_workload(_read_document(path), str(path))


def load_devices(path: str | Path) -> tuple[DeviceGroup, ...]:
    path = Path(path)
    return parse_devices(_read_document(path), str(path))


def fleet(groups: Sequence[DeviceGroup], counts: Sequence[int] | None = None) -> list[DeviceSlot]:
    """Device slots of ``groups`` (with ``counts`` instead of the groups' own counts when given)."""
    counts = counts or [g.count for g in groups]
    return [slot for g, n in zip(groups, counts, strict=True) for slot in g.slots(n)]


# --- profile sources -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profiles:
    latency: LatencyModel
    interference: InterferenceModel
    description: str  # where they came from and which interference model is in use, for the report


def _csv_rows(path: Path, required: Sequence[str], what: str) -> list[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or ())]
            if missing:
                raise ProfileSourceError(f"{path}: a {what} CSV needs the columns {', '.join(required)}; missing {', '.join(missing)}")
            return [(reader.line_num, row) for row in reader]
    except OSError as exc:
        raise ProfileSourceError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None


def read_profile_csv(path: str | Path) -> list[ProfileSample]:
    """Rows ``variant,device_kind,partition,batch,p50_ms[,p99_ms]`` (more columns are ignored)."""
    path = Path(path)
    out = []
    for line, row in _csv_rows(path, ("variant", "device_kind", "partition", "batch", "p50_ms"), "profile"):
        try:
            p50 = float(row["p50_ms"])
            p99 = float(row["p99_ms"]) if row.get("p99_ms") not in (None, "") else p50
            sample = ProfileSample(variant=row["variant"], device_kind=row["device_kind"], partition=int(row["partition"]),
                                   batch=int(row["batch"]), p50_ms=p50, p99_ms=p99, runs=0)
        except (TypeError, ValueError) as exc:
            raise ProfileSourceError(f"{path}:{line}: bad profile row: {exc}") from None
        if sample.partition < 1 or sample.batch < 1 or not (p50 > 0 and p99 > 0 and math.isfinite(p50 + p99)):
            raise ProfileSourceError(f"{path}:{line}: partition and batch must be >= 1 and latencies positive")
        out.append(sample)
    if not out:
        raise ProfileSourceError(f"{path}: the profile file has no rows")
    return out


def read_colocation_csv(path: str | Path) -> list[ColocationSample]:
    """Rows ``device_kind,a_variant,a_partition,a_batch,b_variant,b_partition,b_batch,slowdown``
    (benchmarks/data) or the controller's ``device_kind,variant,partition,batch,other,
    other_partition,other_batch,solo_p50_ms,shared_p50_ms``."""
    path = Path(path)
    rows = _csv_rows(path, ("device_kind",), "co-location")
    names = set(rows[0][1]) if rows else set()
    slowdown_form = {"a_variant", "slowdown"} <= names
    cols = (("a_variant", "a_partition", "a_batch", "b_variant", "b_partition", "b_batch") if slowdown_form
            else ("variant", "partition", "batch", "other", "other_partition", "other_batch"))
    need = (*cols, "slowdown") if slowdown_form else (*cols, "solo_p50_ms", "shared_p50_ms")
    if rows and not set(need) <= names:
        raise ProfileSourceError(f"{path}: a co-location CSV needs the columns device_kind,{','.join(need)}")
    out = []
    for line, row in rows:
        try:
            solo, shared = (1.0, float(row["slowdown"])) if slowdown_form else (float(row["solo_p50_ms"]), float(row["shared_p50_ms"]))
            out.append(ColocationSample(device_kind=row["device_kind"], variant=row[cols[0]], partition=int(row[cols[1]]),
                                        batch=int(row[cols[2]]), other=row[cols[3]], other_partition=int(row[cols[4]]),
                                        other_batch=int(row[cols[5]]), solo_p50_ms=solo, shared_p50_ms=shared))
        except (TypeError, ValueError) as exc:
            raise ProfileSourceError(f"{path}:{line}: bad co-location row: {exc}") from None
    return out


def load_profiles(
    *,
    profiles_csv: str | Path | None = None,
    colocations_csv: str | Path | None = None,
    state_dir: str | Path | None = None,
    interference: str | None = None,
    margin: float = DEFAULT_MARGIN,
) -> Profiles:
    """Latency and interference models from exactly one source. ``interference``: "off", "fit"
    (an error without enough co-location samples) or None (fit when there are enough)."""
    if (profiles_csv is None) == (state_dir is None):
        raise ProfileSourceError(
            "name the profiles to plan with: --profiles FILE (CSV: variant,device_kind,partition,batch,p50_ms,p99_ms) "
            "or --state-dir DIR (the controller's measured profiles)" if profiles_csv is None else
            "give --profiles or --state-dir, not both")
    if state_dir is not None:
        if colocations_csv is not None:
            raise ProfileSourceError("--colocations goes with --profiles; --state-dir brings its own co-location samples")
        db = Path(state_dir) / STORE_FILE
        if not db.is_file():
            raise ProfileSourceError(f"no controller store in {state_dir} (expected {db}); has a controller run with this --state-dir?")
        store = StateStore(db)
        try:
            samples, colocations = store.profiles(), store.colocations()
        finally:
            store.close()
        if not samples:
            raise ProfileSourceError(f"the controller store {db} holds no profiles yet; let the agents profile first, or use --profiles")
        source = f"{len(samples)} measured profile points from {db}"
    else:
        samples = read_profile_csv(profiles_csv)
        colocations = read_colocation_csv(colocations_csv) if colocations_csv is not None else []
        source = f"{len(samples)} profile points from {profiles_csv}"
    table = profile_table(samples)
    usable = [c for c in colocations if c.solo_p50_ms > 0]
    if interference == "off":
        model, note = InterferenceModel.none(), "interference off"
    elif len(usable) >= MIN_COLOCATIONS_TO_FIT:
        model = interference_model(colocations, table)  # as the controller fits it: features from the profile table
        note = f"interference fitted from {len(usable)} co-location samples ({', '.join(model.coefficients)})"
    elif interference == "fit":
        raise ProfileSourceError(
            f"--interference fit needs at least {MIN_COLOCATIONS_TO_FIT} co-location samples, found {len(usable)}"
            + ("; pass --colocations FILE" if state_dir is None else ""))
    else:
        model, note = InterferenceModel.none(), f"interference off ({len(usable)} co-location samples, {MIN_COLOCATIONS_TO_FIT} needed)"
    return Profiles(LatencyModel(table, margin=margin), model, f"{source}; {note}")


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
    given = sum(g.count for g in groups)
    parts = ", ".join(f"{g.name} ({g.kind}) {needed.counts[g.name]}" for g in groups)
    delta = needed.total - given
    verdict = "exactly what you have" if delta == 0 else f"{-delta} fewer than you have" if delta < 0 else f"{delta} more than you have"
    scope = " (for the servable variants)" if needed.impossible else ""
    lines.append(f"devices needed ({policy}){scope}: {needed.total}  [{parts}] — {verdict}; one fewer leaves demand unserved")
    return "\n".join(lines)


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
        out.append(f"  {p:<9} {'> ' + str(SEARCH_LIMIT) if n.total is None else n.total} devices")
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
