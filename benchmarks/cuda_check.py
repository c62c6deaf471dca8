"""The CUDA check: what letmesh does on a GPU host, in one run of a few minutes.

Stages, each bounded in time; one that fails is recorded with its error and the next still runs:

1. ``environment``: the GPU, its driver and memory (nvidia-smi), torch and its CUDA, ONNX Runtime's
   providers, and whether the MPS control daemon's binary is there.
2. ``mps``: starts an MPS control daemon (its pipe and log folders in a temporary folder, named to
   every process started after it through ``CUDA_MPS_PIPE_DIRECTORY``) so gpu-let percentages are
   enforced; it is stopped at the end. Without the binary, gpu-lets cannot be enforced and an agent
   offers the GPU whole.
3. ``probe``: the devices an agent on this host registers (``agents.probe``).
4. ``partitions``: the goodput benchmark's medium model loaded by the worker's own ``ModelRunner`` on
   the GPU, in a fresh process per MPS active-thread percentage (100, 50, 25): its warm-up latency per
   batch size, then batches/s of the largest batch run back to back; then two processes at 50 % at
   once, their timed runs started together, each against its solo figure (how far one gpu-let slows
   its neighbour).
5. ``mesh``: a whole mesh as ``letmesh up`` starts it on this host, one variant: where its first
   worker runs, the agent profiling the CPU then the GPU, the plan once both are in, and requests
   answered before and after.
6. ``goodput``: ``benchmarks/goodput.py --device cuda``: letmesh against the plain aiohttp + torch
   server, both computing on the GPU, their CPU side on ``--server-cores`` cores.

Writes JSON (``--out``), prints a summary, and ends with a RESULT line. Asserts nothing about speed.
Without a GPU it says so and exits 2.

Run: ``python benchmarks/cuda_check.py [--out PATH] [--goodput-s S] [--server-cores N] [--models medium]``.
An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.support.report import publish  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "cuda_check.json"
PERCENTAGES = (100, 50, 25)
PROBE_BATCH_MAX = 256
PROBE_RUN_S = 3.0
MPS_BINARY = "nvidia-cuda-mps-control"


def _stage(report: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run one stage, recording its result or its error and how long it took."""
    start = time.monotonic()
    try:
        result = fn()
        report["stages"][name] = {"ok": True, "s": round(time.monotonic() - start, 1), "result": result}
    except Exception as exc:  # a failing stage is a finding; the next stage still runs
        result = None
        report["stages"][name] = {"ok": False, "s": round(time.monotonic() - start, 1),
                                  "error": f"{type(exc).__name__}: {exc}"[:2000]}
    print(f"[{name}] {'ok' if report['stages'][name]['ok'] else 'FAILED: ' + report['stages'][name]['error']} "
          f"({report['stages'][name]['s']} s)", flush=True)
    return result


# --- 1. environment -------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=False)
    return {
        "nvidia_smi": smi.stdout.strip() or smi.stderr.strip(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "device_count": torch.cuda.device_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
        "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
        "mps_binary": shutil.which(MPS_BINARY) or "", "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }


# --- 2. MPS ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def mps_daemon(folder: Path) -> Iterator[dict[str, Any]]:
    """An MPS control daemon for the duration, when its binary is there; what happened, as a dict."""
    binary = shutil.which(MPS_BINARY)
    info: dict[str, Any] = {"binary": binary or "", "started": False}
    if binary is None:
        info["note"] = "no MPS control binary: gpu-let percentages cannot be enforced, the GPU is one partition"
        yield info
        return
    pipe, logs = folder / "mps-pipe", folder / "mps-log"
    pipe.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")}
    os.environ["CUDA_MPS_PIPE_DIRECTORY"], os.environ["CUDA_MPS_LOG_DIRECTORY"] = str(pipe), str(logs)
    try:
        done = subprocess.run([binary, "-d"], capture_output=True, text=True, timeout=30, check=False)
        info.update(started=done.returncode == 0, start_rc=done.returncode,
                    start_output=(done.stdout + done.stderr).strip()[-500:])
        time.sleep(0.5)
        info["pipe_entries"] = sorted(os.listdir(pipe))
        yield info
    finally:
        if info["started"]:
            quit_ = subprocess.run([binary], input="quit\n", capture_output=True, text=True, timeout=30, check=False)
            info["quit_rc"] = quit_.returncode
        with contextlib.suppress(OSError):
            info["control_log"] = (logs / "control.log").read_text()[-1500:]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def mps_server_list() -> str:
    done = subprocess.run([MPS_BINARY], input="get_server_list\n", capture_output=True, text=True, timeout=30,
                          check=False)
    return (done.stdout + done.stderr).strip()


# --- 3. probe -------------------------------------------------------------------------------------


def probe() -> list[dict[str, Any]]:
    from agents.probe import probe_devices

    return [{"device_id": d.device_id, "kind": d.kind, "name": d.name, "cores": d.cores,
             "sm_count": d.sm_count, "memory_gib": round(d.memory_bytes / 2**30, 1), "mps": d.mps}
            for d in probe_devices(1)]


# --- 4. partitions --------------------------------------------------------------------------------


def write_model(folder: Path) -> tuple[Path, int]:
    """The goodput medium model as TorchScript in ``folder``; (its path, its size in bytes)."""
    from benchmarks.support import goodput_models as gm

    model = gm.MODELS["medium"]
    net = gm.build_module(model)
    import torch

    blob = gm.torchscript_bytes(net, torch.from_numpy(gm.sample_images(model, 2)))
    path = folder / "medium.pt"
    path.write_bytes(blob)
    return path, len(blob)


def partition_probe(artifact: Path, run_s: float, device: str, batch: int, barrier: Path | None = None,
                    peers: int = 1) -> dict[str, Any]:
    """In this process (its MPS percentage set by the caller): the worker's ModelRunner on ``device``.
    With a ``barrier`` folder, the timed runs start once ``peers`` probes (this one included) are
    warm, so probes side by side time the same stretch."""
    import hashlib

    import torch

    from agents.model_runner import ModelRunner
    from benchmarks.support import goodput_models as gm
    from protocol.types import TensorSpec, VariantSpec

    torch.set_num_threads(1)
    model = gm.MODELS["medium"]
    blob = artifact.read_bytes()
    spec = VariantSpec(name=model.variant, family=model.key, sha256=hashlib.sha256(blob).hexdigest(),
                       size_bytes=len(blob), max_batch=batch,
                       inputs=(TensorSpec(name=gm.INPUT, datatype="FP32", shape=(-1, *model.shape)),),
                       outputs=(TensorSpec(name=gm.OUTPUT, datatype="FP32", shape=(-1, 10)),))
    runner = ModelRunner(spec, artifact, device)
    latency = runner.warm_up()
    sample = runner.example_inputs(batch)
    if barrier is not None:
        (barrier / f"{os.getpid()}.ready").touch()
        waited = time.monotonic() + 120.0
        while len(list(barrier.glob("*.ready"))) < peers and time.monotonic() < waited:
            time.sleep(0.005)
    times = []
    end = time.monotonic() + run_s
    while time.monotonic() < end:
        start = time.perf_counter()
        runner.run(sample)
        times.append(time.perf_counter() - start)
    return {"mps_percent": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", ""),
            "warmup_ms": {str(b): round(ms, 3) for b, ms in latency.items()},
            "batch": batch, "runs": len(times), "median_ms": round(statistics.median(times) * 1e3, 3),
            "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))] * 1e3, 3),
            "samples_per_s": round(batch * len(times) / sum(times), 1)}


def _probe_process(artifact: Path, percent: int, opts: argparse.Namespace, barrier: Path | None = None,
                   peers: int = 1) -> subprocess.Popen:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0", CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=str(percent),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--partition-probe", str(artifact),
                             "--probe-run-s", str(opts.probe_run_s), "--device", opts.device,
                             "--probe-batch", str(opts.probe_batch),
                             *(["--probe-barrier", str(barrier), "--probe-peers", str(peers)] if barrier else [])],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _collect(proc: subprocess.Popen, timeout_s: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"partition probe took over {timeout_s:.0f} s: {err[-500:]}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"partition probe exited {proc.returncode}: {err[-800:]}")
    return json.loads(out.strip().splitlines()[-1])


def partitions(artifact: Path, opts: argparse.Namespace) -> dict[str, Any]:
    solo = {}
    for percent in PERCENTAGES:
        solo[str(percent)] = _collect(_probe_process(artifact, percent, opts), 180)
    barrier = artifact.parent / "pair-barrier"
    barrier.mkdir(exist_ok=True)
    pair = [_probe_process(artifact, 50, opts, barrier, 2), _probe_process(artifact, 50, opts, barrier, 2)]
    together = [_collect(p, 180) for p in pair]
    full = solo["100"]["samples_per_s"]
    return {
        "solo": solo,
        "pair_at_50": together,
        # The share of the whole GPU's throughput a gpu-let of each size reaches alone.
        "throughput_vs_100": {p: round(r["samples_per_s"] / full, 3) for p, r in solo.items()},
        # Each of two 50 % gpu-lets side by side, against a 50 % gpu-let alone.
        "pair_slowdown": [round(r["median_ms"] / solo["50"]["median_ms"], 3) for r in together],
    }


# --- 5. the mesh on the GPU -------------------------------------------------------------------------


def mesh_on_gpu(folder: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """``letmesh up`` as a user runs it on this host, one variant: where the first worker runs, the
    agent profiling its CPU then its GPU, and where the plan puts the variant once both are in.
    Colocation pairs are left out and repeats cut to keep the stage short."""
    import urllib.request

    from benchmarks.support import goodput_models as gm
    from letmesh.launcher import LocalMesh
    from letmesh.profiles import fetch_profiles
    from letmesh.status import fetch_status

    model = gm.MODELS["medium"]
    artifacts = gm.export(model)
    repo = gm.write_repository(folder / "mesh-repo", model, artifacts, backend="torchscript", slo_ms=200.0,
                               max_batch=8, profile_ms={"torchscript": {1: 2.0, 2: 2.2, 4: 2.5, 8: 3.0}})
    env = {"LETMESH_CONTROLLER_PROFILE_COLOCATION": "false", "LETMESH_CONTROLLER_PROFILE_REPEATS": "5"}
    mesh = LocalMesh(repository=repo, state_dir=folder / "mesh-state", max_cores=2, log_level="INFO", extra_env=env)
    timeline: list[dict[str, Any]] = []
    started = time.monotonic()

    def snapshot() -> dict[str, Any]:
        status = fetch_status(mesh.controller_address, keys_dir=mesh.keys_dir)
        entry = {"t_s": round(time.monotonic() - started, 1),
                 "workers": [f"{w.worker_id} {w.partition.device_id} "
                             f"{w.partition.mps_percent if w.partition.kind == 'cuda' else len(w.partition.cores)} "
                             f"{w.state.value}" for w in status.workers],
                 "replans": [r.reason for r in status.replans],
                 "profiling": list(fetch_profiles(mesh.controller_address, keys_dir=mesh.keys_dir).running)}
        if not timeline or {k: v for k, v in entry.items() if k != "t_s"} != {k: v for k, v in timeline[-1].items()
                                                                           if k != "t_s"}:
            timeline.append(entry)
            print(f"  {entry}", flush=True)
        return entry

    body = json.dumps({"inputs": [{"name": gm.INPUT, "datatype": "FP32", "shape": [1, *model.shape],
                                   "data": gm.sample_images(model, 1).ravel().tolist()}]}).encode()

    def infer() -> int:
        request = urllib.request.Request(f"{mesh.http_url}/v2/models/{model.variant}/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        mesh.start(timeout_s=180)
        first = snapshot()
        statuses = [infer() for _ in range(20)]
        deadline = time.monotonic() + opts.mesh_s
        quiet_since = None  # when profiling was last seen over, every worker ready
        while time.monotonic() < deadline:
            entry = snapshot()
            settled = not entry["profiling"] and all(w.endswith("ready") for w in entry["workers"])
            quiet_since = (quiet_since or time.monotonic()) if settled else None
            # Profiling of both devices over, and a few seconds for the re-plan its end asks for.
            if settled and len(timeline) > 1 and time.monotonic() - quiet_since >= 6.0:
                break
            time.sleep(1.0)
        statuses += [infer() for _ in range(20)]
        last = snapshot()
    finally:
        mesh.stop()
    return {"first": first, "last": last, "timeline": timeline, "answers": {str(c): statuses.count(c)
                                                                          for c in sorted(set(statuses))}}


# --- 6. goodput -----------------------------------------------------------------------------------


def goodput(folder: Path, opts: argparse.Namespace) -> dict[str, Any]:
    out = folder / "goodput.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "goodput.py"), "--quick", "--device", opts.goodput_device,
               "--server-cores", str(opts.server_cores), "--models", opts.models,
               "--step-requests", str(opts.step_requests), "--low-requests", "60", "--idle-s", "2",
               "--start-rate", str(opts.start_rate), "--out", str(out)]
    print("  " + " ".join(command[1:]), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=opts.goodput_s, check=False, cwd=ROOT)
    print("\n".join("  " + line for line in done.stdout.strip().splitlines()), flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"goodput exited {done.returncode}: {done.stderr[-1500:]}")
    report = json.loads(out.read_text())
    return {"result": report["result"],
            "models": {k: {"vs_naive": m["vs_naive"], "of_limit": m["of_limit"], "slo_ms": m["slo_ms"],
                           "batch1_ms": m["batch1_ms"], "compute_limit": m["compute_limit"],
                           "max_batch": m["max_batch"],
                           "servers": {n: {f: s[f] for f in ("max_rate", "max_rate_per_sweep", "p50_ms", "p99_ms",
                                                                 "cpu_ms_per_req", "affinity", "runtimes")}
                                       for n, s in m["servers"].items()}}
                       for k, m in report["models"].items()},
            "text": done.stdout[-4000:]}


# --- the run --------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--goodput-s", type=float, default=300.0, help="time allowed to the goodput stage (s)")
    p.add_argument("--server-cores", type=int, default=4, help="CPU cores of each server in the goodput stage")
    p.add_argument("--models", default="medium", help="goodput models (comma-separated: small, medium)")
    p.add_argument("--step-requests", type=int, default=1000, help="requests per goodput rate step")
    p.add_argument("--start-rate", type=float, default=100.0, help="first rate of each goodput sweep (req/s)")
    p.add_argument("--mesh-s", type=float, default=120.0, help="time the mesh stage waits for profiling and re-plans")
    p.add_argument("--skip", default="", help="comma-separated stages to skip: partitions, mesh, goodput")
    p.add_argument("--partition-probe", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--probe-run-s", type=float, default=PROBE_RUN_S, help=argparse.SUPPRESS)
    p.add_argument("--probe-batch", type=int, default=PROBE_BATCH_MAX, help=argparse.SUPPRESS)
    p.add_argument("--probe-barrier", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--probe-peers", type=int, default=1, help=argparse.SUPPRESS)
    # Where the probes compute: a run on a CPU-only host with "cpu" checks the script itself.
    p.add_argument("--device", default="cuda:0", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.goodput_device = "cuda" if a.device.startswith("cuda") else "cpu"
    return a


def run(opts: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"benchmark": "cuda_check", "out": str(opts.out), "stages": {}}
    env = _stage(report, "environment", environment)
    skip = {s.strip() for s in opts.skip.split(",") if s.strip()}
    with tempfile.TemporaryDirectory(prefix="letmesh-cuda-") as tmp, mps_daemon(Path(tmp)) as mps:
        report["stages"]["mps"] = {"ok": mps["binary"] == "" or mps["started"], "result": mps}
        if mps["started"]:
            _stage(report, "mps_servers", mps_server_list)
        devices = _stage(report, "probe", probe)
        print(f"  devices: {devices}", flush=True)
        if "partitions" not in skip:
            artifact = _stage(report, "model", lambda: str(write_model(Path(tmp))[0]))
            if artifact:
                parts = _stage(report, "partitions", lambda: partitions(Path(artifact), opts))
                if parts:
                    for p, r in parts["solo"].items():
                        print(f"  MPS {p:>3} %: batch {r['batch']} median {r['median_ms']} ms, "
                              f"{r['samples_per_s']} samples/s ({parts['throughput_vs_100'][p]:.2f} of 100 %); "
                              f"warm-up ms {r['warmup_ms']}", flush=True)
                    print(f"  two 50 % gpu-lets at once: each {parts['pair_slowdown']} x its solo time", flush=True)
        if "mesh" not in skip:
            _stage(report, "mesh", lambda: mesh_on_gpu(Path(tmp), opts))
        if "goodput" not in skip:
            _stage(report, "goodput", lambda: goodput(Path(tmp), opts))
        if mps["started"]:
            _stage(report, "mps_servers_after", mps_server_list)
    report["stages"]["mps"]["result"] = mps
    stages = report["stages"]
    parts = stages.get("partitions", {}).get("result") or {}
    good = (stages.get("goodput", {}).get("result") or {}).get("result", {})
    report["result"] = {
        "gpu_seen": float(bool((env or {}).get("cuda_available"))),
        "mps": float(bool(mps["started"])),
        "stages_failed": float(sum(1 for s in stages.values() if not s.get("ok"))),
        **{f"mps{p}_of_full": v for p, v in (parts.get("throughput_vs_100") or {}).items()},
        "pair50_slowdown": max(parts["pair_slowdown"]) if parts else float("nan"),
        **{k: v for k, v in good.items() if k.endswith("_vs_naive") or k.endswith("_of_limit")},
    }
    return report


def render(report: dict[str, Any]) -> str:
    lines = ["letmesh CUDA check"]
    for name, stage in report["stages"].items():
        state = "ok" if stage.get("ok") else f"FAILED: {stage.get('error', '')}"
        lines.append(f"  {name:<18} {state}")
    env = report["stages"].get("environment", {}).get("result") or {}
    if env:
        lines.append(f"  GPU {env['gpu']} ({env['nvidia_smi']}); torch {env['torch']} CUDA {env['torch_cuda']}; "
                     f"ONNX Runtime {env['onnxruntime']} {env['ort_providers']}")
    lines.append(f"JSON: {report['out']}")
    return "\n".join(lines)


def result_line(result: dict[str, Any]) -> str:
    return "RESULT " + " ".join(f"{k}={float('nan') if v is None else float(v):.4g}" for k, v in result.items())


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    if opts.partition_probe is not None:
        print(json.dumps(partition_probe(opts.partition_probe, opts.probe_run_s, opts.device, opts.probe_batch,
                                         opts.probe_barrier, opts.probe_peers)))
        return 0
    import torch

    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        print("cuda_check: torch sees no CUDA device on this host; nothing to check", file=sys.stderr)
        return 2
    return publish(run(opts), opts.out, render, result_line)


if __name__ == "__main__":
    sys.exit(main())
