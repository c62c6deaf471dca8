"""The goodput benchmark's environment record and its printed report (see ``benchmarks/goodput.py``)."""

from __future__ import annotations

import os
import platform
from typing import Any

from benchmarks.support import procfs


def environment(cores: tuple[tuple[int, ...], int], device: str) -> dict[str, Any]:
    import aiohttp
    import onnxruntime
    import torch
    import zmq

    return {
        "cpu_model": procfs.cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "server_cores": list(cores[0]), "client_core": cores[1], "shared_core": cores[1] in cores[0],
        "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "",
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "aiohttp": aiohttp.__version__, "pyzmq": zmq.__version__,
        "loadavg_at_start": list(os.getloadavg()),
    }


_RUNTIMES = (("torchscript", "TorchScript"), ("onnx", "ONNX"), ("openvino", "OpenVINO"),
             ("openvino-bf16", "OpenVINO bf16"))


def _n(value: Any) -> float:
    """A figure from the plain report: NaN where it could not be computed (null in JSON)."""
    return float("nan") if value is None else float(value)


def _statuses(step: dict[str, Any]) -> str:
    """A step's answers by status ("-1": no answer within the client's timeout)."""
    return " ".join(f"{'timeout' if code == '-1' else code}:{n}" for code, n in step["statuses"].items())


def render(report: dict[str, Any]) -> str:
    env, o = report["environment"], report["options"]
    lines = [
        f"letmesh goodput on {_where(env)} ({'quick' if o['quick'] else 'full'} run): Poisson arrivals, pass = "
        f">= {report['pass_fraction']:.0%} answered 200 within the SLO from the scheduled send time; "
        f"steps of at least {o['step_requests']} requests and {o.get('step_s', 0):g} s, {o['sweeps']} sweep(s) per "
        "server (max req/s: the median sweep's, the lower of two)",
        f"machine: {env['cpu_model']}{'; ' + env['gpu'] if env['gpu'] else ''}; server pinned to "
        f"core{'s' if len(env['server_cores']) > 1 else ''} {','.join(map(str, env['server_cores']))}, load generator to core "
        f"{env['client_core']}{' (SHARED: only one usable core)' if env['shared_core'] else ''}; load average "
        f"{env['loadavg_at_start'][0]:.2f} at start, {report['loadavg_at_end'][0]:.2f} at end",
        f"software: python {env['python']}, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
        f"aiohttp {env['aiohttp']}; served artifact: {o['backend']}"
        + ("; letmesh's agent may upgrade it to ONNX Runtime" if o["onnx_upgrade"] else "")
        + (f"; letmesh serves the ONNX artifact through OpenVINO, {o['openvino']}" if o.get("openvino") else "")
        + ("; so does the baseline (like for like)" if o.get("baseline_openvino") else ""),
        "",
    ]
    for key, m in report["models"].items():
        lim = m["compute_limit"]
        onnx = (f"; ONNX {m['batch1_ms']['onnx']:.2f} ms" if "onnx" in lim else "; no ONNX Runtime on this device")
        onnx_limit = "".join(f", {label} {lim[name]['rps']:.0f} req/s (batch {lim[name]['batch']})"
                             for name, label in _RUNTIMES[1:] if name in lim)
        lines += [
            f"{key}: {m['model']}",
            f"  SLO {m['slo_ms']:g} ms ({'fixed; ' if o.get('slo_ms') else '= ' + format(o['slo_factor'], 'g') + ' x '}"
            f"batch-1 {m['batch1_ms']['torchscript']:.2f} ms TorchScript{onnx}); compute limit TorchScript {lim['torchscript']['rps']:.0f} "
            f"req/s (batch {lim['torchscript']['batch']}){onnx_limit}; letmesh max batch {m['max_batch']}"
            + (" (fixed)" if o.get("max_batch") else ""),
            f"  {'server':<10}{'max req/s':>10}{'per sweep (<fail)':>20}{'p50 ms':>9}{'p99 ms':>9}{'of limit':>10}"
            f"{'CPU ms/req':>12}{'gen lag p99':>13}{'gen CPU':>9}  cores",
        ]
        for name, s in m["servers"].items():
            per = "/".join(f"{r:.0f}" + ("" if f is None else f"<{f:.0f}")
                           for r, f in zip(s["max_rate_per_sweep"], s["first_failing_per_sweep"]))
            of = m["of_limit"] if name == "letmesh" else m["baseline_of_limit"]
            lines.append(f"  {name:<10}{s['max_rate']:>10.1f}{per:>20}{_n(s['p50_ms']):>9.1f}{_n(s['p99_ms']):>9.1f}"
                         f"{_n(of):>10.2f}{s['cpu_ms_per_req']:>12.2f}{_n(s['lag_p99_ms_at_max']):>11.2f}ms"
                         f"{_n(s['client_cpu_util_at_max']):>9.0%}  {s['affinity']}")
        lines.append(f"  letmesh / baseline {_n(m['vs_naive']):.2f}x (the compute limit allows at most "
                     f"{_n(m.get('ceiling_vs_naive')):.2f}x on {_where(env)}); letmesh of the ONNX limit "
                     f"{_n(m['of_onnx_limit']):.2f}"
                     + (f", of its served runtime's ({m['served_backend']}) {_n(m['of_served_limit']):.2f}"
                        if "of_served_limit" in m else "")
                     + f"; CPU per request measured at {m['low_rate']:g} req/s; letmesh's answer differs from "
                     f"the reference by {_n(m['servers']['letmesh'].get('output_max_abs_diff')):.2g} at most")
        mesh, base = m["servers"]["letmesh"], m["servers"]["baseline"]
        lines.append(f"  idle CPU (no requests): letmesh {mesh['idle_cpu_ms_per_s']:.1f} ms/s, baseline "
                     f"{base['idle_cpu_ms_per_s']:.1f} ms/s; CPU per request less the idle share: letmesh "
                     f"{mesh['cpu_ms_per_req_less_idle']:.2f} ms, baseline {base['cpu_ms_per_req_less_idle']:.2f} ms")
        for name, s in m["servers"].items():
            at_max = (f"; at {s['max_rate']:.0f} req/s (its max) "
                      + parts_text(s.get("cpu_ms_per_req_by_part_at_max"), s.get("model_ms_per_req_at_max"))
                      if s.get("cpu_ms_per_req_by_part_at_max") else "")
            lines.append(f"  CPU ms a request by part, {name}: at {m['low_rate']:g} req/s "
                         + parts_text(s["low_rate"].get("cpu_ms_per_req_by_part"), s["low_rate"].get("model_ms_per_req"))
                         + at_max)
        if mesh.get("overload") and base.get("overload"):
            lines.append(f"  asked for {mesh['overload']['rate']:.0f} req/s ({o['overload']:g}x the higher max rate): "
                         + "; ".join(f"{name} {s['overload']['good_fraction']:.0%} within the SLO "
                                     f"({s['overload']['goodput_rps']:.0f} req/s), answers {_statuses(s['overload'])}"
                                     for name, s in m["servers"].items()))
        if m.get("gflops_at_limit"):
            peak = m.get("fp32_peak_gflops")
            rates = ", ".join(f"{label} {m['gflops_at_limit'][name]:.0f}"
                              + (f" ({m['gflops_at_limit'][name] / peak:.2f})" if peak else "")
                              for name, label in _RUNTIMES if name in m["gflops_at_limit"])
            lines.append(f"  arithmetic: {m['mflop_per_image']:.1f} MFLOP an image; GFLOP/s at each compute limit "
                         + (f"(of one core's fp32 matrix-multiply rate, {peak:.0f}): " if peak else ": ") + rates)
        for variant, runtime in m["servers"]["letmesh"].get("runtimes", {}).items():
            lines.append(f"  letmesh serves {variant} on {runtime}")
        lines.append("")
    lines.append(f"JSON: {report['out']}")
    return "\n".join(lines)


_PARTS = ("gateway", "worker", "controller", "agent", "profiler", "other", "server")


def parts_text(by_part: dict[str, float] | None, model_ms: float | None) -> str:
    """A step's CPU per request by part of the server, each part's ZeroMQ I/O threads beside it; a
    worker's own timing of its model calls (wall clock, a share of each batch) in brackets."""
    if not by_part:
        return "(not measured)"
    out = []
    own = [p for p in by_part if not p.endswith(" ZeroMQ I/O")]
    for part in sorted(own, key=lambda p: (_PARTS.index(p) if p in _PARTS else len(_PARTS), p)):
        text = f"{part} {by_part[part]:.2f}"
        if part == "worker" and model_ms is not None:
            text += f" (model {model_ms:.2f})"
        if f"{part} ZeroMQ I/O" in by_part:
            text += f" + ZeroMQ I/O {by_part[f'{part} ZeroMQ I/O']:.2f}"
        out.append(text)
    return ", ".join(out)


def _where(env: dict[str, Any]) -> str:
    cores = len(env["server_cores"])
    where = "one core" if cores == 1 else f"{cores} cores"
    return f"{where} and {env['gpu'] or 'a GPU'}" if env["device"] == "cuda" else where


def result_line(result: dict[str, Any]) -> str:
    return "RESULT " + " ".join(f"{k}={_n(v):.4g}" for k, v in result.items())
