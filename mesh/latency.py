"""Batch latency curves: which batch sizes a worker measures, and the latency of any batch size.

Shared by the worker (its batcher asks how long a batch takes) and the gateway (it predicts
a variant's latency from the curve its worker measured). Pure; imports nothing of ours.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def warmup_batches(max_batch: int) -> list[int]:
    """Batch sizes measured at warm-up: 1, 2, 4, ... and max_batch itself."""
    return sorted({min(2**i, max_batch) for i in range(int(math.log2(max(max_batch, 1))) + 2)})


def reported(measured: dict[int, float], max_batch: int) -> tuple[float, ...]:
    """What a worker reports of its warm-up (``WorkerReady.batch_latency_ms``, which routing
    tables carry to gateways): the latency at each of ``warmup_batches(max_batch)``, in order.

    A worker may have measured more sizes than those for its own batcher (one on each side of a
    switch between runtimes); the gateway rebuilds the curve on the warm-up sizes, and drops a
    report of any other length, and admission with it."""
    return tuple(measured[b] for b in warmup_batches(max_batch))


class LatencyCurve:
    """Latency by batch size: linear between measured sizes, per-item linear beyond the largest."""

    def __init__(self, batches: Sequence[int], latencies: Sequence[float]) -> None:
        if len(batches) != len(latencies):
            raise ValueError("one latency per batch size")
        pairs = sorted(zip(batches, latencies))
        self.batches = [b for b, _ in pairs]
        self.latencies = [t for _, t in pairs]

    def __call__(self, batch: int) -> float:
        if not self.batches:
            return 0.0
        i = bisect.bisect_left(self.batches, batch)
        if i < len(self.batches) and self.batches[i] == batch:
            return self.latencies[i]
        if i == 0:
            return self.latencies[0]
        if i == len(self.batches):
            per_item = self.latencies[-1] / self.batches[-1]
            return self.latencies[-1] + per_item * (batch - self.batches[-1])
        b0, b1 = self.batches[i - 1], self.batches[i]
        l0, l1 = self.latencies[i - 1], self.latencies[i]
        return l0 + (l1 - l0) * (batch - b0) / (b1 - b0)
