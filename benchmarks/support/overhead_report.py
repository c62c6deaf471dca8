"""The overhead benchmark's report: the machine it ran on, the printed table and the RESULT line.
Pure functions of the report; :mod:`benchmarks.overhead` runs the mesh and the clients.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from benchmarks.support import procfs

BREAKDOWN_NOTES = {
    "client_round_trip_us": "what the client measured",
    "outside_handler_us": "client HTTP, loopback TCP, aiohttp parsing and routing, OIP reply encoding, write",
    "gateway_handler_us": "letmesh_latency_us: infer handler entry until the reply is encoded",
    "parse_dispatch_zmq_us": "handler minus worker queue and compute: body read, OIP parse, dispatcher, "
                             "both ZeroMQ hops, worker decode and reply encode",
    "worker_queue_us": "letmesh_queue_us: worker receive until its serving loop starts the batch",
    "worker_compute_us": "letmesh_compute_us: ModelRunner.run around the TorchScript call",
}


def environment() -> dict[str, Any]:
    import aiohttp
    import torch
    import zmq

    return {
        "cpu_model": procfs.cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "aiohttp": aiohttp.__version__, "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(), "loadavg_at_start": list(os.getloadavg()),
        "note": "client, gateway, worker, agent and controller all share these cores",
    }


def _spread(summary: dict[str, dict[str, float]], key: str) -> str:
    s = summary[key]
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def _cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{role} {us:.0f}" for role, us in cpu.items())


def render(report: dict[str, Any]) -> str:
    env, o = report["environment"], report["options"]
    low = report["low_load"]
    lines = [
        f"letmesh data-path overhead: HTTP -> gateway -> worker (ZeroMQ) -> gateway -> HTTP on loopback, "
        f"identity model FP32[1,16] ({'quick' if o['quick'] else 'full'} run)",
        f"machine: {env['cpu_model']}, {env['usable_cores']} usable cores shared by the client, gateway, worker, "
        f"agent and controller; load average {env['loadavg_at_start'][0]:.2f} at start, "
        f"{report['loadavg_at_end'][0]:.2f} at end",
        f"software: python {env['python']}, torch {env['torch']}, aiohttp {env['aiohttp']}, "
        f"pyzmq {env['pyzmq']} (libzmq {env['libzmq']}), numpy {env['numpy']}",
        "",
        f"Low load: 1 sequential client (http.client, keep-alive); {o['runs']} runs x {o['requests']} timed "
        f"requests after {o['warmup_requests']} warm-up, forms interleaved; deadline: "
        + ("the model's default" if o["slo_ms"] is None else f"letmesh_slo_ms={o['slo_ms']:g}"),
        "  ms, median of runs [min-max across runs]",
        f"  {'path':<22}" + "".join(f"{h:>22}" for h in ("p50", "p90", "p99", "mean", "IQR")),
    ]
    rows = [(f"mesh, {f['form']} body", f["summary"]) for f in low]
    rows.append(("in-process module(x)", report["in_process"]["summary"]))
    for label, summary in rows:
        keys = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "iqr_ms")
        lines.append(f"  {label:<22}" + "".join(f"{_spread(summary, k):>22}" for k in keys))
    lines += ["", "  Where a low-load request's time goes (us, medians over all timed requests; from the reply's "
              "letmesh_* parameters):",
              f"  {'share':<24}" + "".join(f"{f['form']:>9}" for f in low) + "  what it covers"]
    for key, note in BREAKDOWN_NOTES.items():
        lines.append(f"  {key[:-3]:<24}" + "".join(f"{f['breakdown_us'].get(key, 0.0):>9.0f}" for f in low)
                     + f"  {note}")
    for f in low:
        lines.append(f"  CPU us per request, {f['form']} body: {_cpu(f['cpu_us_per_request'])}")
    lines += ["", f"Load: N closed-loop clients (minimal asyncio HTTP/1.1, one keep-alive connection each, "
              f"JSON body) in this process; {o['trials']} trial(s) x {o['duration_s']:g} s after "
              f"{o['warmup_s']:g} s warm-up per level",
              f"  {'clients':>7}{'req/s':>8}{'[min-max]':>16}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
              f"{'non-200':>9}  CPU us per request by process"]
    for lv in report["load"]["levels"]:
        bad = sum(n for status, n in lv["statuses"].items() if int(status) != 200)
        spread = f"[{lv['rps_min']:.0f}-{lv['rps_max']:.0f}]"
        lat = lv["latency"]
        lines.append(f"  {lv['concurrency']:>7}{lv['rps_median']:>8.0f}{spread:>16}{lat['p50_ms']:>9.2f}"
                     f"{lat['p90_ms']:>9.2f}{lat['p99_ms']:>9.2f}{bad:>9}  {_cpu(lv['cpu_us_per_request'])}")
    r = report["result"]
    lines += ["", f"peak {r['peak_rps']:.0f} req/s at {report['load']['peak_concurrency']} clients; "
              f"low-load p50 {r['p50_ms']:.3f} ms (JSON), {r['binary_p50_ms']:.3f} ms (binary) against "
              f"{r['inprocess_p50_ms'] * 1000:.1f} us in-process; product target: p50 under 1 ms at low load"]
    if report["non_200"] or report["wrong_outputs"]:
        lines.append(f"WARNING: {report['non_200']} non-200 replies (504: deadline passed, 503: no worker or "
                     f"overloaded, 0: connection lost), {report['wrong_outputs']} wrong outputs")
    lines.append(f"JSON: {report['out']}")
    return "\n".join(lines)


def result_line(result: dict[str, float]) -> str:
    return "RESULT " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
