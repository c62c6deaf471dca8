"""The goodput benchmark's two CNNs, built from a seed (no downloads), and their letmesh repository.

small: five conv-BN-ReLU layers (32-64-128-128-256 channels) and a linear layer to 10 classes on
3x32x32. medium: the ResNet-18 layout (BasicBlocks 2-2-2-2, widths 64-512, a 3x3 stride-2 stem,
no max-pool) on 3x64x64. Both are saved traced and frozen as TorchScript and exported to ONNX,
each in its own repository folder whose manifest serves the chosen backend.
"""

from __future__ import annotations

import hashlib
import io
import json
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from letmesh.export import onnx_bytes, quiet_jit
from letmesh.manifest import ARTIFACT, MANIFEST, ONNX_ARTIFACT

SEED = 20261202
INPUT, OUTPUT = "image", "logits"


@dataclass(frozen=True, slots=True)
class ModelDef:
    key: str  # "small" | "medium": the benchmark's name for it
    variant: str  # the variant name a client asks letmesh and the baseline for
    shape: tuple[int, int, int]
    low_rate: float  # req/s at which server CPU per request is measured
    summary: str


MODELS = {
    "small": ModelDef("small", "small-cnn", (3, 32, 32), 30.0,
                      "5 conv-BN-ReLU (32-64-128-128-256) + linear to 10, 3x32x32"),
    "medium": ModelDef("medium", "resnet18-64", (3, 64, 64), 6.0,
                       "ResNet-18 layout (BasicBlocks 2-2-2-2, 64-512, 3x3 stride-2 stem, no max-pool), 3x64x64"),
}


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)]


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        # Strides 1-1-2-1-2 (32x32 down to 8x8): about 95 M multiply-adds per image, a sixth of medium's.
        for out, stride in zip((32, 64, 128, 128, 256), (1, 1, 2, 1, 2)):
            layers += [*_conv_bn(width, out, stride), nn.ReLU()]
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride), nn.ReLU(), *_conv_bn(cout, cout))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNetLayout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 64, stride=2), nn.ReLU())
        blocks: list[nn.Module] = []
        width = 64
        for stage, out in enumerate((64, 128, 256, 512)):
            for i in range(2):
                blocks.append(BasicBlock(width, out, 2 if i == 0 and stage > 0 else 1))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build_module(model: ModelDef) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        net = SmallCnn() if model.key == "small" else ResNetLayout()
        # Non-trivial batch-norm statistics, so freezing folds real numbers.
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def torchscript_bytes(net: nn.Module, example: torch.Tensor) -> bytes:
    with quiet_jit(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        frozen = torch.jit.freeze(torch.jit.trace(net, example))
        buffer = io.BytesIO()
        torch.jit.save(frozen, buffer)
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class Artifacts:
    torchscript: bytes
    onnx: bytes
    max_abs_diff: float  # between the two artifacts' outputs on a seeded batch


def export(model: ModelDef) -> Artifacts:
    net = build_module(model)
    example = torch.from_numpy(sample_images(model, 2))
    ts = torchscript_bytes(net, example)
    ox = onnx_bytes(net, example, [INPUT], [OUTPUT])
    probe = sample_images(model, 4, seed=1)
    diff = float(np.abs(open_runtime("onnx", ox)(probe) - open_runtime("torchscript", ts)(probe)).max())
    return Artifacts(ts, ox, diff)


def sample_images(model: ModelDef, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *model.shape), dtype=np.float32)


# Runtimes of the ONNX artifact through OpenVINO, by the manifest precision each serves at.
OPENVINO = {"openvino": "fp32", "openvino-bf16": "bf16"}


def runtimes(device: str) -> tuple[str, ...]:
    """The runtimes that can compute on ``device``: ONNX Runtime on a GPU only with its CUDA provider.
    (OpenVINO, on the CPU only, is measured when asked for.)"""
    if device == "cpu":
        return ("torchscript", "onnx")
    import onnxruntime as ort

    return ("torchscript", "onnx") if "CUDAExecutionProvider" in ort.get_available_providers() else ("torchscript",)


def open_runtime(backend: str, blob_or_path: bytes | Path, device: str = "cpu"):
    """A callable numpy batch -> numpy logits on one thread (and ``device``), for calibration and the baseline."""
    if backend in OPENVINO:
        # Exactly as a letmesh worker opens it (on this process's cores: the caller pins it to one).
        from agents.backend import open_backend
        from protocol.types import TensorSpec, VariantSpec

        image = TensorSpec(name=INPUT, datatype="FP32", shape=(-1, -1, -1, -1))
        logits = TensorSpec(name=OUTPUT, datatype="FP32", shape=(-1, 10))
        spec = VariantSpec(name="calibration", family="calibration", sha256="", size_bytes=0, backend="openvino",
                           precision=OPENVINO[backend], inputs=(image,), outputs=(logits,))
        run_openvino = open_backend(spec, Path(blob_or_path))
        return lambda x: run_openvino([x])[0]
    if backend == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        source = blob_or_path if isinstance(blob_or_path, bytes) else str(blob_or_path)
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        session = ort.InferenceSession(source, options, providers=providers)
        return lambda x: session.run(None, {INPUT: x})[0]
    target = torch.device(device)
    with quiet_jit():
        source = io.BytesIO(blob_or_path) if isinstance(blob_or_path, bytes) else str(blob_or_path)
        module = torch.jit.load(source, map_location=target).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x).to(target)).cpu().numpy()  # the copy back waits for the GPU

    return run


def latency_table(runs: dict[str, Any], model: ModelDef, limit_ms: float, *, repeats: int, rounds: int = 3,
                  max_batch: int = 64, through: int = 1) -> dict[str, dict[int, float]]:
    """Latency (ms) of batch 1, 2, 4, ... per runtime, until one exceeds ``limit_ms`` (that one
    included) and the batch has reached ``through``.

    Each figure is the lowest of ``rounds`` medians of ``repeats`` runs, the runtimes interleaved
    round by round: on a shared machine, other work only ever adds time, and it hits both alike.
    """
    out: dict[str, dict[int, float]] = {name: {} for name in runs}
    active = set(runs)
    batch = 1
    while active and batch <= max_batch:
        x = sample_images(model, batch)
        best = dict.fromkeys(active, float("inf"))
        for _ in range(rounds):
            for name in sorted(active):
                run = runs[name]
                run(x)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    run(x)
                    times.append(time.perf_counter() - start)
                best[name] = min(best[name], statistics.median(times) * 1000.0)
        for name, ms in best.items():
            out[name][batch] = ms
            if ms > limit_ms and batch >= through:
                active.discard(name)
        batch *= 2
    return out


def flops_per_image(model: ModelDef) -> float:
    """Floating-point operations of one image's forward pass, as torch counts them (a multiply-add is two)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_module(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, *model.shape))
    return float(counter.get_total_flops())


def fp32_peak_gflops(size: int = 2048, rounds: int = 5) -> float:
    """This core's fp32 matrix-multiply rate (GFLOP/s) with the current torch threads: the best of
    ``rounds`` products of two ``size`` x ``size`` matrices, about what a core's vector units do at
    best; a convolution that a runtime computes at this rate has no fp32 speed left to find."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def compute_limit(latencies_ms: dict[int, float], slo_ms: float) -> tuple[float, int]:
    """(best samples/s over batch sizes whose latency fits half the SLO, that batch size)."""
    fits = {b: b / (ms / 1000.0) for b, ms in latencies_ms.items() if ms <= slo_ms / 2}
    if not fits:
        return 0.0, 0
    best = max(fits, key=fits.get)
    return fits[best], best


def write_repository(root: Path, model: ModelDef, artifacts: Artifacts, *, backend: str, slo_ms: float,
                     max_batch: int, profile_ms: dict[str, dict[int, float]]) -> Path:
    """A one-variant letmesh repository serving ``backend``; both artifacts lie beside the manifest."""
    folder = root / model.variant
    folder.mkdir(parents=True, exist_ok=True)
    blobs = {"torchscript": (ARTIFACT, artifacts.torchscript), "onnx": (ONNX_ARTIFACT, artifacts.onnx)}
    for name, blob in blobs.values():
        (folder / name).write_bytes(blob)
    name, blob = blobs["onnx" if backend in OPENVINO else backend]
    profile = {str(b): round(ms, 4) for b, ms in profile_ms[backend].items() if b <= max_batch}
    shape = [-1, *model.shape]
    manifest: dict[str, Any] = {
        "family": model.key, "variant": model.variant, "version": "1",
        "backend": "openvino" if backend in OPENVINO else backend, "precision": OPENVINO.get(backend, "fp32"),
        "accuracy": 0.1, "accuracy_metric": "chance: random weights, for timing only",
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": shape}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 10]}],
        "max_batch": max_batch, "default_slo_ms": slo_ms, "energy_j": 0.0,
        "artifact": name, "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob),
        "profile_ms": profile, "description": f"goodput benchmark model: {model.summary}",
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.support.goodput_models KEY TORCHSCRIPT ONNX SLO_FACTOR REPEATS SEED DEVICE
    [SLO_MS [THROUGH [EXTRA]]]``: calibration. A positive ``SLO_MS`` fixes the SLO instead of ``SLO_FACTOR`` x
    the batch-1 latency; batches are measured up to one past half the SLO and at least up to ``THROUGH``;
    ``EXTRA`` names OpenVINO runtimes to measure as well (comma-separated keys of ``OPENVINO``).

    Run in its own process (pinned by the caller), with one torch thread: switching the thread count
    back and forth in a long-lived process left its later two-thread work many times slower.
    Prints one JSON object: latency tables by runtime, the SLO, the logits of the seeded image, and
    (on a CPU) the core's fp32 matrix-multiply rate.
    """
    import sys

    args = list(argv or sys.argv[1:])
    key, ts_path, onnx_path, factor, repeats, seed, device = args[:7]
    fixed_slo_ms, through = (float(args[7]) if len(args) > 7 else 0.0), (int(args[8]) if len(args) > 8 else 1)
    torch.set_num_threads(1)
    model = MODELS[key]
    paths = {"torchscript": Path(ts_path), "onnx": Path(onnx_path)}
    extra = [name for name in (args[9] if len(args) > 9 else "").split(",") if name]
    paths.update({name: Path(onnx_path) for name in extra})
    runs = {name: open_runtime(name, paths[name], device) for name in (*runtimes(device), *extra)}
    first = latency_table(runs, model, 0.0, repeats=int(repeats) * 2)
    slo_ms = fixed_slo_ms or float(factor) * first["torchscript"][1]
    latencies = latency_table(runs, model, slo_ms / 2, repeats=int(repeats), through=through)
    for name, table in first.items():  # the lower batch-1 figure of the two passes: noise only adds time
        latencies[name][1] = min(latencies[name][1], table[1])
    image = sample_images(model, 1, seed=int(seed))
    slo_ms = fixed_slo_ms or float(factor) * latencies["torchscript"][1]
    print(json.dumps({"latency_ms": latencies, "slo_ms": round(slo_ms, 1),
                      "expected": {name: run(image).tolist() for name, run in runs.items()},
                      "fp32_peak_gflops": fp32_peak_gflops() if device == "cpu" else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
