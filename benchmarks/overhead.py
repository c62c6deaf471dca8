"""Data-path overhead: HTTP -> gateway -> worker (ZeroMQ) -> gateway -> HTTP with an identity model.

Starts a whole mesh on loopback serving only the "trivial" family and measures (1) low-load
latency, one closed-loop client over a keep-alive connection, in the OIP JSON and the Triton
binary-tensor forms; (2) throughput and latency at several concurrency levels; (3) the same
TorchScript artifact called in-process, the floor the mesh is compared with. Prints a table,
writes JSON, and ends with one ``RESULT`` line. Asserts nothing about speed.

Run: ``python benchmarks/overhead.py [--quick]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.client
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.support import procfs  # noqa: E402
from benchmarks.support.overhead_report import BREAKDOWN_NOTES, environment, render, result_line  # noqa: E402
from benchmarks.support.report import publish  # noqa: E402
from letmesh.launcher import LocalMesh  # noqa: E402
from letmesh.zoo import ARTIFACT, build_trivial, quiet_jit  # noqa: E402

MODEL = "identity"
INFER_PATH = f"/v2/models/{MODEL}/infer"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "overhead.json"
HEADER_LENGTH = "Inference-Header-Content-Length"
BREAKDOWN_KEYS = ("letmesh_queue_us", "letmesh_compute_us", "letmesh_latency_us")


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    quick: bool
    runs: int
    requests: int
    warmup_requests: int
    duration_s: float
    warmup_s: float
    trials: int
    concurrency: tuple[int, ...]
    inprocess_calls: int
    slo_ms: float | None
    out: Path


def parse_options(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller run (about a minute), same code path")
    p.add_argument("--runs", type=int, help="low-load repetitions per body form (default 5, quick 3)")
    p.add_argument("--requests", type=int, help="timed requests per low-load run (default 2000, quick 300)")
    p.add_argument("--duration-s", type=float, help="seconds per throughput trial (default 5, quick 2)")
    p.add_argument("--trials", type=int, help="throughput trials per concurrency level (default 3, quick 1)")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated closed-loop client counts")
    p.add_argument("--slo-ms", type=float, help="send parameter letmesh_slo_ms (default: none, so the "
                   "model's default deadline applies)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    a = p.parse_args(argv)
    try:
        concurrency = tuple(int(c) for c in a.concurrency.split(",") if c.strip())
    except ValueError:
        p.error("--concurrency takes comma-separated integers")
    if not concurrency or min(concurrency) < 1:
        p.error("--concurrency needs at least one level, each 1 or more")
    for name in ("runs", "requests", "trials", "duration_s", "slo_ms"):
        value = getattr(a, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    quick = a.quick
    requests = a.requests or (300 if quick else 2000)
    return Options(
        quick=quick,
        runs=a.runs or (3 if quick else 5),
        requests=requests,
        warmup_requests=min(200, max(10, requests // 5)),
        duration_s=a.duration_s or (2.0 if quick else 5.0),
        warmup_s=0.5,
        trials=a.trials or (1 if quick else 3),
        concurrency=concurrency,
        inprocess_calls=2000 if quick else 20000,
        slo_ms=a.slo_ms,
        out=a.out,
    )


# --- statistics --------------------------------------------------------------------------------


def latency_stats(samples_ns: list[int]) -> dict[str, float]:
    """Percentiles, mean and spread of one run, in milliseconds."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        return dict.fromkeys(("n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "iqr_ms", "min_ms",
                              "max_ms"), 0)
    p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
    return {
        "n": int(ms.size), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(ms.mean()),
        "stdev_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0, "iqr_ms": p75 - p25,
        "min_ms": float(ms.min()), "max_ms": float(ms.max()),
    }


def across(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """For every figure of a run: the median over runs and the min and max across runs."""
    keys = [k for k in runs[0] if k != "n"]
    return {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                "max": max(r[k] for r in runs)} for k in keys}


# --- request bodies and response parsing ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payload:
    form: str
    body: bytes
    headers: dict[str, str]


def payloads(x: np.ndarray, slo_ms: float | None = None) -> tuple[Payload, Payload]:
    """The same tensor as an OIP JSON body and as a Triton binary-tensor body (binary reply too)."""
    shape = list(x.shape)
    extra = {} if slo_ms is None else {"letmesh_slo_ms": slo_ms}
    as_json = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape,
                                      "data": x.ravel().tolist()}],
                          **({"parameters": extra} if extra else {})}).encode()
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape,
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True, **extra}}).encode()
    return (
        Payload("json", as_json, {"Content-Type": "application/json"}),
        Payload("binary", head + x.tobytes(),
                {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}),
    )


def decode_reply(body: bytes, header_length: str | None) -> tuple[dict[str, Any], np.ndarray]:
    """(response parameters, output "y") of an OIP reply in either form."""
    head = json.loads(body[: int(header_length)] if header_length else body)
    out = head["outputs"][0]
    if header_length:
        y = np.frombuffer(body[int(header_length):], dtype=np.float32)
    else:
        y = np.asarray(out["data"], dtype=np.float32)
    return head.get("parameters", {}), y.reshape(out["shape"])


# --- CPU accounting per process -----------------------------------------------------------------

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime + stime




def cpu_snapshot(mesh: LocalMesh) -> dict[str, float]:
    """CPU seconds used so far by each role (workers counted apart from their agent) and this client."""
    snap = {role: _cpu_s(proc.pid) for role, proc in mesh.procs.items()}
    if "agent" in mesh.procs:
        snap["worker"] = sum(_cpu_s(p) for p in procfs.descendants(mesh.procs["agent"].pid))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    snap["client"] = usage.ru_utime + usage.ru_stime
    return snap


def cpu_per_request_us(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    return {role: round((after[role] - before.get(role, 0.0)) / max(requests, 1) * 1e6, 1) for role in after}


# --- low load: one sequential client -----------------------------------------------------------


def sequential_run(port: int, payload: Payload, x: np.ndarray, n: int, warmup: int) -> dict[str, Any]:
    """One closed-loop client over one keep-alive connection; the clock stops before parsing."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    statuses: collections.Counter[int] = collections.Counter()
    latencies: list[int] = []
    breakdown: dict[str, list[int]] = {"client_us": [], **{k: [] for k in BREAKDOWN_KEYS}}
    wrong = 0
    try:
        for i in range(warmup + n):
            start = time.perf_counter_ns()
            conn.request("POST", INFER_PATH, payload.body, payload.headers)
            resp = conn.getresponse()
            body = resp.read()
            elapsed = time.perf_counter_ns() - start
            if i < warmup:
                continue
            statuses[resp.status] += 1
            latencies.append(elapsed)
            if resp.status != 200:
                continue
            params, y = decode_reply(body, resp.getheader(HEADER_LENGTH))
            wrong += not np.array_equal(y, x)
            breakdown["client_us"].append(elapsed // 1000)
            for key in BREAKDOWN_KEYS:
                breakdown[key].append(int(params.get(key, 0)))
    finally:
        conn.close()
    return {"stats": latency_stats(latencies), "statuses": dict(statuses), "wrong_outputs": wrong,
            "breakdown": breakdown}




def breakdown_medians(parts: dict[str, list[int]]) -> dict[str, float]:
    """Median of each share of a request's time (see BREAKDOWN_NOTES), in microseconds."""
    client = np.asarray(parts["client_us"], dtype=np.float64)
    if client.size == 0:
        return {}
    queue, compute, handler = (np.asarray(parts[k], dtype=np.float64) for k in BREAKDOWN_KEYS)
    shares = (client, client - handler, handler, handler - queue - compute, queue, compute)
    return {key: float(np.median(v)) for key, v in zip(BREAKDOWN_NOTES, shares)}


def low_load(mesh: LocalMesh, forms: tuple[Payload, ...], x: np.ndarray, opts: Options) -> list[dict[str, Any]]:
    """Runs of every body form interleaved, so drift on a shared machine hits both alike."""
    runs: dict[str, list] = {p.form: [] for p in forms}
    statuses = {p.form: collections.Counter() for p in forms}
    wrong = dict.fromkeys(runs, 0)
    parts: dict[str, dict[str, list[int]]] = {p.form: collections.defaultdict(list) for p in forms}
    cpu_by_role: dict[str, dict[str, float]] = {p.form: collections.defaultdict(float) for p in forms}
    for _ in range(opts.runs):
        for payload in forms:
            before = cpu_snapshot(mesh)
            r = sequential_run(mesh.http_port, payload, x, opts.requests, opts.warmup_requests)
            after = cpu_snapshot(mesh)
            for role in after:
                cpu_by_role[payload.form][role] += after[role] - before.get(role, 0.0)
            runs[payload.form].append(r["stats"])
            statuses[payload.form].update(r["statuses"])
            wrong[payload.form] += r["wrong_outputs"]
            for k, v in r["breakdown"].items():
                parts[payload.form][k] += v
    total = opts.runs * (opts.requests + opts.warmup_requests)
    return [{"form": p.form, "runs": runs[p.form], "summary": across(runs[p.form]),
             "statuses": dict(statuses[p.form]), "wrong_outputs": wrong[p.form],
             "breakdown_us": breakdown_medians(parts[p.form]),
             "cpu_us_per_request": {role: round(s / total * 1e6, 1) for role, s in cpu_by_role[p.form].items()}}
            for p in forms]


# --- load: concurrent closed-loop clients ------------------------------------------------------


def raw_request(port: int, payload: Payload) -> bytes:
    head = [f"POST {INFER_PATH} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(payload.body)}"]
    head += [f"{k}: {v}" for k, v in payload.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload.body


async def _client(port: int, request: bytes, window: tuple[int, int], latencies: list[int],
                  statuses: collections.Counter) -> None:
    """A minimal keep-alive HTTP/1.1 client (the gateway always answers with Content-Length).

    A lost connection counts once as status 0 and ends this client.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    measure_from, stop_at = window
    try:
        while (start := time.perf_counter_ns()) < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            end = time.perf_counter_ns()
            # Every answer that ends in the window counts (one started before it too): counting
            # only those that also started in it lost about one request per client per trial.
            if measure_from <= end <= stop_at:
                latencies.append(end - start)
                statuses[int(head[9:12])] += 1
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        statuses[0] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _trial(port: int, request: bytes, concurrency: int, warmup_s: float, duration_s: float):
    latencies: list[int] = []
    statuses: collections.Counter[int] = collections.Counter()
    now = time.perf_counter_ns()
    window = (now + int(warmup_s * 1e9), now + int((warmup_s + duration_s) * 1e9))
    await asyncio.gather(*(_client(port, request, window, latencies, statuses) for _ in range(concurrency)))
    return latencies, statuses


def _run_loop(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def load_level(mesh: LocalMesh, payload: Payload, concurrency: int, opts: Options) -> dict[str, Any]:
    request = raw_request(mesh.http_port, payload)
    trials, statuses, pooled = [], collections.Counter(), []
    before = cpu_snapshot(mesh)
    completed = 0
    for _ in range(opts.trials):
        lat, st = _run_loop(_trial(mesh.http_port, request, concurrency, opts.warmup_s, opts.duration_s))
        statuses.update(st)
        pooled += lat
        completed += len(lat)
        trials.append({"rps": len(lat) / opts.duration_s, **latency_stats(lat)})
    after = cpu_snapshot(mesh)
    # Per-request CPU over whole trials including warm-up; the warm-up share is scaled out.
    scale = opts.duration_s / (opts.duration_s + opts.warmup_s)
    cpu = {k: round(v * scale, 1) for k, v in cpu_per_request_us(before, after, completed).items()}
    rps = [t["rps"] for t in trials]
    return {"concurrency": concurrency, "trials": trials, "rps_median": statistics.median(rps),
            "rps_min": min(rps), "rps_max": max(rps), "latency": latency_stats(pooled),
            "statuses": dict(statuses), "cpu_us_per_request": cpu}


# --- in-process baseline ------------------------------------------------------------------------


def in_process(artifact: Path, x: np.ndarray, opts: Options) -> dict[str, Any]:
    """The same TorchScript module called directly: torch.from_numpy in, one thread, inference mode."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with quiet_jit():
            module = torch.jit.load(str(artifact)).eval()
        runs = []
        with torch.inference_mode():
            for _ in range(200):
                module(torch.from_numpy(x))
            for _ in range(opts.runs):
                samples = []
                for _ in range(opts.inprocess_calls):
                    start = time.perf_counter_ns()
                    module(torch.from_numpy(x))
                    samples.append(time.perf_counter_ns() - start)
                runs.append(latency_stats(samples))
    finally:
        torch.set_num_threads(threads)
    return {"runs": runs, "summary": across(runs), "threads": 1}


def measure(opts: Options) -> dict[str, Any]:
    x = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(1, 16)
    env = environment()
    with tempfile.TemporaryDirectory(prefix="letmesh-overhead-") as tmp:
        repo = Path(tmp) / "repository"
        build_trivial(repo)
        inproc = in_process(repo / MODEL / ARTIFACT, x, opts)
        mesh = LocalMesh(repository=repo, state_dir=Path(tmp) / "state")
        try:
            mesh.start()
            forms = payloads(x, opts.slo_ms)
            low = low_load(mesh, forms, x, opts)
            levels = [load_level(mesh, forms[0], c, opts) for c in opts.concurrency]
        finally:
            mesh.stop()
    peak = max(levels, key=lambda lv: lv["rps_median"])
    non_200 = sum(n for part in [*low, *levels] for s, n in part["statuses"].items() if int(s) != 200)
    js, binary = low[0]["summary"], low[1]["summary"]
    return {
        "benchmark": "overhead",
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "environment": env,
        "low_load": low,
        "load": {"payload": "json", "levels": levels, "peak_rps": peak["rps_median"],
                 "peak_concurrency": peak["concurrency"]},
        "in_process": inproc,
        "mesh_over_inprocess_p50": js["p50_ms"]["median"] / inproc["summary"]["p50_ms"]["median"],
        "non_200": non_200,
        "loadavg_at_end": list(os.getloadavg()),
        "breakdown_notes": BREAKDOWN_NOTES,
        "wrong_outputs": sum(f["wrong_outputs"] for f in low),
        "out": str(opts.out),
        "result": {
            "p50_ms": js["p50_ms"]["median"], "p99_ms": js["p99_ms"]["median"], "peak_rps": peak["rps_median"],
            "inprocess_p50_ms": inproc["summary"]["p50_ms"]["median"], "binary_p50_ms": binary["p50_ms"]["median"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    return publish(measure(opts), opts.out, render, result_line)


if __name__ == "__main__":
    sys.exit(main())
