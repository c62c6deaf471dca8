"""Goodput on one core: the highest Poisson arrival rate letmesh serves with 99 % of requests within the SLO.

For each model (a small CNN and a ResNet-18 layout, built here from a seed) the server under test
— a whole letmesh mesh (controller, gateway, agent, workers) or a plain aiohttp + torch process
with no batching — runs pinned to one core, the load generator to another. Both servers run at
once on that core, the idle one beside the one under load, and their rate sweeps alternate, so a
drift in the host's speed during the run moves both. The rate is swept (x1.5 steps, then
bisection); a step (at least 400 requests and 10 s, so that it is not a burst an idle server
absorbs) passes when >= 99 % of its requests are answered 200 within the SLO, measured from
each request's scheduled send time (MLPerf's server scenario, shorter).
The SLO is 20x the model's batch-1 TorchScript latency measured on the server core; the compute
limit is the best per-sample throughput of a batch size whose latency fits half the SLO. Also
measured: server CPU per request at a fixed low rate. Both servers serve the same artifact
(``--backend``), so the ratio measures serving, not the runtime; with ``--onnx-upgrade`` letmesh's
agent may serve a TorchScript artifact through ONNX Runtime (``[agent] onnx_upgrade``), and the
ratio then includes what that gains; with ``--openvino fp32|bf16`` letmesh serves the ONNX artifact
through OpenVINO at that precision (bf16: bfloat16 on a CPU with AMX or AVX-512 BF16, whose answers
differ from fp32's; the report gives the difference), the baseline still ``--backend``'s unless
``--baseline-openvino`` has it compute through OpenVINO at the same precision too (like for like;
the RESULT line then names the ratio ``..._vs_same_runtime``). Beside
each ratio stands its ceiling: the compute limit of the fastest runtime letmesh may serve on over
the baseline's max rate, which no server on this core
passes. Both servers' "of limit" is of ``--backend``'s compute limit, the targets' reference. The
report also counts the model's floating-point operations and gives each runtime's compute limit in
GFLOP/s beside one core's fp32 matrix-multiply rate (OpenVINO computes on every server core, as a
letmesh worker does on its partition's; the others on one thread). Prints a table, writes JSON,
ends with a RESULT line. Asserts nothing about speed.

On a GPU host, ``--device cuda`` serves the models on the GPU (letmesh's agent finds it; the
baseline moves its model there) with the CPU side of both servers on ``--server-cores`` cores; the
SLO and compute limits are then the GPU's.

Run: ``python benchmarks/goodput.py [--quick] [--models small,medium] [--backend torchscript|onnx]
[--onnx-upgrade | --openvino fp32|bf16 [--baseline-openvino]] [--device cpu|cuda] [--server-cores N]
[--slo-ms MS --models ONE] [--max-batch N]``;
``--slo-ms`` and ``--max-batch`` fix the regime, so that runs on a host whose speed moves compare alike.
An entry point: may import everything.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.support import goodput_models as gm  # noqa: E402
from benchmarks.support import loadgen  # noqa: E402
from benchmarks.support.goodput_options import Options, parse_arguments  # noqa: E402
from benchmarks.support.goodput_report import environment, render, result_line  # noqa: E402
from benchmarks.support.report import publish  # noqa: E402
from benchmarks.support.server_under_test import (  # noqa: E402
    BaselineServer,
    MeshServer,
    Server,
    pick_cores,
    pinned,
    settle,
)

PASS_FRACTION = 0.99
SERVERS = ("letmesh", "baseline")


def parse_options(argv: list[str] | None) -> Options:
    return parse_arguments(argv, __doc__.splitlines()[0])


# --- one server: warm-up, CPU at a low rate, rate sweeps --------------------------------------------


def _run(coro):
    import uvloop

    return uvloop.run(coro)


@dataclass(frozen=True, slots=True)
class Workload:
    model: gm.ModelDef
    body: bytes
    expected: np.ndarray  # the served artifact's logits for the body's image, computed here
    slo_ms: float

    def request(self, port: int) -> bytes:
        return loadgen.raw_request(port, f"/v2/models/{self.model.variant}/infer", self.body)


def step(server: Server, work: Workload, rate: float, requests: int, seed: int, settle_s: float) -> dict[str, Any]:
    timeout_s = max(3 * work.slo_ms / 1000.0, 1.0)
    before = server.cpu_s_by_part()
    run = _run(loadgen.open_loop(server.port, work.request(server.port), rate=rate, requests=requests, seed=seed,
                                 timeout_s=timeout_s))
    # Where the server's CPU went while it served the step (its backlog after the last reply aside).
    after = server.cpu_s_by_part()
    by_part = {part: (seconds - before.get(part, 0.0)) * 1e3 / requests for part, seconds in after.items()}
    # A failed step leaves a backlog (the baseline computes requests whose client gave up): the next
    # step starts once the server idles.
    drained_s = settle(server, window_s=settle_s / 2, timeout_s=20.0)
    return {**loadgen.summarise(run, rate=rate, slo_ms=work.slo_ms, pass_fraction=PASS_FRACTION),
            "drain_s": drained_s, "cpu_ms_per_req_by_part": by_part}


def workload(model: gm.ModelDef, cal: dict[str, Any], backend: str) -> Workload:
    """The calibration's image as a pre-encoded V2 JSON body (with the SLO as its bound), checked
    against ``backend``'s logits."""
    image = cal["image"]
    body = orjson.dumps({"inputs": [{"name": gm.INPUT, "datatype": "FP32", "shape": list(image.shape),
                                     "data": image.ravel().tolist()}],
                         "parameters": {"letmesh_slo_ms": cal["slo_ms"]}})
    return Workload(model, body, cal["expected"][backend], cal["slo_ms"])


def output_error(server: Server, work: Workload) -> float:
    """Largest difference between the server's logits for the benchmark image and this process's own."""
    status, body = _run(loadgen.probe(server.port, work.request(server.port), timeout_s=30))
    if status != 200:
        raise RuntimeError(f"{server.name} answered {status}: {body[:300]!r}")
    (out,) = orjson.loads(body)["outputs"]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    return float(np.abs(got - work.expected).max())


def sweep(server: Server, work: Workload, start: float, ceiling: float, opts: Options, seed: int) -> dict[str, Any]:
    """x1.5 steps up from ``start`` until a step fails (or down until one passes), then bisection."""
    steps: list[dict[str, Any]] = []
    began = time.monotonic()

    def attempt(rate: float) -> bool:
        requests = max(opts.step_requests, math.ceil(rate * opts.step_s))
        steps.append(step(server, work, rate, requests, seed + len(steps), opts.settle_s))
        return steps[-1]["passed"]

    lo, hi, rate = 0.0, math.inf, start
    if attempt(rate):
        lo = rate
        while rate * 1.5 <= ceiling:
            rate *= 1.5
            if not attempt(rate):
                hi = rate
                break
            lo = rate
    else:
        hi = rate
        for _ in range(4):
            rate /= 1.5
            if attempt(rate):
                lo = rate
                break
            hi = rate
    if lo > 0 and math.isfinite(hi):
        for _ in range(opts.bisect):
            mid = (lo + hi) / 2
            if attempt(mid):
                lo = mid
            else:
                hi = mid
    best = max((s for s in steps if s["passed"]), key=lambda s: s["rate"], default=None)
    return {"max_rate": lo, "first_failing_rate": hi if math.isfinite(hi) else None, "at_max": best, "steps": steps,
            "began_monotonic_s": began, "ended_monotonic_s": time.monotonic()}


def measure_idle_and_low_rate(server: Server, work: Workload, opts: Options, seed: int) -> dict[str, Any]:
    """Output check, warm-up, idle CPU and CPU per request at the model's low rate."""
    diff = output_error(server, work)
    warm = step(server, work, max(1.0, work.model.low_rate / 2), max(20, opts.step_requests // 10), seed, opts.settle_s)
    settled_s = settle(server, window_s=opts.settle_s)
    idle_ms_per_s = server.idle_cpu_ms_per_s(opts.idle_s)
    before, began = server.cpu_s(), time.monotonic()
    low = step(server, work, work.model.low_rate, opts.low_requests, seed + 1, opts.settle_s)
    cpu_ms = (server.cpu_s() - before) / low["sent"] * 1000.0
    # What each request adds beyond what the server burns idle over the same time.
    cpu_less_idle_ms = cpu_ms - idle_ms_per_s * (time.monotonic() - began) / low["sent"]
    return {"cpu_ms_per_req": cpu_ms, "idle_cpu_ms_per_s": idle_ms_per_s, "cpu_ms_per_req_less_idle": cpu_less_idle_ms,
            "low_rate": low, "warm_up": warm, "settled_s": settled_s, "output_max_abs_diff": diff}


def measure_servers(servers: dict[str, Server], work: Workload, limit: float, opts: Options,
                    seed: int, top_limit: float | None = None) -> dict[str, Any]:
    """Both servers, started together on the same cores: the low-rate figures of each, then their
    rate sweeps in turns (sweep i of one, then of the other; the order flips every sweep), so a
    host whose speed drifts during the run (a VM's neighbours) moves both alike instead of
    whichever ran second. The server not under load idles meanwhile (the mesh's heartbeats:
    about 1 % of the core). Sweeps start at 0.3x ``limit`` and go up to 3x ``top_limit`` (the
    fastest runtime's compute limit; ``limit`` unless given)."""
    def quiet() -> None:  # whatever one server still does (a mesh profiling its device) ends first
        for server in servers.values():
            settle(server, window_s=opts.settle_s)

    low = {}
    for name, server in servers.items():
        quiet()
        low[name] = measure_idle_and_low_rate(server, work, opts, seed)
    start = opts.start_rate or max(1.0, 0.3 * limit)
    sweeps: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for i in range(opts.sweeps):
        for name in (list(servers) if i % 2 == 0 else list(servers)[::-1]):
            quiet()
            sweeps[name].append(sweep(servers[name], work, start, 3.0 * max(limit, top_limit or 0.0), opts,
                                      seed + 100 * (i + 1)))
    summaries = {name: summarise_sweeps(sweeps[name]) for name in servers}
    over = overload_steps(servers, work, opts, max(s["max_rate"] for s in summaries.values()), seed + 7)
    return {name: {**low[name], **summaries[name], "overload": over.get(name), "affinity": server.affinity(),
                   "runtimes": server.runtimes()} for name, server in servers.items()}


def overload_steps(servers: dict[str, Server], work: Workload, opts: Options, max_rate: float,
                   seed: int) -> dict[str, dict[str, Any]]:
    """One step per server at ``opts.overload`` x ``max_rate`` (the higher server's), the same
    arrivals for both: how many requests each still answers within the SLO (its goodput) and how
    it answers the rest, when asked for more than it can serve."""
    if not opts.overload or max_rate <= 0:
        return {}
    rate = opts.overload * max_rate
    requests = max(opts.step_requests, math.ceil(rate * opts.step_s))
    out = {}
    for name, server in servers.items():
        settle(server, window_s=opts.settle_s)
        result = step(server, work, rate, requests, seed, opts.settle_s)
        out[name] = {**result, "goodput_rps": result["good_fraction"] * rate}  # over the arrivals' span
    return out


def summarise_sweeps(sweeps: list[dict[str, Any]]) -> dict[str, Any]:
    """The median sweep (the lower one of an even count, so the rate is one a step ran) and the
    latencies of its top passing step."""
    rates = [s["max_rate"] for s in sweeps]
    median = statistics.median_low(rates)
    best = next(s for s in sweeps if s["max_rate"] == median)["at_max"] or {}
    return {
        "max_rate": median, "max_rate_per_sweep": rates,
        "first_failing_per_sweep": [s["first_failing_rate"] for s in sweeps],
        "p50_ms": best.get("p50_ms", float("nan")), "p99_ms": best.get("p99_ms", float("nan")),
        "lag_p99_ms_at_max": best.get("lag_p99_ms", float("nan")),
        "client_cpu_util_at_max": best.get("client_cpu_util", float("nan")),
        "cpu_ms_per_req_by_part_at_max": best.get("cpu_ms_per_req_by_part", {}),
        "model_ms_per_req_at_max": best.get("model_ms_per_req"),
        "lag_max_ms": max(s["lag_max_ms"] for sw in sweeps for s in sw["steps"]), "sweeps": sweeps,
    }


# --- one model ----------------------------------------------------------------------------------


def regime(served_ms: dict[int, float], measured_slo_ms: float, opts: Options) -> tuple[float, int]:
    """(SLO, letmesh's max batch): those fixed by the options, else the SLO measured and the largest
    batch of the served artifact whose latency fits half of it."""
    slo_ms = opts.slo_ms or measured_slo_ms
    return slo_ms, opts.max_batch or max((b for b, ms in served_ms.items() if ms <= slo_ms / 2), default=1)


def calibrate(model: gm.ModelDef, artifacts: gm.Artifacts, cores: tuple[int, ...], opts: Options,
              tmp: Path) -> dict[str, Any]:
    """Batch latencies of both artifacts on the server's cores (and device), one thread; the SLO and
    compute limits from them."""
    folder = tmp / f"calibrate-{model.key}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / gm.ARTIFACT).write_bytes(artifacts.torchscript)
    (folder / gm.ONNX_ARTIFACT).write_bytes(artifacts.onnx)
    command = [sys.executable, "-m", "benchmarks.support.goodput_models", model.key, str(folder / gm.ARTIFACT),
               str(folder / gm.ONNX_ARTIFACT), str(opts.slo_factor), str(5 if opts.quick else 10), str(opts.seed),
               opts.device, str(opts.slo_ms or 0), str(opts.max_batch or 1),
               opts.served if opts.served in gm.OPENVINO else ""]
    with pinned(cores):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False,
                              cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"calibration failed: {done.stderr[-2000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    latencies = {name: {int(b): ms for b, ms in table.items()} for name, table in raw["latency_ms"].items()}
    slo_ms, max_batch = regime(latencies[opts.served], raw["slo_ms"], opts)
    image = gm.sample_images(model, 1, seed=opts.seed)
    expected = {name: np.asarray(v, dtype=np.float32) for name, v in raw["expected"].items()}
    limits = {}
    for backend, lat in latencies.items():
        rps, batch = gm.compute_limit(lat, slo_ms)
        limits[backend] = {"rps": rps, "batch": batch}
    return {"slo_ms": slo_ms, "batch1_ms": {b: lat[1] for b, lat in latencies.items()}, "latency_ms": latencies,
            "compute_limit": limits, "max_batch": max_batch, "image": image, "expected": expected,
            "fp32_peak_gflops": raw.get("fp32_peak_gflops")}


def measure_model(key: str, opts: Options, cores: tuple[int, int], tmp: Path) -> dict[str, Any]:
    model = gm.MODELS[key]
    server_cores, client_core = cores
    artifacts = gm.export(model)
    cal = calibrate(model, artifacts, server_cores, opts, tmp)
    repo = gm.write_repository(tmp / f"repo-{key}", model, artifacts, backend=opts.served, slo_ms=cal["slo_ms"],
                               max_batch=cal["max_batch"], profile_ms=cal["latency_ms"])
    work = workload(model, cal, opts.backend)
    limit = cal["compute_limit"][opts.backend]["rps"]
    onnx_limit = cal["compute_limit"].get("onnx", {}).get("rps", float("nan"))  # none on a GPU without ORT's CUDA provider
    served_limit = cal["compute_limit"][opts.served]["rps"]
    running: dict[str, Server] = {}
    os.sched_setaffinity(0, {client_core})
    try:
        for name in SERVERS:
            if name == "letmesh":
                # On a GPU host the initial placement gives the lone variant the whole GPU; the agent's
                # profiling of its CPU and GPU would run on the server's cores during the measurement.
                quiet = {"LETMESH_CONTROLLER_AUTO_PROFILE": "false"} if opts.device == "cuda" else {}
                running[name] = MeshServer(repo, tmp / f"state-{key}", server_cores, onnx_upgrade=opts.onnx_upgrade,
                                           extra_env=quiet)
            else:
                runtime = opts.baseline_runtime
                onnx_file = runtime == "onnx" or runtime in gm.OPENVINO
                artifact = repo / model.variant / (gm.ONNX_ARTIFACT if onnx_file else gm.ARTIFACT)
                running[name] = BaselineServer(artifact, runtime, model.variant, server_cores, opts.device)
        servers = measure_servers(running, work, limit, opts, opts.seed * 1000, top_limit=served_limit)
    finally:
        for server in running.values():
            server.stop()
    mesh, base = servers["letmesh"], servers["baseline"]
    # No server on this core passes the compute limit of the runtime it computes with: the limit of
    # the fastest runtime letmesh may serve on, over the baseline's max rate, is the highest ratio
    # a target can ask of letmesh here.
    best_limit = max(limit, onnx_limit) if opts.onnx_upgrade and math.isfinite(onnx_limit) else max(limit, served_limit)
    # How far each runtime's limit is from what the core's vector units compute: a runtime at the
    # fp32 matrix-multiply rate has no fp32 speed left; past it, only a narrower type goes faster.
    flops = gm.flops_per_image(model)
    return {
        "mflop_per_image": flops / 1e6, "fp32_peak_gflops": cal["fp32_peak_gflops"],
        "gflops_at_limit": {name: lim["rps"] * flops / 1e9 for name, lim in cal["compute_limit"].items()},
        "model": model.summary, "variant": model.variant, "input_shape": list(model.shape),
        "served_backend": opts.served, "baseline_runtime": opts.baseline_runtime, "device": opts.device,
        "slo_ms": cal["slo_ms"], "batch1_ms": cal["batch1_ms"],
        "latency_ms": cal["latency_ms"], "compute_limit": cal["compute_limit"], "max_batch": cal["max_batch"],
        "artifacts_max_abs_diff": artifacts.max_abs_diff, "low_rate": model.low_rate, "servers": servers,
        "vs_naive": mesh["max_rate"] / base["max_rate"] if base["max_rate"] > 0 else float("nan"),
        "of_limit": mesh["max_rate"] / limit if limit > 0 else float("nan"),
        "of_onnx_limit": mesh["max_rate"] / onnx_limit if onnx_limit > 0 else float("nan"),
        "of_served_limit": mesh["max_rate"] / served_limit if served_limit > 0 else float("nan"),
        "baseline_of_limit": base["max_rate"] / limit if limit > 0 else float("nan"),
        "ceiling_vs_naive": best_limit / base["max_rate"] if base["max_rate"] > 0 else float("nan"),
    }


def measure(opts: Options) -> dict[str, Any]:
    cores = pick_cores(opts.server_cores)
    env = environment(cores, opts.device)
    previous = os.sched_getaffinity(0)
    models: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="letmesh-goodput-") as tmp:
            for key in opts.models:
                models[key] = measure_model(key, opts, cores, Path(tmp))
    finally:
        os.sched_setaffinity(0, previous)
    return {
        "benchmark": "goodput", "pass_fraction": PASS_FRACTION,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "environment": env, "models": models, "loadavg_at_end": list(os.getloadavg()),
        "out": str(opts.out), "result": result_figures(models, opts),
    }


def result_figures(models: dict[str, Any], opts: Options) -> dict[str, float]:
    """The RESULT line's figures: per model, letmesh over the baseline, of the compute limit, CPU per request."""
    result: dict[str, float] = {}
    against = "same_runtime" if opts.baseline_openvino else "naive"  # a like-for-like ratio is named apart
    for key, m in models.items():
        result[f"{key}_vs_{against}"] = m["vs_naive"]
    for key, m in models.items():
        result[f"{key}_of_limit"] = m["of_limit"]
    for key, m in models.items():
        result[f"cpu_ms_per_req_{key}"] = m["servers"]["letmesh"]["cpu_ms_per_req"]
    return result


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    return publish(measure(opts), opts.out, render, result_line)


if __name__ == "__main__":
    sys.exit(main())
