"""What ``letmesh plan`` and ``letmesh simulate`` read: the workload and devices files, and the
profiles to plan with (CSV files, or the controller's SQLite store). Every failure is a
:class:`CapacityError` that names the file, the line and what was wrong.

File formats: see :mod:`letmesh.capacity`.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.planning import Demand, DeviceSlot, InterferenceModel, LatencyModel
from controller.planning.profile import DEFAULT_MARGIN
from controller.replanner import MIN_COLOCATIONS_TO_FIT, interference_model, profile_table
from controller.store import StateStore
from protocol.types import ColocationSample, ProfileSample

STORE_FILE = "controller.sqlite3"


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


def _text(entry: Mapping, key: str, where: str, hint: str = "") -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise WorkloadFileError(f"{where}: `{key}` must be a non-empty string{hint}")
    return value


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
        variant = _text(m, "variant", where)
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
        kind = _text(d, "kind", where, " (the profiles' device_kind, e.g. \"cuda\" or \"cpu\")")
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
        store = StateStore.reader(db)
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
