"""The model repository: a folder of variants, each a manifest plus an artifact, grouped in families.

Layout: ``<repo>/<variant>/manifest.json`` and the artifact it names beside it. Every manifest is
validated and every artifact's sha256 checked when the repository is loaded; a bad variant is
an error naming the file, never a silently missing model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from controller.error import RepositoryError
from mesh.batching import POLICIES as BATCHING_POLICIES
from mesh.digest import sha256_file
from protocol.types import DATATYPES, ModelInfo, TensorSpec, VariantSpec

MANIFEST = "manifest.json"


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
            energy_j=self.energy_j,
        )

    @property
    def cost_ms(self) -> float:
        """A relative cost for balancing placement: the largest profiled batch latency."""
        if not self.profile_ms:
            return 1.0
        return self.profile_ms[max(self.profile_ms)]


def load_repository(root: Path | str) -> dict[str, Variant]:
    """Every variant under ``root`` by name; raises RepositoryError on the first bad one."""
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a folder")
    variants: dict[str, Variant] = {}
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        variant = _load_variant(manifest)
        if variant.name in variants:
            raise RepositoryError(f"{manifest}: variant {variant.name!r} defined twice")
        variants[variant.name] = variant
    if not variants:
        raise RepositoryError(f"model repository {root} holds no */{MANIFEST}")
    return variants


def _load_variant(manifest: Path) -> Variant:
    try:
        raw = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{manifest}: {exc}") from None
    try:
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
        if backend != "torchscript":
            raise RepositoryError(f"{manifest}: backend {backend!r} is not supported (torchscript)")
        max_batch = int(raw.get("max_batch", 1))
        if max_batch < 1:
            raise RepositoryError(f"{manifest}: max_batch must be at least 1")
        profile = {int(k): float(v) for k, v in dict(raw.get("profile_ms", {})).items()}
        return Variant(
            name=_str(raw, "variant"),
            family=_str(raw, "family"),
            version=str(raw.get("version", "1")),
            backend=backend,
            accuracy=float(raw["accuracy"]),
            max_batch=max_batch,
            default_slo_ms=float(raw.get("default_slo_ms", 100.0)),
            energy_j=float(raw.get("energy_j", 0.0)),
            inputs=_specs(raw, "inputs", manifest),
            outputs=_specs(raw, "outputs", manifest),
            artifact=artifact,
            sha256=sha,
            size_bytes=artifact.stat().st_size,
            profile_ms=profile,
            batching=_batching(raw, manifest),
        )
    except RepositoryError as exc:
        if str(manifest) in str(exc):
            raise
        raise RepositoryError(f"{manifest}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise RepositoryError(f"{manifest}: bad field ({exc})") from None


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


def _specs(raw: dict, key: str, manifest: Path) -> tuple[TensorSpec, ...]:
    specs = []
    for item in raw[key]:
        datatype = item["datatype"]
        if datatype not in DATATYPES:
            raise RepositoryError(f"{manifest}: {key} datatype {datatype!r} is not supported")
        shape = tuple(int(d) for d in item["shape"])
        specs.append(TensorSpec(name=str(item["name"]), datatype=datatype, shape=shape))
    if not specs:
        raise RepositoryError(f"{manifest}: {key} is empty")
    return tuple(specs)
