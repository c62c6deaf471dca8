"""Loading a TorchScript variant, warming it up, and running batches of numpy inputs through it.

Only TorchScript archives whose sha256 the caller checked are loaded (``torch.jit.load``
never unpickles arbitrary classes). Warm-up measures the latency of each power-of-two batch
size, which the batcher uses to decide how large a batch still meets its deadlines.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mesh.latency import LatencyCurve, warmup_batches
from protocol.types import DATATYPES, VariantSpec


class ModelRunner:
    """One loaded variant. Not thread-safe: the worker calls it from its single serving loop."""

    def __init__(self, spec: VariantSpec, path: Path, device: str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        with warnings.catch_warnings():
            # TorchScript loading is deprecated upstream but is what the repository format ships.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            self.module = torch.jit.load(str(path), map_location=self.device)
        self.module.eval()
        self._curve = LatencyCurve([], [])

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """inputs in the spec's input order, batched on dim 0 -> outputs in the spec's output order."""
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in inputs]
            result = self.module(*tensors)
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result[o.name] for o in self.spec.outputs)
        outs = []
        for spec, tensor in zip(self.spec.outputs, result):
            array = tensor.detach().to("cpu").numpy()
            outs.append(array.astype(np.dtype(DATATYPES[spec.datatype]), copy=False))
        return outs

    def warm_up(self, repeats: int = 5) -> dict[int, float]:
        """Measure the median latency of batch sizes 1, 2, 4, ... max_batch; returns ms by size."""
        sizes = warmup_batches(self.spec.max_batch)
        measured: dict[int, float] = {}
        for size in sizes:
            sample = self.example_inputs(size)
            self.run(sample)  # first call compiles and allocates
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                self.run(sample)
                times.append(time.perf_counter() - start)
            measured[size] = statistics.median(times)
        self._curve = LatencyCurve(list(measured), list(measured.values()))
        return {b: s * 1000.0 for b, s in measured.items()}

    def example_inputs(self, batch: int) -> list[np.ndarray]:
        arrays = []
        for spec in self.spec.inputs:
            shape = [batch if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(spec.shape)]
            arrays.append(np.zeros(shape, dtype=np.dtype(DATATYPES[spec.datatype])))
        return arrays

    def latency_s(self, batch: int) -> float:
        """Predicted latency of ``batch``: linear between measured sizes, extrapolated beyond."""
        return self._curve(batch)
