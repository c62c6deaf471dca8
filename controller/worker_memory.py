"""What a worker process holds beyond the memory the planner reserves for its variants.

The planner reserves per worker its variants' needs (``Variant.memory_need``: a manifest's
``memory_mb``, else weights and one batch of inputs and outputs). A worker process also holds its
runtime (torch and ONNX Runtime take ~220-240 MiB of host memory before any model), the
activations of its batches and the arenas its runtime keeps. Workers on CPU devices report their
peak resident memory (``WorkerReady.memory_peak_bytes``); the excess over their reservation,
the largest among the ready workers of a device kind, is what the planner adds for each new
worker it puts on a device of that kind, so a memory-bound board is not filled with workers the
kernel would kill. Pure: fed the registry's workers, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controller.registry import WorkerRecord
from controller.repository import Variant
from protocol.types import WorkerState


class WorkerOverhead:
    """Per device kind, the bytes a worker holds beyond its variants' needs, as last observed.

    Each ``observe`` replaces a kind's figure with what its ready workers report now (the largest
    excess), so it falls again when the workers that held more are gone; a kind with no reporting
    worker keeps its last figure (a re-plan after every worker of it stopped still counts it)."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}

    def observe(self, workers: Iterable[WorkerRecord], variants: Mapping[str, Variant]) -> dict[str, int]:
        """The figures after taking in ``workers``: device kind -> bytes."""
        seen: dict[str, int] = {}
        for w in workers:
            if w.state != WorkerState.READY or w.memory_peak_bytes <= 0 or not w.in_plan:
                continue
            reserved = sum(variants[v].memory_need() for v in w.plan.variants if v in variants)
            kind = w.plan.partition.kind
            seen[kind] = max(seen.get(kind, 0), w.memory_peak_bytes - reserved, 0)
        self._known.update(seen)
        return dict(self._known)

    def known(self) -> dict[str, int]:
        return dict(self._known)
