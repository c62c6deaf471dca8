"""Manifests and variant folders of a model repository: the fields, the integrity check, atomic writes.

A variant folder holds its artifacts and ``manifest.json``; a manifest may list several artifacts
of the same network under ``artifacts`` (one per backend), the top-level fields naming the served
one. Imports nothing of ours beyond ``mesh.digest``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mesh.digest import sha256_file

ARTIFACT = "model.pt"
ONNX_ARTIFACT = "model.onnx"
ARTIFACT_FILES = {"torchscript": ARTIFACT, "onnx": ONNX_ARTIFACT}
MANIFEST = "manifest.json"
MAX_BATCH = 32
CPU_POWER_W = 15.0  # assumed CPU power budget behind the energy estimate


def manifest_for(
    *, family: str, variant: str, blob: bytes, profile: dict[str, float], **fields: Any
) -> dict[str, Any]:
    """The fields every manifest shares, in the documented order, then the variant's own."""
    return {
        "family": family,
        "variant": variant,
        "version": "1",
        "backend": "torchscript",
        "accuracy": fields.pop("accuracy"),
        "accuracy_metric": fields.pop("accuracy_metric"),
        "inputs": fields.pop("inputs"),
        "outputs": fields.pop("outputs"),
        "max_batch": MAX_BATCH,
        "default_slo_ms": fields.pop("default_slo_ms"),
        "energy_j": round(CPU_POWER_W * profile["1"] / 1000.0, 9),
        "artifact": ARTIFACT,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size_bytes": len(blob),
        "profile_ms": profile,
        **fields,
    }


def artifact_entry(file: str, blob: bytes, *, accuracy: float, profile: dict[str, float],
                   **fields: Any) -> dict[str, Any]:
    """One backend's artifact as a manifest's ``artifacts`` lists it."""
    return {"artifact": file, "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob),
            "accuracy": accuracy, "profile_ms": profile, **fields}


def serving(manifest: dict[str, Any], backend: str) -> dict[str, Any]:
    """``manifest`` with its top-level backend, artifact, accuracy and profile taken from ``artifacts``."""
    entry = manifest["artifacts"][backend]
    served = {**manifest, "backend": backend}
    for key in ("artifact", "sha256", "size_bytes", "accuracy", "profile_ms"):
        served[key] = entry[key]
    served["energy_j"] = round(CPU_POWER_W * entry["profile_ms"]["1"] / 1000.0, 9)
    return served


def intact_manifest(
    variant_dir: Path, variant: str, *, heldout_sha: str | None = None
) -> dict[str, Any] | None:
    """The variant's manifest if it and its artifact agree; None when it must be rebuilt."""
    try:
        manifest = json.loads((variant_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("variant") != variant:
        return None
    artifact = variant_dir / str(manifest.get("artifact", ARTIFACT))
    try:
        if artifact.stat().st_size != manifest.get("size_bytes"):
            return None
        if sha256_file(artifact) != manifest.get("sha256"):
            return None
    except OSError:
        return None
    for entry in dict(manifest.get("artifacts", {})).values():
        try:
            other = variant_dir / str(entry["artifact"])
            if other.stat().st_size != entry.get("size_bytes") or sha256_file(other) != entry.get("sha256"):
                return None
        except (OSError, KeyError, TypeError):
            return None
    if heldout_sha is not None and manifest.get("heldout_sha256") != heldout_sha:
        return None
    return manifest


def publish(variant_dir: Path, blob: bytes, manifest: dict[str, Any], *, extra: dict[str, bytes] | None = None) -> None:
    """Write ``model.pt``, the ``extra`` files, then the manifest; a file already holding its bytes is kept."""
    # The artifacts go first so a manifest never names bytes that are not on disk yet.
    variant_dir.mkdir(parents=True, exist_ok=True)
    for name, data in {ARTIFACT: blob, **(extra or {})}.items():
        _write_if_changed(variant_dir / name, data)
    _write_if_changed(variant_dir / MANIFEST, manifest_bytes(manifest))


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode()


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.stat().st_size == len(data) and sha256_file(path) == hashlib.sha256(data).hexdigest():
            return
    except OSError:
        pass
    write_atomic(path, data)


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the repository from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
