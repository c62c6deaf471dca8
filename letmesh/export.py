"""Turning a torch module into the artifacts a repository ships, and timing them: TorchScript, ONNX.

Shared by the demo repository builder and the benchmarks. May import torch, onnx and onnxruntime;
never imports controller, agents or gateway.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from letmesh.manifest import MAX_BATCH

# One intra-op thread: these models are too small to gain from more, and on a shared 2-core
# machine a second spinning thread made training several times slower under load.
BUILD_THREADS = 1
PROFILE_WARMUP = 10  # TorchScript's profiling executor re-optimises over the first calls
PROFILE_REPEATS = 25


def flops_per_row(module: nn.Module, width: int) -> int:
    """Floating-point operations one input row costs, counted by torch's FLOP counter."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, width))
    return int(counter.get_total_flops())


@contextlib.contextmanager
def build_threads() -> Iterator[None]:
    """Run torch with BUILD_THREADS intra-op threads inside the block, then restore the count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def profile_module(module: Callable[[torch.Tensor], Any], width: int) -> dict[str, float]:
    """Median latency in ms of batch 1 and batch MAX_BATCH, measured here with BUILD_THREADS.

    With the process's default thread count, a multi-threaded matmul beside other work waits on
    descheduled threads: on a busy 2-core host one profile took minutes instead of a second.
    """
    with build_threads():
        return _profile(module, width)


def _profile(module: Callable[[torch.Tensor], Any], width: int) -> dict[str, float]:
    profile = {}
    for batch in (1, MAX_BATCH):
        x = torch.rand(batch, width)
        samples = []
        with torch.no_grad():
            for i in range(PROFILE_WARMUP + PROFILE_REPEATS):
                start = time.perf_counter()
                module(x)
                if i >= PROFILE_WARMUP:
                    samples.append(time.perf_counter() - start)
        profile[str(batch)] = round(statistics.median(samples) * 1000.0, 4)
    return profile


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch's blanket deprecation notice for TorchScript, the chosen serving format."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        yield


def script_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    with quiet_jit():
        torch.jit.save(torch.jit.script(module.eval()), buffer)
    return buffer.getvalue()


@contextlib.contextmanager
def quiet_onnx_export() -> Iterator[None]:
    """The ONNX exporter logs a line per optional operator library it lacks, and warns on internals."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def onnx_bytes(module: nn.Module, example: torch.Tensor, input_names: list[str], output_names: list[str]) -> bytes:
    """``module`` exported to ONNX (torch.export-based exporter) with a variable batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with quiet_onnx_export(), contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=({0: batch},), verbose=False)
    return program.model_proto.SerializeToString()


def onnx_callable(blob: bytes) -> Callable[[torch.Tensor], np.ndarray]:
    """An ONNX Runtime session on one CPU thread, called like a module on one tensor (first output)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = BUILD_THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {name: x.numpy()})[0]

    return run


def load_script(blob: bytes) -> torch.jit.ScriptModule:
    with quiet_jit():
        return torch.jit.load(io.BytesIO(blob)).eval()
