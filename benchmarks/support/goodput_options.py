"""The goodput benchmark's options (``benchmarks/goodput.py``): the command line and what it settles,
refused when it asks for something the benchmark cannot measure."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from benchmarks.support import goodput_models as gm

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results" / "goodput.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    quick: bool
    models: tuple[str, ...]
    backend: str
    onnx_upgrade: bool
    openvino: str  # "": letmesh serves --backend's artifact; "fp32" | "bf16": the ONNX one through OpenVINO
    baseline_openvino: bool = False  # the baseline computes as letmesh does (--openvino), not with --backend's
    device: str
    server_cores: int
    start_rate: float | None
    sweeps: int
    step_requests: int
    step_s: float
    bisect: int
    low_requests: int
    idle_s: float
    slo_factor: float
    slo_ms: float | None  # a fixed SLO (one model), instead of slo_factor x the batch-1 latency measured
    max_batch: int | None  # a fixed max batch for letmesh, instead of the largest fitting half the SLO
    overload: float = 1.5  # the overload step's rate over the higher max rate; 0: no such step
    settle_s: float = 1.0  # a server idle this long is settled; the drain after a step waits half of it
    seed: int
    out: Path

    @property
    def served(self) -> str:
        """The runtime letmesh serves with (a key of the calibration's latency tables)."""
        return {"fp32": "openvino", "bf16": "openvino-bf16"}.get(self.openvino, self.backend)

    @property
    def baseline_runtime(self) -> str:
        """The runtime the baseline computes with."""
        return self.served if self.baseline_openvino else self.backend


def parse_arguments(argv: list[str] | None, description: str) -> Options:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="one sweep per server, shorter steps (a few minutes)")
    p.add_argument("--models", default="small,medium", help="comma-separated: small, medium")
    p.add_argument("--backend", choices=("torchscript", "onnx"), default="torchscript",
                   help="the artifact letmesh (and the baseline) serve")
    p.add_argument("--onnx-upgrade", action="store_true",
                   help="letmesh's agent may serve the TorchScript artifact through ONNX Runtime (the baseline does not)")
    p.add_argument("--openvino", choices=("fp32", "bf16"),
                   help="letmesh serves the ONNX artifact through OpenVINO at this precision (bf16: bfloat16 where "
                        "the CPU has it, answers differ from fp32 in the third digit); the baseline keeps --backend's "
                        "unless --baseline-openvino")
    p.add_argument("--baseline-openvino", action="store_true",
                   help="with --openvino: the baseline computes through OpenVINO at the same precision as letmesh "
                        "(like for like: what letmesh's batching and data path add to a plain server on that runtime)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where both servers compute (cuda: the host's first GPU)")
    p.add_argument("--server-cores", type=int, default=1,
                   help="CPU cores each server under test is pinned to (default 1); the load generator takes the next")
    p.add_argument("--start-rate", type=float,
                   help="first rate of each sweep, req/s (default 0.3 x the compute limit; on a GPU the servers' CPU "
                        "side caps the rate far below it)")
    p.add_argument("--sweeps", type=int, help="rate sweeps per server (default 2, quick 1)")
    p.add_argument("--step-requests", type=int, help="requests per rate step, at least (default 400, quick 200)")
    p.add_argument("--step-s", type=float,
                   help="seconds per rate step, at least (default 10, quick 3): a step of a few hundred requests "
                        "at a high rate is a burst an idle server absorbs, passing rates it cannot keep up")
    p.add_argument("--bisect", type=int, help="bisection steps after the first failing rate (default 4, quick 2)")
    p.add_argument("--low-requests", type=int, help="requests of the low-rate CPU measurement (default 300, quick 100)")
    p.add_argument("--idle-s", type=float, help="seconds the idle server's CPU is measured (default 10, quick 4)")
    p.add_argument("--slo-factor", type=float, default=20.0, help="SLO = this x batch-1 latency (default 20)")
    p.add_argument("--slo-ms", type=float,
                   help="a fixed SLO for the one model measured, instead of --slo-factor x its batch-1 latency: runs "
                        "on a host whose speed moves between them then compare the same regime")
    p.add_argument("--max-batch", type=int,
                   help="a fixed max batch for letmesh, instead of the largest whose latency fits half the SLO")
    p.add_argument("--overload", type=float, default=1.5,
                   help="after the sweeps, one step per server at this many times the higher of their max rates: "
                        "what each still answers within the SLO when asked for more than it can (default 1.5; 0: none)")
    p.add_argument("--settle-s", type=float, default=1.0,
                   help="a server is settled once it used under 10 %% of a core over this many seconds: before each "
                        "measurement, and (half of it) between rate steps (default 1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    a = p.parse_args(argv)
    models = tuple(m.strip() for m in a.models.split(",") if m.strip())
    if not models or set(models) - set(gm.MODELS):
        p.error(f"--models takes a comma-separated subset of {', '.join(gm.MODELS)}")
    for name in ("sweeps", "step_requests", "low_requests"):
        value = getattr(a, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.start_rate is not None and a.start_rate <= 0:
        p.error("--start-rate must be positive")
    if a.server_cores < 1:
        p.error("--server-cores must be at least 1")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: torch sees no CUDA device on this host")
        if a.backend == "onnx" and "onnx" not in gm.runtimes("cuda"):
            p.error("--backend onnx --device cuda needs ONNX Runtime's CUDA provider (the onnxruntime-gpu package)")
    if a.openvino and (a.onnx_upgrade or a.device != "cpu"):
        p.error("--openvino serves on the CPU, instead of --backend's artifact: not with --onnx-upgrade or --device cuda")
    if a.baseline_openvino and not a.openvino:
        p.error("--baseline-openvino takes its precision from --openvino fp32|bf16")
    if a.bisect is not None and a.bisect < 0:
        p.error("--bisect must be 0 or more")
    if a.idle_s is not None and a.idle_s <= 0:
        p.error("--idle-s must be positive")
    if a.step_s is not None and not 0 < a.step_s <= 600:
        p.error("--step-s must be in (0, 600]")
    if not (a.overload == 0 or 1 < a.overload <= 10):
        p.error("--overload must be 0 (no overload step) or in (1, 10]")
    if not 0 < a.settle_s <= 10:
        p.error("--settle-s must be in (0, 10]")
    if a.slo_factor <= 0:
        p.error("--slo-factor must be positive")
    if a.slo_ms is not None and (not 0 < a.slo_ms <= 600_000 or len(models) != 1):
        p.error("--slo-ms takes a positive number of milliseconds (at most 10 min) and one model (--models)")
    if a.max_batch is not None and not 1 <= a.max_batch <= 32:
        p.error("--max-batch must be in [1, 32] (the planner's largest batch)")
    quick = a.quick
    return Options(
        quick=quick, models=models, backend=a.backend, onnx_upgrade=a.onnx_upgrade, openvino=a.openvino or "",
        baseline_openvino=a.baseline_openvino,
        device=a.device,
        server_cores=a.server_cores, start_rate=a.start_rate,
        sweeps=a.sweeps or (1 if quick else 2),
        step_requests=a.step_requests or (200 if quick else 400),
        step_s=a.step_s or (3.0 if quick else 10.0),
        bisect=a.bisect if a.bisect is not None else (2 if quick else 4),
        low_requests=a.low_requests or (100 if quick else 300),
        idle_s=a.idle_s or (4.0 if quick else 10.0),
        slo_factor=a.slo_factor, slo_ms=a.slo_ms, max_batch=a.max_batch, overload=a.overload, settle_s=a.settle_s,
        seed=a.seed, out=a.out,
    )
