"""Serving a TorchScript variant through ONNX Runtime at the batch sizes where that is faster.

Opt-in per agent (``[agent] onnx_upgrade``). The first process on a host to open an artifact
exports it to ONNX, checks ONNX Runtime's outputs against TorchScript's on seeded inputs at three
batch sizes, and times the two runtimes in turns on the cores it runs on at each warm-up batch
size, smallest first. ONNX Runtime must win at batch 1 by MIN_SPEEDUP to be used at all; its lead
often shrinks as the batch grows (a ResNet-18 here: 1.43x at batch 1, 1.01x at 16), so the verdict
may split the sizes: ONNX Runtime up to the first size it is slower at, TorchScript from there.
The verdict, and the converted model when it serves any size, are kept beside the artifact in the
agent's cache under a file lock: a host decides once per artifact and manifest signature (tensor
names, types and shapes: one artifact may back variants that name it differently) and per torch /
onnxruntime version, for batches up to the largest max batch asked so far (a worker's plan often
caps it below the manifest's; a larger one times only the sizes not timed yet); its profilers and
workers then serve the same runtimes, so profiles measure what is served. Imports torch;
onnxruntime only once a verdict is read or made.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from agents.artifact_cache import converted_path, lock_path, verdict_path
from agents.backend import cpu_threads, open_backend, output_arrays
from agents.config import ONNX_UPGRADE_ENV
from mesh.digest import sha256_file
from mesh.latency import warmup_batches
from protocol.types import VariantSpec

# Outputs must agree elementwise within atol + rtol * |TorchScript's|, as numpy.allclose.
RTOL, ATOL = 1e-4, 1e-5
MIN_SPEEDUP = 1.05  # ONNX must be this much faster at batch 1 for the conversion to serve at all
KEEP_SPEEDUP = 1.0  # once it does, it serves the larger sizes up to the first it is slower at
ROUNDS = 7  # timing turns per runtime and batch size (the median is compared)
_VERDICT_VERSION = 4


def enabled_from_env() -> bool:
    return os.environ.get(ONNX_UPGRADE_ENV, "") == "1"


@dataclass(frozen=True, slots=True)
class Verdict:
    # "onnx": the converted model serves every batch; "mixed": it serves batches of up to
    # ``onnx_up_to`` rows and TorchScript the larger ones; "torchscript": the conversion serves none.
    runtime: str
    reason: str  # one line for `letmesh status`
    onnx_sha256: str = ""
    onnx_up_to: int = 0
    speedups: tuple[tuple[int, float], ...] = ()  # (batch, TorchScript's time over ONNX Runtime's) as timed

    @property
    def serves_onnx(self) -> bool:
        return self.runtime in ("onnx", "mixed")

    def covers(self, max_batch: int) -> bool:
        """Whether this verdict decides for batches of up to ``max_batch`` rows. Only a conversion
        that won at every size judged (its range is then the max batch it was judged at) has
        unknown sizes above them: a loss ends ONNX Runtime's range for good, and a refusal does not
        depend on the batch."""
        return self.runtime != "onnx" or max_batch <= self.onnx_up_to

    def describe(self) -> str:
        if self.runtime == "mixed":
            return f"onnx up to batch {self.onnx_up_to}, torchscript above ({self.reason})"
        return f"{self.runtime} ({self.reason})"


def onnx_up_to(speedups: dict[int, float], convert_at: float | None = None, keep_at: float | None = None) -> int:
    """The largest batch size ONNX Runtime serves (0: none). It must win by ``convert_at`` at the
    smallest size timed (else the conversion is not worth a second runtime); past that it serves
    each size up to the first where it is slower than ``keep_at``. A win past a loss does not count:
    between timed sizes only the trend is known."""
    convert_at = MIN_SPEEDUP if convert_at is None else convert_at
    keep_at = KEEP_SPEEDUP if keep_at is None else keep_at
    best = 0
    for i, batch in enumerate(sorted(speedups)):
        if speedups[batch] < (convert_at if i == 0 else keep_at):
            break
        best = batch
    return best


def upgrade(spec: VariantSpec, path: Path, device: str = "cpu") -> tuple[VariantSpec, Path, Verdict | None]:
    """The spec and artifact to open for ``spec``: its ONNX conversion when that serves any batch
    size (with a "mixed" verdict the original serves the larger ones: the caller opens both), else
    the original. The verdict is None when no conversion applies (not TorchScript, or not on a CPU)."""
    if spec.backend != "torchscript" or device != "cpu":
        return spec, path, None
    if any(-1 in t.shape[1:] for t in (*spec.inputs, *spec.outputs)):
        # The export is traced at one size: a variable dimension past the batch would be fixed at it.
        return spec, path, Verdict("torchscript", "not converted: a dimension past the batch varies")
    path = Path(path)
    try:
        with _locked(lock_path(path)):
            for legacy in (".onnx", ".onnx.json"):  # kept per artifact alone before signatures
                path.with_name(path.name + legacy).unlink(missing_ok=True)
            verdict = _cached(spec, path)
            if verdict is None or not verdict.covers(spec.max_batch):
                verdict = _decide(spec, path, verdict)
                _save(spec, path, verdict)
    except Exception as exc:  # the attempt must never cost the variant its TorchScript service
        return spec, path, Verdict("torchscript", f"not converted: {_first_line(exc)}")
    if not verdict.serves_onnx:
        return spec, path, verdict
    return replace(spec, backend="onnx"), converted_path(spec, path), verdict


# --- the decision -----------------------------------------------------------------------------


def _decide(spec: VariantSpec, path: Path, earlier: Verdict | None = None) -> Verdict:
    """A verdict for batches up to ``spec.max_batch``. ``earlier``: one that won at every size it
    judged, below this max batch: its conversion is kept and its sizes are not timed again (the
    noise of a second timing could flip a verdict that processes already serve by)."""
    if any(t.datatype not in ("FP32", "FP64", "FP16") for t in spec.inputs):
        return Verdict("torchscript", "not converted: ONNX is only tried for floating-point inputs")
    onnx_path = converted_path(spec, path)
    verdict = Verdict("torchscript", "not converted")
    known = dict(earlier.speedups) if earlier is not None and earlier.runtime == "onnx" else {}
    try:
        if not known:
            _export(spec, path, onnx_path)
        verdict = _judge(spec, path, onnx_path, known)
    except Exception as exc:  # the exporter raises many kinds for an op it cannot express
        verdict = Verdict("torchscript", f"not converted: {_first_line(exc)}")
    if earlier is not None and known and not verdict.serves_onnx:
        # Failed at a new size (an output that differs, an error at a larger batch): the sizes
        # judged before won and are served by, so ONNX Runtime keeps them and TorchScript takes
        # the rest.
        verdict = Verdict("mixed", f"{earlier.reason}; above batch {earlier.onnx_up_to}: {verdict.reason}",
                          earlier.onnx_sha256, earlier.onnx_up_to, earlier.speedups)
    if not verdict.serves_onnx:
        onnx_path.unlink(missing_ok=True)  # a conversion that lost everywhere is not kept
    return verdict


def _judge(spec: VariantSpec, path: Path, onnx_path: Path, known: dict[int, float]) -> Verdict:
    """ONNX when every output agrees at three batch sizes, for the batch sizes it is faster at
    (``known``: speedups already timed, by batch size)."""
    onnx_spec = replace(spec, backend="onnx")
    ts_run, onnx_run = open_backend(spec, path), open_backend(onnx_spec, onnx_path)
    worst = 0.0
    sizes = warmup_batches(spec.max_batch)
    for batch in sorted({*sizes, max(1, spec.max_batch // 2 + 1)}):
        inputs = _seeded_inputs(spec, batch)
        want = output_arrays(spec, ts_run(inputs))
        got = output_arrays(onnx_spec, onnx_run(inputs))
        for name, a, b in zip((o.name for o in spec.outputs), want, got):
            if a.shape != b.shape or not np.allclose(b, a, rtol=RTOL, atol=ATOL, equal_nan=True):
                diff = float(np.max(np.abs(b - a))) if a.shape == b.shape else float("nan")
                return Verdict("torchscript", f"not converted: output {name!r} at batch {batch} differs "
                                              f"(shapes {a.shape} / {b.shape}, max |diff| {diff:.3g})")
            if a.size:
                worst = max(worst, float(np.max(np.abs(b.astype(np.float64) - a.astype(np.float64)))))
    speedups: dict[int, float] = {}
    for batch in sizes:  # smallest first; the larger (costlier) sizes past ONNX Runtime's first loss are not timed
        speedups[batch] = known[batch] if batch in known else _speedup(ts_run, onnx_run, _seeded_inputs(spec, batch))
        if onnx_up_to(speedups) < batch:
            break
    shown = ", ".join(f"{s:.2f}x at batch {b}" for b, s in speedups.items())
    up_to = onnx_up_to(speedups)
    if up_to == 0:
        return Verdict("torchscript", f"ONNX Runtime tried: {shown}; kept TorchScript")
    runtime = "onnx" if up_to == spec.max_batch else "mixed"
    return Verdict(runtime, f"converted from TorchScript: {shown}, outputs within {worst:.1g}", sha256_file(onnx_path),
                   up_to, tuple(speedups.items()))


def _export(spec: VariantSpec, path: Path, onnx_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript and its exporter are deprecated upstream; used on purpose
        module = torch.jit.load(str(path), map_location="cpu").eval()
        example = tuple(torch.from_numpy(a) for a in _seeded_inputs(spec, 1))
        names = [t.name for t in spec.inputs] + [o.name for o in spec.outputs]
        partial = onnx_path.with_name(f".{onnx_path.name}.{os.getpid()}.part")
        try:
            torch.onnx.export(module, example, str(partial), input_names=[t.name for t in spec.inputs],
                              output_names=[o.name for o in spec.outputs], dynamic_axes={n: {0: "batch"} for n in names},
                              dynamo=False)
            os.replace(partial, onnx_path)
        finally:
            partial.unlink(missing_ok=True)


def _speedup(ts_run, onnx_run, inputs: list[np.ndarray]) -> float:
    """TorchScript's median time over ONNX Runtime's, the two timed in turns so that whatever else
    runs on these cores meanwhile slows both alike; on one core, in CPU time, which a neighbour
    taking turns on the core does not inflate."""
    clock = time.thread_time if cpu_threads() == 1 else time.perf_counter
    times: dict[str, list[float]] = {"ts": [], "onnx": []}
    for run in (ts_run, onnx_run):
        run(inputs)  # first calls compile and allocate
        run(inputs)
    for _ in range(ROUNDS):
        for key, run in (("ts", ts_run), ("onnx", onnx_run)):
            start = clock()
            run(inputs)
            times[key].append(clock() - start)
    return statistics.median(times["ts"]) / max(statistics.median(times["onnx"]), 1e-9)


def _seeded_inputs(spec: VariantSpec, batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = []
    for tensor in spec.inputs:
        shape = [batch if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(tensor.shape)]
        dtype = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}[tensor.datatype]
        arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


# --- the cache --------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import onnxruntime

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def _cached(spec: VariantSpec, path: Path) -> Verdict | None:
    """The saved verdict, if it was made with these versions and its converted model is intact."""
    try:
        saved = json.loads(verdict_path(spec, path).read_text())
        if saved.get("version") != _VERDICT_VERSION or saved.get("versions") != _versions():
            return None
        verdict = Verdict(str(saved["runtime"]), str(saved["reason"]), str(saved.get("onnx_sha256", "")),
                          int(saved.get("onnx_up_to", 0)), tuple((int(b), float(x)) for b, x in saved.get("speedups", [])))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if verdict.serves_onnx and _sha256_or_empty(converted_path(spec, path)) != verdict.onnx_sha256:
        return None
    return verdict


def _save(spec: VariantSpec, path: Path, verdict: Verdict) -> None:
    target = verdict_path(spec, path)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    partial.write_text(json.dumps({"version": _VERDICT_VERSION, "versions": _versions(), "runtime": verdict.runtime,
                                   "reason": verdict.reason, "onnx_sha256": verdict.onnx_sha256,
                                   "onnx_up_to": verdict.onnx_up_to, "speedups": [list(pair) for pair in verdict.speedups]}))
    os.replace(partial, target)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """One process at a time decides for an artifact; the others wait and read its verdict."""
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sha256_or_empty(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError:
        return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__

