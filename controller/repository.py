"""The model repository: a folder of variants, each a manifest plus an artifact, grouped in families.

Layout: ``<repo>/<variant>/manifest.json`` and the artifact it names beside it; a folder whose
name starts with a dot is not a variant. Every manifest is validated and every artifact's sha256
(and, for zip-archive formats, its integrity) checked when the repository is scanned. A bad
variant is never a silently missing model: :func:`scan_repository` sets it aside as unavailable
with its reason (the controller serves the rest and reports it), and :func:`load_repository`
makes it an error naming the file.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controller.error import RepositoryError
from mesh.archive import native_code
from mesh.batching import POLICIES as BATCHING_POLICIES
from mesh.digest import sha256_file
from protocol.codec import DEFAULT_LIMITS
from protocol.types import (
    BACKENDS,
    DATATYPES,
    PRECISIONS,
    ModelInfo,
    TensorSpec,
    VariantSpec,
    serves_precision,
    stackable,
)

MANIFEST = "manifest.json"
# Variant and family names: they name files (a family's policy snapshot) and URL paths.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # whole names only: fullmatch
MAX_BATCH = 1 << 16
# The inputs of one batch of max_batch rows, which a worker allocates at warm-up and whenever its
# queue fills a batch: past this, a worker would exhaust its host's memory before serving anything.
MAX_BATCH_INPUT_BYTES = 4 << 30
MAX_LATENCY_MS = 3_600_000.0  # an SLO or a profiled batch of an hour: past this, a typo
MAX_MEMORY_MB = float(1 << 24)  # a declared memory need of 16 TiB: past this, a typo
MAX_RANK = DEFAULT_LIMITS.max_rank  # what a tensor may have on the wire


@dataclass(frozen=True, slots=True)
class Variant:
    """One model variant as the controller knows it. Immutable once loaded."""

    name: str
    family: str
    version: str
    backend: str
    accuracy: float
    max_batch: int
    default_slo_ms: float
    energy_j: float
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    artifact: Path
    sha256: str
    size_bytes: int
    profile_ms: dict[int, float]
    batching: str = ""  # the worker's batching policy for this variant; "" = the controller's default
    memory_bytes: int = 0  # what its manifest declares a worker of it needs (memory_mb); 0: not declared
    precision: str = "fp32"  # the arithmetic the runtime may use (protocol.types.PRECISIONS)

    def memory_need(self) -> int:
        """Bytes of device memory the planner reserves for each worker process of it: the declared
        need, else its weights (the artifact's size) and one batch of max_batch rows of inputs and
        outputs, a dimension of any size past the batch counted as 1. A floor, not a measure:
        activations and the runtime's own memory come on top; a manifest says more with memory_mb."""
        if self.memory_bytes:
            return self.memory_bytes
        rows = sum(math.prod(max(1, d) for d in t.shape[1:]) * np.dtype(DATATYPES[t.datatype]).itemsize
                   for t in (*self.inputs, *self.outputs))
        return self.size_bytes + self.max_batch * rows

    def spec(self) -> VariantSpec:
        return VariantSpec(
            name=self.name,
            family=self.family,
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            backend=self.backend,
            max_batch=self.max_batch,
            inputs=self.inputs,
            outputs=self.outputs,
            precision=self.precision,
        )

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            family=self.family,
            accuracy=self.accuracy,
            max_batch=self.max_batch,
            default_slo_ms=self.default_slo_ms,
            inputs=self.inputs,
            outputs=self.outputs,
            version=self.version,
            platform=BACKENDS[self.backend],
            energy_j=self.energy_j,
        )

    @property
    def cost_ms(self) -> float:
        """A relative cost for balancing placement: the largest profiled batch latency."""
        if not self.profile_ms:
            return 1.0
        return self.profile_ms[max(self.profile_ms)]


def reservation(variants: Mapping[str, Variant], names: Iterable[str]) -> int:
    """What the planner reserves for one worker serving ``names``: their memory needs together
    (a name the repository no longer has counts nothing)."""
    return sum(variants[n].memory_need() for n in names if n in variants)


@dataclass(frozen=True, slots=True)
class Repository:
    """The variants that can be served, and those that cannot with the reason why (by name)."""

    variants: dict[str, Variant]
    unavailable: dict[str, str] = field(default_factory=dict)


def scan_repository(root: Path | str) -> Repository:
    """Every variant under ``root``; a bad one is set aside in ``unavailable``, not fatal.

    Raises RepositoryError only when ``root`` is not a folder or no variant at all can be served.
    """
    root = check_root(root)
    variants: dict[str, Variant] = {}
    unavailable: dict[str, str] = {}
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        if manifest.parent.name.startswith("."):  # a variant being added (controller.model_import), not one yet
            continue
        try:
            variant = _load_variant(manifest)
            if variant.name in variants:
                raise RepositoryError(f"{manifest}: variant {variant.name!r} defined twice")
        except RepositoryError as exc:
            name = _declared_name(manifest)
            unavailable[name if name not in variants else manifest.parent.name] = str(exc)
            continue
        variants[variant.name] = variant
    for name, reason in family_mismatches(variants.values()).items():
        set_aside(variants, unavailable, name, reason)
    if not variants:
        if unavailable:
            raise RepositoryError(f"model repository {root} holds no usable variant: "
                                  + "; ".join(unavailable.values()))
        raise RepositoryError(f"model repository {root} holds no */{MANIFEST}")
    return Repository(variants, unavailable)


def check_root(root: Path | str) -> Path:
    """``root`` if it is a folder holding at least one variant's manifest; else RepositoryError.

    Cheap (reads no manifest, hashes no artifact): what a command checks before it starts a role.
    """
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a folder")
    if not any(not m.parent.name.startswith(".") for m in root.glob(f"*/{MANIFEST}")):
        raise RepositoryError(f"model repository {root} holds no */{MANIFEST}")
    return root


MAX_REASON_LEN = 512


def describe_tensors(specs: tuple[TensorSpec, ...]) -> str:
    """``name:DATATYPE:shape`` for each tensor, as ``letmesh repo add`` takes them."""
    return ", ".join(f"{s.name}:{s.datatype}:{','.join(map(str, s.shape))}" for s in specs) or "none"


def family_mismatches(variants) -> dict[str, str]:
    """Variants whose inputs or outputs differ from the rest of their family, each with the reason.

    A request to a family may be served by any of its variants, and the gateway describes the
    family by one of them: they must take the same inputs and give the same outputs (names,
    datatypes, shapes). The signature of :func:`standing_variant` stands; the variants that
    differ from it are named here.
    """
    by_family: dict[str, list[Variant]] = {}
    for v in variants:
        by_family.setdefault(v.family, []).append(v)
    out: dict[str, str] = {}
    for members in by_family.values():
        holder = standing_variant(members)
        for v in members:
            if (v.inputs, v.outputs) != (holder.inputs, holder.outputs):
                out[v.name] = family_mismatch_reason(v, holder)
    return out


def standing_variant(members) -> Variant:
    """The variant whose inputs and outputs a family keeps: those most of its variants share (on a
    tie, those of the first by name), held by the first variant by name that has them."""
    ordered = sorted(members, key=lambda v: v.name)
    counts: dict[tuple, int] = {}
    for v in ordered:
        counts[(v.inputs, v.outputs)] = counts.get((v.inputs, v.outputs), 0) + 1
    standing = max(counts, key=lambda sig: counts[sig])  # the first of equal counts: name order
    return next(v for v in ordered if (v.inputs, v.outputs) == standing)


def family_mismatch_reason(v: Variant, holder: Variant) -> str:
    what = []
    if v.inputs != holder.inputs:
        what.append(f"inputs {describe_tensors(v.inputs)} differ from {describe_tensors(holder.inputs)}")
    if v.outputs != holder.outputs:
        what.append(f"outputs {describe_tensors(v.outputs)} differ from {describe_tensors(holder.outputs)}")
    return (f"variant {v.name!r}: {' and '.join(what)} of {holder.name!r} in family {v.family!r}; a family's "
            "variants must take the same inputs and give the same outputs")


def set_aside(variants: dict[str, Variant], unavailable: dict[str, str], name: str, reason: str) -> bool:
    """Move the servable variant ``name`` into ``unavailable`` with ``reason`` (cut short).

    True when it was servable; a name that is not (already set aside, or never in the repository:
    names come from the wire) changes nothing, so ``unavailable`` grows only with real variants.
    """
    if name not in variants:
        return False
    del variants[name]
    unavailable[name] = reason[:MAX_REASON_LEN]
    return True


def load_repository(root: Path | str) -> dict[str, Variant]:
    """Every variant under ``root`` by name; raises RepositoryError on the first bad one."""
    repo = scan_repository(root)
    for reason in repo.unavailable.values():
        raise RepositoryError(reason)
    return repo.variants


def check_variant(manifest: Path | str) -> Variant:
    """One variant folder's manifest read and checked as a scan does; RepositoryError names what is wrong."""
    return _load_variant(Path(manifest))


def _declared_name(manifest: Path) -> str:
    """The variant name a manifest declares, or its folder's name when it cannot be read."""
    try:
        name = json.loads(manifest.read_text()).get("variant")
    except (OSError, ValueError, AttributeError, RecursionError):
        name = None
    return name if isinstance(name, str) and name and len(name) <= 256 else manifest.parent.name


def _load_variant(manifest: Path) -> Variant:
    try:
        raw = json.loads(manifest.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise RepositoryError(f"{manifest}: {exc}") from None
    try:
        if not isinstance(raw, dict):
            raise RepositoryError("a manifest is a JSON object")
        artifact = manifest.parent / _str(raw, "artifact")
        if artifact.resolve().parent != manifest.parent.resolve():
            raise RepositoryError(f"{manifest}: artifact must lie beside its manifest")
        if not artifact.is_file():
            raise RepositoryError(f"{manifest}: artifact {artifact.name} is missing")
        sha = _str(raw, "sha256").lower()
        actual = sha256_file(artifact)
        if actual != sha:
            raise RepositoryError(f"{manifest}: sha256 of {artifact.name} is {actual}, manifest says {sha}")
        backend = raw.get("backend", "torchscript")
        if backend not in BACKENDS:
            raise RepositoryError(f"{manifest}: backend {backend!r} is not supported ({', '.join(BACKENDS)})")
        if backend in ZIP_BACKENDS:
            _check_archive(artifact, manifest)
        if backend == "torch_export" and (compiled := native_code(artifact)):
            raise RepositoryError(f"{manifest}: artifact {artifact.name} carries compiled code "
                                  f"({', '.join(compiled[:3])}), which a worker loading it would run")
        max_batch = raw.get("max_batch", 1)
        if type(max_batch) is not int or not 1 <= max_batch <= MAX_BATCH:
            raise RepositoryError(f"{manifest}: max_batch must be a whole number from 1 to {MAX_BATCH}")
        inputs = _specs(raw, "inputs", manifest)
        if not stackable(inputs):
            # Requests to it never stack (an input has no batch dimension): it runs one at a time,
            # and is profiled and planned so (warm-up at larger sizes would time the same input).
            max_batch = 1
        row = sum(math.prod(t.shape[1:]) * np.dtype(DATATYPES[t.datatype]).itemsize for t in inputs)
        if all(d > 0 for t in inputs for d in t.shape[1:]) and max_batch * row > MAX_BATCH_INPUT_BYTES:
            raise RepositoryError(f"{manifest}: max_batch {max_batch} of inputs of {row:,} bytes a row is "
                                  f"{max_batch * row / 2**30:.1f} GiB a batch (at most {MAX_BATCH_INPUT_BYTES >> 30} "
                                  f"GiB): lower max_batch")
        profile = {int(k): _number({"profile_ms": v}, "profile_ms", lo=0.0, hi=MAX_LATENCY_MS, above=True)
                   for k, v in dict(raw.get("profile_ms", {})).items()}
        if any(k < 1 for k in profile):
            raise RepositoryError(f"{manifest}: profile_ms is keyed by batch sizes from 1")
        return Variant(
            name=_name(raw, "variant"),
            family=_name(raw, "family"),
            version=str(raw.get("version", "1")),
            backend=backend,
            accuracy=_number(raw, "accuracy", lo=0.0, hi=1.0),
            max_batch=max_batch,
            default_slo_ms=_number(raw, "default_slo_ms", 100.0, lo=0.0, hi=MAX_LATENCY_MS, above=True),
            energy_j=_number(raw, "energy_j", 0.0, lo=0.0, hi=float("inf")),
            inputs=inputs,
            outputs=_specs(raw, "outputs", manifest),
            artifact=artifact,
            sha256=sha,
            size_bytes=artifact.stat().st_size,
            profile_ms=profile,
            batching=_batching(raw, manifest),
            memory_bytes=round(_number(raw, "memory_mb", 0.0, lo=0.0, hi=MAX_MEMORY_MB) * 2**20),
            precision=_precision(raw, backend),
        )
    except RepositoryError as exc:
        if str(manifest) in str(exc):
            raise
        raise RepositoryError(f"{manifest}: {exc}") from None
    except KeyError as exc:
        raise RepositoryError(f"{manifest}: missing field {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise RepositoryError(f"{manifest}: bad field ({exc})") from None


def _precision(raw: dict, backend: str) -> str:
    precision = raw.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise RepositoryError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if not serves_precision(backend, precision):
        raise RepositoryError(f"precision {precision!r} is served by backend 'openvino' only, not {backend!r}")
    return precision


# Backends whose artifact is a zip archive: a truncated or damaged one is caught here, before a
# worker crash-loops on it (a manifest written for the damaged bytes passes the sha256 check).
ZIP_BACKENDS = frozenset({"torchscript", "torch_export"})


def _check_archive(artifact: Path, manifest: Path) -> None:
    try:
        with zipfile.ZipFile(artifact) as archive:
            bad = archive.testzip()
    except Exception as exc:  # any failure to read it through (bad zip, zlib error, truncation) means damaged
        raise RepositoryError(f"{manifest}: artifact {artifact.name} is not a complete archive ({exc})") from None
    if bad is not None:
        raise RepositoryError(f"{manifest}: artifact {artifact.name} is damaged (member {bad!r} fails its CRC)")


def _batching(raw: dict, manifest: Path) -> str:
    policy = raw.get("batching", "")
    if policy and policy not in BATCHING_POLICIES:
        raise RepositoryError(f"{manifest}: batching {policy!r} is not one of {', '.join(BATCHING_POLICIES)}")
    return policy


def _str(raw: dict, key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value:
        raise RepositoryError(f"field {key!r} must be a non-empty string")
    return value


def _name(raw: dict, key: str) -> str:
    value = _str(raw, key)
    if not NAME.fullmatch(value):
        raise RepositoryError(f"field {key!r} {value[:80]!r}: letters, digits, '.', '_' and '-' (at most 128), "
                              "starting with a letter or digit")
    return value


def _number(raw: dict, key: str, default: float | None = None, *, lo: float, hi: float, above: bool = False) -> float:
    """A finite number from ``lo`` (or above it) to ``hi``."""
    value = raw[key] if default is None else raw.get(key, default)
    if type(value) not in (int, float) or not math.isfinite(value) or value > hi or value < lo or (above and value == lo):
        raise RepositoryError(f"field {key!r} is {value!r}: a number {'above' if above else 'from'} {lo:g} "
                              f"to {hi:g} is needed")
    return float(value)


def _specs(raw: dict, key: str, manifest: Path) -> tuple[TensorSpec, ...]:
    specs = []
    for item in raw[key]:
        datatype = item["datatype"]
        if datatype not in DATATYPES:
            raise RepositoryError(f"{manifest}: {key} datatype {datatype!r} is not supported")
        shape = tuple(item["shape"])
        if len(shape) > MAX_RANK or not all(type(d) is int and (d == -1 or d >= 1) for d in shape):
            raise RepositoryError(f"{manifest}: {key} shape {list(shape)[:10]!r}: at most {MAX_RANK} dimensions, "
                                  "each -1 (any size) or a positive whole number")
        name = item["name"]
        if not isinstance(name, str) or not name or len(name) > 256:
            raise RepositoryError(f"{manifest}: each of {key} needs a name (1 to 256 characters)")
        specs.append(TensorSpec(name=name, datatype=datatype, shape=shape))
    if not specs:
        raise RepositoryError(f"{manifest}: {key} is empty")
    if len({s.name for s in specs}) != len(specs):
        raise RepositoryError(f"{manifest}: {key} names a tensor twice")
    return tuple(specs)
