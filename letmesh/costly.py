"""A synthetic model family with a controllable, per-request compute cost.

The demo digits models are so cheap that a 2-core machine's HTTP path saturates before they do;
to show accuracy scaling under overload, this family's accurate variant costs milliseconds per
request (a stack of dense layers whose depth sets the cost) and its cheaper variants less. The
"accuracy" of each variant is a declared figure, not a measurement: the family exists to load
the mesh, and its manifests say so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from letmesh.export import load_script, profile_module, script_bytes
from letmesh.manifest import intact_manifest, manifest_for, publish
from letmesh.zoo import Progress

# Narrow on purpose: a 64-wide product is below the size torch splits across threads, so a
# variant costs the same on one core or two. At 256 wide each layer was a parallel region, and
# beside other work on the host every one of them waited on a descheduled thread: a batch of 8
# took 1.4-3.4 s on two threads instead of 37 ms on one.
WIDTH = 64
DEFAULT_VARIANTS = (("synth-large", 0.95, 3600), ("synth-medium", 0.90, 720), ("synth-small", 0.80, 24))


class Stack(nn.Module):
    """``depth`` tanh(dense) layers per row on a WIDTH-wide view of its 16 inputs: cost = depth x rows."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        torch.manual_seed(depth)
        self.weight = nn.Parameter(torch.randn(WIDTH, WIDTH) / WIDTH**0.5, requires_grad=False)
        self.depth = depth
        self.copies = WIDTH // 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Row by row on purpose: the cost of a batch is the sum of its rows, so batching cannot
        # hide an overload the way it does for the dense digits models.
        rows = []
        for i in range(x.size(0)):
            h = x[i:i + 1].repeat(1, self.copies)
            for _ in range(self.depth):
                h = torch.tanh(h @ self.weight)
            rows.append(h[:, :16])
        return torch.cat(rows, 0)


def build_costly(
    dir: str | os.PathLike[str],
    *,
    family: str = "synth",
    variants: Sequence[tuple[str, float, int]] = DEFAULT_VARIANTS,
    slo_ms: float = 200.0,
    max_batch: int | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Write one variant per (name, declared accuracy, depth); intact ones are left alone.

    ``max_batch`` caps the batch the manifests declare: the cost is per row, so batching gains
    nothing, and a small cap keeps warm-up and profiling (every batch size up to it) short."""
    root = Path(dir)
    say = progress or (lambda line: None)
    out = []
    for name, accuracy, depth in variants:
        existing = intact_manifest(root / name, name)
        if existing is not None:
            out.append(existing)
            continue
        blob = script_bytes(Stack(depth).eval())
        module = load_script(blob)
        profile = profile_module(module, 16)
        manifest = manifest_for(
            family=family,
            variant=name,
            blob=blob,
            accuracy=accuracy,
            accuracy_metric="declared (synthetic family for load tests; not measured)",
            inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
            outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 16]}],
            profile=profile,
            default_slo_ms=slo_ms,
            depth=depth,
            description=f"{depth} dense {WIDTH}x{WIDTH} layers per request: a synthetic cost of "
                        f"about {profile['1']:.2f} ms per row here.",
            preprocess="none",
            **({} if max_batch is None else {"max_batch": max_batch}),
        )
        publish(root / name, blob, manifest)
        say(f"built {name}: batch-1 latency {profile['1']:.3f} ms")
        out.append(manifest)
    return out
