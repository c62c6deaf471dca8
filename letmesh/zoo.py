"""Builds the demo model repository: real TorchScript and ONNX models with manifests, ready for the mesh.

The "digits" family trades accuracy for compute on scikit-learn's handwritten digits; the
"trivial" family (an identity) isolates data-path overhead in benchmarks. Each variant lives in
``DIR/<variant>/`` as ``model.pt`` plus ``manifest.json``; a digits variant also holds
``model.onnx``, the same network exported to ONNX, and its manifest lists both under
``artifacts``; the top-level ``backend``/``artifact`` fields name the one the mesh serves.
May import torch, numpy, sklearn, onnx and onnxruntime; never imports controller, agents or gateway.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from letmesh.export import (  # noqa: F401  (re-exported: the zoo's public helpers)
    BUILD_THREADS,
    build_threads,
    flops_per_row,
    load_script,
    onnx_bytes,
    onnx_callable,
    profile_module,
    quiet_jit,
    script_bytes,
)
from letmesh.manifest import (  # noqa: F401  (re-exported)
    ARTIFACT,
    ARTIFACT_FILES,
    CPU_POWER_W,
    MANIFEST,
    MAX_BATCH,
    ONNX_ARTIFACT,
    artifact_entry,
    intact_manifest,
    manifest_bytes,
    manifest_for,
    publish,
    serving,
    write_atomic,
)
from mesh.digest import sha256_file

log = logging.getLogger(__name__)

# The ONNX export must reproduce the TorchScript outputs this closely, or the build fails.
ONNX_TOLERANCE = 1e-5
HELDOUT = "digits-heldout.npz"

DIGITS_FAMILY = "digits"
TRIVIAL_FAMILY = "trivial"
SEED = 20240611
TEST_FRACTION = 0.3
PREPROCESS = (
    "8x8 grayscale digit flattened row-major to 64 values; each pixel (0..16) divided by 16.0, "
    "so inputs lie in [0, 1]"
)
_ENERGY_NOTE = (
    f"energy_j is an estimate, not a measurement: an assumed {CPU_POWER_W:g} W CPU budget times "
    "the median batch-1 latency measured with one CPU thread on the build machine."
)

Progress = Callable[[str], None]


class ZooBuildError(RuntimeError):
    """A freshly built artifact failed its own check after export."""


# --- networks: each maps [N, 64] pixels to [N, 10] logits ---------------------------------


class LinearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class MlpNet(nn.Module):
    def __init__(self, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 64
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 10))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvNet(nn.Module):
    """Upsamples the 8x8 view to 32x32 so the convolutions do enough work to be the costliest."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x.reshape(-1, 1, 8, 8)
        image = F.interpolate(image, size=(32, 32), mode="bilinear", align_corners=False)
        return self.fc(self.features(image))


class Probabilities(nn.Module):
    """The served form: logits turned into class probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image), dim=1)


class AddZero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipe:
    """How one digits variant is made."""

    name: str
    make: Callable[[], nn.Module]
    epochs: int
    lr: float
    summary: str


DIGITS_RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="digits-linear", make=LinearNet, epochs=60, lr=1e-2,
        summary="softmax regression 64->10",
    ),
    Recipe(
        name="digits-mlp", make=lambda: MlpNet((128,)), epochs=30, lr=3e-3,
        summary="MLP 64->128->10",
    ),
    Recipe(
        name="digits-wide", make=lambda: MlpNet((1024, 1024)), epochs=15, lr=1e-3,
        summary="MLP 64->1024->1024->10",
    ),
    Recipe(
        name="digits-cnn", make=ConvNet, epochs=8, lr=2e-3,
        summary="CNN on the 8x8 image upsampled to 32x32, conv 32-64-64 channels",
    ),
)


# --- public API ----------------------------------------------------------------------------


def build_zoo(
    dir: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    epochs_scale: float = 1.0,
    backend: str = "torchscript",
) -> list[dict[str, Any]]:
    """Build (or confirm) the digits and trivial families under ``dir``; return their manifests.

    ``backend`` ("torchscript" or "onnx") is the artifact the digits variants are served from; the
    identity stays TorchScript. A variant whose manifest and artifacts agree (sha256, size,
    held-out set) is left untouched, so a second build of a complete repository writes nothing;
    switching ``backend`` rewrites only the manifests.
    """
    if backend not in ARTIFACT_FILES:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(ARTIFACT_FILES)}")
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    say = progress or _log_line
    with build_threads():
        manifests = _build_digits(root, say, epochs_scale, backend)
        manifests.append(build_trivial(root, progress=say))
    return manifests


def build_trivial(
    dir: str | os.PathLike[str], *, progress: Progress | None = None
) -> dict[str, Any]:
    """Write the "identity" variant (y = x + 0 on FP32 [-1, 16]) unless it is already intact."""
    root = Path(dir)
    say = progress or _log_line
    name = "identity"
    existing = intact_manifest(root / name, name)
    if existing is not None:
        say(f"{name} up to date (sha256 {existing['sha256'][:12]})")
        return existing
    say(f"exporting {name} (1/1)")
    root.mkdir(parents=True, exist_ok=True)
    with build_threads():
        return _export_identity(root, name, say)


def _export_identity(root: Path, name: str, say: Progress) -> dict[str, Any]:
    blob = script_bytes(AddZero())
    module = load_script(blob)
    probe = torch.linspace(-1.0, 1.0, 3 * 16).reshape(3, 16)
    with torch.no_grad():
        if not torch.equal(module(probe), probe):
            raise ZooBuildError(f"{name}: exported artifact does not reproduce its input")
    profile = profile_module(module, 16)
    manifest = manifest_for(
        family=TRIVIAL_FAMILY,
        variant=name,
        blob=blob,
        accuracy=1.0,
        accuracy_metric="exact: output equals input",
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 16]}],
        profile=profile,
        default_slo_ms=100,
        flops_per_row=0,
        parameters=0,
        description=(
            "Identity (y = x + 0) on 16 float32 values, for measuring the serving data path "
            "without model compute. " + _ENERGY_NOTE
        ),
        preprocess="none",
    )
    publish(root / name, blob, manifest)
    say(f"exported {name} ... batch-1 latency {profile['1']:.3f} ms")
    return manifest


# --- digits family -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Split:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def _digits_split() -> _Split:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SEED
    )
    return _Split(train_x, train_y, np.ascontiguousarray(test_x), np.ascontiguousarray(test_y))


def _heldout_bytes(split: _Split) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=split.test_x, labels=split.test_y)
    return buffer.getvalue()


def _build_digits(root: Path, say: Progress, epochs_scale: float, backend: str) -> list[dict[str, Any]]:
    split = _digits_split()
    heldout = _heldout_bytes(split)
    heldout_sha = hashlib.sha256(heldout).hexdigest()
    heldout_path = root / HELDOUT
    if not heldout_path.is_file() or sha256_file(heldout_path) != heldout_sha:
        write_atomic(heldout_path, heldout)
        say(f"wrote {HELDOUT} ({len(split.test_y)} held-out digits)")
    total = len(DIGITS_RECIPES)
    manifests = []
    for index, recipe in enumerate(DIGITS_RECIPES, start=1):
        existing = intact_manifest(root / recipe.name, recipe.name, heldout_sha=heldout_sha)
        if existing is not None and backend in existing.get("artifacts", {}):
            if existing["backend"] != backend:
                existing = serving(existing, backend)
                write_atomic(root / recipe.name / MANIFEST, manifest_bytes(existing))
            say(f"{recipe.name} ({index}/{total}) up to date, accuracy {existing['accuracy']:.3f}, "
                f"serving {backend}")
            manifests.append(existing)
            continue
        say(f"training {recipe.name} ({index}/{total}) ...")
        manifest = _build_digits_variant(root, recipe, index, split, heldout_sha, epochs_scale, backend)
        say(
            f"trained {recipe.name} ({index}/{total}) ... accuracy {manifest['accuracy']:.3f}, "
            f"batch-{MAX_BATCH} latency {manifest['profile_ms'][str(MAX_BATCH)]:.3f} ms"
        )
        manifests.append(manifest)
    return manifests


def _build_digits_variant(
    root: Path, recipe: Recipe, index: int, split: _Split, heldout_sha: str, epochs_scale: float, backend: str
) -> dict[str, Any]:
    epochs = max(1, round(recipe.epochs * epochs_scale))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + index)
        net = recipe.make()
        _train(net, split, epochs=epochs, lr=recipe.lr, seed=SEED + index)
    served = Probabilities(net).eval()
    blob = script_bytes(served)
    module = load_script(blob)
    accuracy = _accuracy(module, split.test_x, split.test_y)
    profile = profile_module(module, 64)
    onnx_blob = onnx_bytes(served, torch.from_numpy(split.test_x[:2]), ["image"], ["probabilities"])
    session = onnx_callable(onnx_blob)
    with torch.no_grad():
        reference = module(torch.from_numpy(split.test_x)).numpy()
    exported = session(torch.from_numpy(split.test_x))
    max_diff = float(np.abs(exported - reference).max())
    if max_diff > ONNX_TOLERANCE:
        raise ZooBuildError(f"{recipe.name}: ONNX outputs differ from TorchScript by {max_diff:.3g}")
    onnx_accuracy = float((exported.argmax(axis=1) == split.test_y).mean())
    n_test = len(split.test_y)
    description = (
        f"Handwritten digit classifier ({recipe.summary}) trained for {epochs} epochs with Adam "
        f"on {len(split.train_y)} scikit-learn load_digits images; top-1 accuracy measured with "
        f"this artifact on {n_test} stratified held-out digits ({HELDOUT}). Input 'image': "
        f"{PREPROCESS}. Output 'probabilities': softmax over digits 0-9. " + _ENERGY_NOTE
    )
    manifest = manifest_for(
        family=DIGITS_FAMILY,
        variant=recipe.name,
        blob=blob,
        accuracy=accuracy,
        accuracy_metric=f"top1 on {n_test} held-out digits",
        inputs=[{"name": "image", "datatype": "FP32", "shape": [-1, 64]}],
        outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        profile=profile,
        default_slo_ms=200,
        flops_per_row=flops_per_row(module, 64),
        parameters=sum(p.numel() for p in served.parameters()),
        description=description,
        preprocess=PREPROCESS,
        heldout_sha256=heldout_sha,
        epochs=epochs,
    )
    manifest["artifacts"] = {
        "torchscript": artifact_entry(ARTIFACT, blob, accuracy=accuracy, profile=profile),
        "onnx": artifact_entry(ONNX_ARTIFACT, onnx_blob, accuracy=onnx_accuracy, profile=profile_module(session, 64),
                               max_abs_diff=max_diff),
    }
    manifest = serving(manifest, backend)
    publish(root / recipe.name, blob, manifest, extra={ONNX_ARTIFACT: onnx_blob})
    return manifest


def _train(net: nn.Module, split: _Split, *, epochs: int, lr: float, seed: int) -> None:
    x = torch.from_numpy(split.train_x)
    y = torch.from_numpy(split.train_y)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    net.eval()


# --- measuring an exported artifact ---------------------------------------------------------


def _accuracy(module: torch.jit.ScriptModule, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        probabilities = module(torch.from_numpy(images))
    correct = int((probabilities.argmax(dim=1).numpy() == labels).sum())
    return correct / len(labels)


def _log_line(line: str) -> None:
    log.info("%s", line)
