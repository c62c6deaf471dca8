"""Loading a variant in its backend, warming it up, and running batches of numpy inputs through it.

Only artifacts whose sha256 the caller checked are loaded: TorchScript (``torch.jit.load`` never
unpickles arbitrary classes), ONNX through ONNX Runtime or OpenVINO, or a ``torch.export`` program (see
``agents.backend``). Warm-up measures the latency of each power-of-two batch size, which the
batcher uses to decide how large a batch still meets its deadlines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.backend import Run, check_outputs, cpu_threads, open_backend, openvino_bf16, output_arrays
from agents.error import ModelLoadError
from agents.onnx_upgrade import upgrade
from agents.probe import host_cpu_reason
from mesh.latency import LatencyCurve, warmup_batches
from protocol.types import DATATYPES, VariantSpec


# Batch sizes up to which a runtime that fits its kernels to each size sees every size at warm-up,
# for at most this many seconds.
PRIME_UP_TO = 64
PRIME_S = 2.0
# A batch size's timed warm-up runs stop once they add up to this (after at least WARM_MIN_RUNS):
# the least of two 200 ms runs is as good a figure as the least of five, and a slow variant's
# worker is ready sooner (a worker of a 27 ms-a-row variant, max batch 8, spent 2.5 s warming up).
WARM_BUDGET_S = 0.2
WARM_MIN_RUNS = 2


class ModelRunner:
    """One loaded variant. Not thread-safe: the worker calls it from its single serving loop."""

    def __init__(self, spec: VariantSpec, path: Path, device: str = "cpu", *, onnx_upgrade: bool = False) -> None:
        self.spec = spec
        # What serves it, for status: the backend, or the ONNX upgrade's verdict (agents.onnx_upgrade).
        self.runtime = spec.backend
        original, verdict = (spec, path), None
        if onnx_upgrade:
            spec, path, verdict = upgrade(spec, path, device)
            if verdict is not None:
                self.runtime = verdict.describe()
        try:
            self._run = open_backend(spec, path, device)  # ModelLoadError names what is wrong
        except ModelLoadError as exc:
            if verdict is None or not verdict.serves_onnx:
                raise
            # The conversion went between the verdict and this load (another process judged the
            # artifact again, for a larger batch, and kept none): the original still serves.
            (spec, path), verdict = original, None
            self.runtime = f"torchscript (the ONNX conversion could not be opened: {exc})"
            self._run = open_backend(spec, path, device)
        self.backend = spec.backend
        self._device = device
        # Split by batch size (a "mixed" verdict): the original serves batches of more than
        # ``_up_to`` rows, where ONNX Runtime was not the faster one.
        self._larger: Run | None = None
        self._up_to = 0
        if verdict is not None and verdict.runtime == "mixed":
            self._larger, self._up_to = open_backend(*original, device), verdict.onnx_up_to
        if spec.precision == "bf16":
            self.runtime += " (bf16)" if openvino_bf16() else " (bf16 asked; this CPU has none: fp32)"
        if reason := host_cpu_reason(spec.backend, device):
            self.runtime = f"{self.runtime} (on the host CPU: {reason})"
        self._curve = LatencyCurve([], [])

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """inputs in the spec's input order, batched on dim 0 -> outputs in the spec's output order."""
        return output_arrays(self.spec, self._raw(inputs))

    def _raw(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        run = self._run
        if self._larger is not None and inputs and inputs[0].ndim and inputs[0].shape[0] > self._up_to:
            run = self._larger
        return run(inputs)

    def warm_up(self, repeats: int = 5) -> dict[int, float]:
        """Measure the latency of batch sizes 1, 2, 4, ... max_batch; returns ms by size.

        Each size's latency is the least of ``repeats`` runs (fewer, but at least two, once they
        took ``WARM_BUDGET_S``), and on one CPU thread a run's CPU time: another process on the same
        cores only ever adds time, and at start-up one often runs there (the agent profiling, a
        worker starting beside this one). Beside a busy process on its core, the median wall time of
        a 1.9 ms model read 5.9 ms; its CPU time does not move. What serving then finds on a busy
        host, the worker's slowdown says.
        """
        clock = self.clock()
        sizes = warmup_batches(self.spec.max_batch)
        if self._larger is not None and self._up_to < self.spec.max_batch:
            # Both sides of the switch from ONNX Runtime to TorchScript: interpolated across it,
            # the curve would take batches just above it for ONNX Runtime's (faster) ones.
            sizes = sorted({*sizes, self._up_to + 1})
        measured: dict[int, float] = {}
        for size in sizes:
            sample = self.example_inputs(size)
            # The first call compiles and allocates; its outputs must be what the manifest declares
            # (ModelLoadError if not), or wrong numbers would be served.
            check_outputs(self.spec, self._raw(sample), size)
            times: list[float] = []
            while len(times) < repeats and (len(times) < WARM_MIN_RUNS or sum(times) < WARM_BUDGET_S):
                start = clock()
                self.run(sample)
                times.append(clock() - start)
            measured[size] = min(times)
        if self.backend == "openvino" and self.spec.max_batch <= PRIME_UP_TO:
            # OpenVINO fits its kernels to each new batch size at its first run (2-3 ms on the
            # goodput benchmark's small CNN): paid here, not by the first request of that size,
            # smallest sizes first, for at most PRIME_S (a slow model's start is not held up).
            began = time.perf_counter()
            for size in sorted(set(range(1, self.spec.max_batch + 1)) - set(sizes)):
                if time.perf_counter() - began > PRIME_S:
                    break
                self._raw(self.example_inputs(size))
        self._curve = LatencyCurve(list(measured), list(measured.values()))
        return {b: s * 1000.0 for b, s in measured.items()}

    def clock(self) -> Callable[[], float]:
        """What a latency measurement of this variant reads: on one CPU thread the thread's CPU
        time, which a neighbour taking turns on the same core does not inflate; else wall time
        (several threads, or a device that computes apart from the calling thread)."""
        return time.thread_time if self._device == "cpu" and cpu_threads() == 1 else time.perf_counter

    def example_inputs(self, batch: int) -> list[np.ndarray]:
        return example_inputs(self.spec, batch)

    def latency_s(self, batch: int) -> float:
        """Predicted latency of ``batch``: linear between measured sizes, extrapolated beyond."""
        return self._curve(batch)


def trial_run(spec: VariantSpec, path: Path, batches: Sequence[int], device: str = "cpu") -> dict[int, list[np.ndarray]]:
    """Open ``path`` as ``spec`` says and run zeros of the declared inputs through it at each batch size.

    Returns every output the model gives, as numpy arrays in the model's own datatypes (the spec's
    outputs may still be unknown: this is how a new model's are found). Raises ModelLoadError, or
    the runtime's own error when the declared inputs do not fit the model.
    """
    run = open_backend(spec, path, device)
    return {batch: [_array(v) for v in run(example_inputs(spec, batch))] for batch in batches}


def example_inputs(spec: VariantSpec, batch: int) -> list[np.ndarray]:
    """Zeros of every declared input at ``batch`` (other variable dimensions taken as 1)."""
    arrays = []
    for tensor in spec.inputs:
        shape = [batch if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(tensor.shape)]
        arrays.append(np.zeros(shape, dtype=np.dtype(DATATYPES[tensor.datatype])))
    return arrays


def _array(value: Any) -> np.ndarray:
    return value.detach().to("cpu").numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
