"""The data plane's CPU policy on one shared core: "batch" against "normal", step by step (mesh.cpu_policy).

One mesh serves goodput's small CNN (or ``--model medium``) pinned to one core, the load
generator on another. Before each step every thread of its gateway and workers is put under one
policy, "batch" (SCHED_BATCH, what ``[gateway] cpu_policy`` and ``[agent] worker_cpu_policy`` give
by default) or "normal" (the kernel's default, under which an arrival may preempt whatever runs),
exactly as the configs set it at start (and checked); the controller and agent keep theirs. Each
load (a fraction of an estimate of the mesh's capacity on this core: the inverse of its CPU per
request at a moderate rate, idle share included and batching's gains at higher rates not, so 0.9
is short of saturation; the loads mean the same on a faster or slower host) runs once under each
policy a round, with the same Poisson arrivals, the order flipping from one step pair to the next, so a
drift in the host's speed moves both. Per step: the share answered 200 within the SLO (20x the
model's batch-1 latency), p50 and p99 from each request's scheduled send time, the server's CPU
per request. Reported per load and policy: medians and spread over the rounds, and over the
pairs of steps the ratios batch/normal of p99 and CPU per request. Prints a table, writes JSON,
ends with a RESULT line. Asserts nothing about speed. ``--hog``: a busy loop of someone else's
pinned to the server core for the whole run, calibration included (the SLO grows with it; give
lower loads).

Run: ``python benchmarks/cpu_policy.py [--quick] [--model small|medium] [--rounds N]
[--loads 0.6,0.75,0.9] [--step-s S] [--hog]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import goodput as g  # noqa: E402
from benchmarks.support import goodput_models as gm  # noqa: E402
from benchmarks.support.goodput_report import environment, result_line  # noqa: E402
from benchmarks.support.report import publish  # noqa: E402
from benchmarks.support.server_under_test import MeshServer, pick_cores, settle  # noqa: E402
from mesh import cpu_policy  # noqa: E402

POLICIES = ("batch", "normal")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cpu_policy.json"


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round of shorter steps")
    p.add_argument("--model", choices=sorted(gm.MODELS), default="small")
    p.add_argument("--rounds", type=int, help="steps per load and policy (default 4, quick 1)")
    p.add_argument("--loads", default="0.6,0.75,0.9", help="arrival rates as fractions of the estimated capacity")
    p.add_argument("--step-s", type=float, help="seconds of arrivals a step (default 8, quick 4)")
    p.add_argument("--hog", action="store_true",
                   help="a CPU-bound process of someone else's on the server core for the whole run (calibration too)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    opts = p.parse_args(argv)
    if opts.rounds is None:
        opts.rounds = 1 if opts.quick else 4
    if opts.step_s is None:
        opts.step_s = 4.0 if opts.quick else 8.0
    try:
        opts.loads = tuple(float(x) for x in opts.loads.split(","))
    except ValueError:
        p.error(f"--loads takes numbers separated by commas, not {opts.loads!r}")
    if opts.rounds < 1 or opts.step_s <= 0 or not all(0 < x < 2 for x in opts.loads):
        p.error("--rounds must be >= 1, --step-s > 0 and every load in (0, 2)")
    return opts


def data_plane_pids(server: MeshServer) -> dict[int, str]:
    """The mesh's gateway and worker processes: pid -> role."""
    out = {}
    for pid in server.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # a process that ended meanwhile
        role = "worker" if b"agents.worker" in cmd else ("gateway" if b"gateway" in cmd else "")
        if role:
            out[pid] = role
    return out


def data_plane_policies(server: MeshServer) -> dict[str, list[str]]:
    """The scheduling policies the threads of the mesh's gateway and workers run under, by role."""
    out: dict[str, set[str]] = {}
    for pid, role in data_plane_pids(server).items():
        try:
            out.setdefault(role, set()).update(cpu_policy.policy_of(int(t)) for t in os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return {role: sorted(names) for role, names in out.items()}


def summarise(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per load and policy the medians and ranges over rounds; over steps paired by (load, round)
    the ratios batch/normal of p99 and CPU per request."""
    table: dict[str, dict[str, Any]] = {}
    for load in sorted({s["load"] for s in steps}):
        row = {}
        for policy in POLICIES:
            mine = [s for s in steps if s["load"] == load and s["policy"] == policy]
            row[policy] = {key: {"median": statistics.median(s[key] for s in mine),
                                 "min": min(s[key] for s in mine), "max": max(s[key] for s in mine)}
                           for key in ("good_fraction", "p50_ms", "p99_ms", "cpu_ms_per_req")} if mine else {}
        table[str(load)] = row
    by_pair = {(s["load"], s["round"], s["policy"]): s for s in steps}
    ratios: dict[str, list[float]] = {"p99": [], "cpu": []}
    for (load, rnd, policy), s in by_pair.items():
        other = by_pair.get((load, rnd, "normal"))
        if policy == "batch" and other is not None and other["p99_ms"] > 0 and other["cpu_ms_per_req"] > 0:
            ratios["p99"].append(s["p99_ms"] / other["p99_ms"])
            ratios["cpu"].append(s["cpu_ms_per_req"] / other["cpu_ms_per_req"])
    spread = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "pairs": len(v),
                  "below_1": sum(r < 1 for r in v)} for k, v in ratios.items() if v}
    good = {p: statistics.mean(s["good_fraction"] for s in steps if s["policy"] == p) for p in POLICIES
            if any(s["policy"] == p for s in steps)}
    return {"by_load": table, "ratios": spread, "mean_good_fraction": good}


def set_data_plane_policy(server: MeshServer, policy: str) -> None:
    """Put every thread of the mesh's gateway and workers under ``policy``, as their configs do at
    start (mesh.cpu_policy.apply), and check that each is."""
    for pid in data_plane_pids(server):
        problem = cpu_policy.apply(policy, pid)
        if problem:
            raise RuntimeError(f"pid {pid}: {problem}")
    found = data_plane_policies(server)
    if set(found) != {"gateway", "worker"} or any(p != [policy] for p in found.values()):
        raise RuntimeError(f"the mesh's data plane is not all under {policy!r}: {found}")


def start_hog(core: int) -> subprocess.Popen:
    """A busy loop pinned to ``core``: a neighbour that never sleeps."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    cores = pick_cores(1)
    server_cores, client_core = cores
    env = environment(cores, "cpu")
    goodput_opts = g.parse_options(["--quick", "--models", opts.model])
    model = gm.MODELS[opts.model]
    previous = os.sched_getaffinity(0)
    steps: list[dict[str, Any]] = []
    hog = start_hog(server_cores[0]) if opts.hog else None
    try:
        with tempfile.TemporaryDirectory(prefix="letmesh-cpu-policy-") as tmp_name:
            tmp = Path(tmp_name)
            artifacts = gm.export(model)
            cal = g.calibrate(model, artifacts, server_cores, goodput_opts, tmp)
            repo = gm.write_repository(tmp / "repo", model, artifacts, backend="torchscript", slo_ms=cal["slo_ms"],
                                       max_batch=cal["max_batch"], profile_ms=cal["latency_ms"])
            work = g.workload(model, cal, "torchscript")
            os.sched_setaffinity(0, {client_core})
            server = MeshServer(repo, tmp / "state", server_cores)
            try:
                configured = data_plane_policies(server)  # as the mesh started: its default config
                limit = cal["compute_limit"]["torchscript"]["rps"]
                settle(server)
                g.step(server, work, 0.2 * limit, max(100, int(0.2 * limit * 2)), opts.seed)  # warm-up
                settle(server)
                # The capacity estimate: CPU per request at a moderate rate.
                probe_rate = 0.25 * limit
                before = server.cpu_s()
                probe = g.step(server, work, probe_rate, max(100, int(probe_rate * opts.step_s)), opts.seed + 1)
                probe_cpu_ms = (server.cpu_s() - before) / probe["sent"] * 1e3
                capacity = 1e3 / probe_cpu_ms
                for rnd in range(opts.rounds):
                    for i, load in enumerate(opts.loads):
                        rate = load * capacity
                        for policy in (POLICIES if (rnd + i) % 2 == 0 else POLICIES[::-1]):
                            set_data_plane_policy(server, policy)
                            settle(server)
                            before = server.cpu_s()
                            s = g.step(server, work, rate, max(100, int(rate * opts.step_s)),
                                       opts.seed + 100 * (rnd + 1) + i)  # the same arrivals under both policies
                            cpu_ms = (server.cpu_s() - before) / s["sent"] * 1e3
                            steps.append({"policy": policy, "load": load, "round": rnd, "rate": rate,
                                          "cpu_ms_per_req": cpu_ms, **{k: s[k] for k in (
                                              "sent", "good", "good_fraction", "p50_ms", "p99_ms", "lag_p99_ms")}})
                            print(f"  {policy:6s} load {load:.2f} ({rate:6.1f} req/s) round {rnd}: "
                                  f"{s['good_fraction']:.4f} within SLO, p50 {s['p50_ms']:.1f} ms, "
                                  f"p99 {s['p99_ms']:.1f} ms, CPU {cpu_ms:.3f} ms/req", flush=True)
            finally:
                server.stop()
    finally:
        os.sched_setaffinity(0, previous)
        if hog is not None:
            hog.kill()
            hog.wait()
    summary = summarise(steps)
    ratios = summary["ratios"]
    return {
        "benchmark": "cpu_policy", "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "environment": env, "hog": opts.hog, "model": model.summary, "slo_ms": cal["slo_ms"], "max_batch": cal["max_batch"],
        "compute_limit_torchscript_rps": limit, "capacity_estimate_rps": capacity, "probe_cpu_ms_per_req": probe_cpu_ms,
        "configured_policies": configured, "steps": steps, "summary": summary, "out": str(opts.out),
        "result": {"p99_batch_vs_normal": ratios.get("p99", {}).get("median", float("nan")),
                   "cpu_batch_vs_normal": ratios.get("cpu", {}).get("median", float("nan")),
                   "good_batch": summary["mean_good_fraction"].get("batch", float("nan")),
                   "good_normal": summary["mean_good_fraction"].get("normal", float("nan"))},
    }


def render(report: dict[str, Any]) -> str:
    beside = "; a CPU-bound process beside it on the core" if report["hog"] else ""
    lines = [f"CPU policy of the gateway and workers on one shared core: {report['model']}{beside}",
             f"SLO {report['slo_ms']:.1f} ms; capacity estimate {report['capacity_estimate_rps']:.0f} req/s "
             f"({report['probe_cpu_ms_per_req']:.2f} ms CPU a request); {report['options']['rounds']} round(s)",
             "  load  policy   within SLO (min-max)        p50 ms   p99 ms (min-max)       CPU ms/req (min-max)"]
    for load, row in report["summary"]["by_load"].items():
        for policy, fig in row.items():
            if not fig:
                continue
            gf, p50, p99, cpu = (fig[k] for k in ("good_fraction", "p50_ms", "p99_ms", "cpu_ms_per_req"))
            lines.append(f"  {float(load):4.2f}  {policy:7s} {gf['median']:.4f} ({gf['min']:.4f}-{gf['max']:.4f})   "
                         f"{p50['median']:7.1f}  {p99['median']:7.1f} ({p99['min']:.1f}-{p99['max']:.1f})   "
                         f"{cpu['median']:.3f} ({cpu['min']:.3f}-{cpu['max']:.3f})")
    for key, r in report["summary"]["ratios"].items():
        lines.append(f"batch/normal {key}: median {r['median']:.3f} (range {r['min']:.3f}-{r['max']:.3f}; "
                     f"below 1 in {r['below_1']} of {r['pairs']} pairs of steps)")
    lines.append(f"JSON: {report['out']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    return publish(measure(opts), opts.out, render, result_line)


if __name__ == "__main__":
    sys.exit(main())
