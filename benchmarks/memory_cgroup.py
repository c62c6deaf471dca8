"""A mesh whose agent runs in a real memory cgroup: what the kernel kills, and what clients see.

The controller and the gateway run outside; the agent, and so every worker and profiler process
it starts, runs in a new memory cgroup of ``--limit-mb`` (v2 or v1, made here: needs root). The
agent offers that limit to the planner (``agents.probe``). The demo repository is served with
steady traffic on two families (digits-cnn and digits-mlp, closed loops with a pause between
requests) for ``--seconds``: the start-up placement, the device's profiling and the first plan's
move all happen in that window. Per run it reports the kernel's OOM kills in the group and how
often the group hit its limit, the workers the agent reported crashed, whether the profiling was
cut short, the moves the controller made and which of them stopped workers first to make room,
and the HTTP answers. Median and range over ``--runs``; prints a table, writes JSON, ends with a
RESULT line. Asserts nothing.

Run (as root): ``python benchmarks/memory_cgroup.py [--quick] [--limit-mb 600] [--runs 3]``.
An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.support.cgroup import MemoryCgroup, memory_cgroup  # noqa: E402
from benchmarks.support.report import publish  # noqa: E402
from letmesh.launcher import LocalMesh  # noqa: E402
from letmesh.status import fetch_status  # noqa: E402
from letmesh.zoo import build_zoo  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_ZOO = HERE / "results" / "zoo"  # a build cache: git-ignored, rebuilt only when incomplete
TRAFFIC = (("digits-cnn", 40.0), ("digits-mlp", 20.0))  # variant, requests a second at most


class CgroupMesh(LocalMesh):
    """A local mesh whose agent starts inside ``group`` (so do its workers and its profiler)."""

    group: MemoryCgroup | None = None

    def command(self, role: str) -> list[str]:
        base = super().command(role)
        if role != "agent" or self.group is None:
            return base
        return ["sh", "-c", f'echo $$ > "{self.group.procs}" && exec "$@"', "sh", *base]


def _traffic(url: str, variant: str, rate: float, stop: threading.Event, codes: dict[str, int]) -> None:
    body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64],
                                   "data": [0.5] * 64}]}).encode()
    while not stop.is_set():
        request = urllib.request.Request(f"{url}/v2/models/{variant}/infer", body,
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                code = str(reply.status)
        except urllib.error.HTTPError as exc:
            code = str(exc.code)
        except OSError as exc:
            code = type(exc).__name__
        codes[code] = codes.get(code, 0) + 1
        stop.wait(1.0 / rate)


def one_run(repo: Path, limit_mb: int, seconds: float, tmp: Path) -> dict[str, Any]:
    group = memory_cgroup(limit_mb << 20, prefix="letmesh-bench")
    if group is None:
        raise SystemExit("no memory cgroup can be made here (run as root on a host with a memory controller)")
    state = tmp / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    mesh = CgroupMesh(repository=repo, state_dir=state, max_cores=2, log_level="INFO", log_dir=state / "logs")
    mesh.group = group
    codes: dict[str, int] = {}
    stop = threading.Event()
    try:
        mesh.start(timeout_s=300)
        offered = [d.memory_bytes >> 20 for a in fetch_status(mesh.controller_address, keys_dir=mesh.keys_dir).agents
                   for d in a.devices if d.kind == "cpu"]
        threads = [threading.Thread(target=_traffic, args=(mesh.http_url, v, r, stop, codes), daemon=True)
                   for v, r in TRAFFIC]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(15)
        status = fetch_status(mesh.controller_address, keys_dir=mesh.keys_dir)
        workers = [{"worker": w.worker_id, "state": w.state, "variants": list(w.variants),
                    "peak_mib": w.memory_peak_bytes >> 20} for w in status.workers]
    finally:
        stop.set()
        mesh.stop()
    log = (state / "logs" / "controller.log").read_text(errors="replace").splitlines()
    moves = [m.group(1) for line in log if (m := re.search(r"re-planning \((.*?)\): \d+ workers kept", line))]
    first_move = next((i for i, line in enumerate(log) if "re-planning (" in line), len(log))
    crashes = [i for i, line in enumerate(log) if "worker crashed" in line]
    agent_log = (state / "logs" / "agent.log").read_text(errors="replace")
    try:
        figures = {"oom_kills": group.oom_kills(), "failed_charges": group.failed_charges(),
                   "peak_mib": group.peak_bytes() >> 20}
    finally:
        group.remove()
    answered = sum(codes.values())
    return {
        **figures, "offered_mib": offered, "workers_at_end": workers,
        "worker_crashes": len(crashes),
        # beside the profiler, before any plan (the start-up placement) / from the first plan's move on
        "worker_crashes_before_first_move": sum(i < first_move for i in crashes),
        "worker_crashes_from_first_move": sum(i >= first_move for i in crashes),
        "profiling_failed": any("profiling on local failed" in line for line in log),
        # the agent left the co-locations unmeasured: no room for a co-runner (agents.profile_memory)
        "colocation_skipped": "co-location not measured" in agent_log,
        "moves": moves, "moves_making_room": sum("cannot hold the leaving and the new workers" in line for line in log),
        "answers": codes, "answered": answered,
        "share_503": codes.get("503", 0) / answered if answered else float("nan"),
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def render(report: dict[str, Any]) -> str:
    o = report["options"]
    lines = [f"memory cgroup of {o['limit_mb']} MiB around the agent; demo repository; traffic on "
             f"{', '.join(v for v, _ in TRAFFIC)} for {o['seconds']:.0f} s a run; {o['runs']} run(s)",
             "run  OOM kills  limit hits  worker crashes (before, from the first move)  profiling cut  "
             "co-location  moves (making room)  answers"]
    for i, r in enumerate(report["runs"]):
        crashes = f"{r['worker_crashes']} ({r['worker_crashes_before_first_move']}, {r['worker_crashes_from_first_move']})"
        lines.append(f"{i:>3}  {r['oom_kills']:>9}  {r['failed_charges']:>10}  {crashes:>42}  "
                     f"{'yes' if r['profiling_failed'] else 'no':>13}  "
                     f"{'skipped' if r['colocation_skipped'] else 'measured':>11}  {len(r['moves']):>5} ({r['moves_making_room']})"
                     f"          {r['answers']}")
    s = report["summary"]
    lines.append(f"median (min-max): OOM kills {s['oom_kills']['median']:g} ({s['oom_kills']['min']:g}-"
                 f"{s['oom_kills']['max']:g}), worker crashes {s['worker_crashes']['median']:g} "
                 f"({s['worker_crashes']['min']:g}-{s['worker_crashes']['max']:g}), 503 share "
                 f"{s['share_503']['median']:.4f} ({s['share_503']['min']:.4f}-{s['share_503']['max']:.4f})")
    lines.append(f"JSON: {report['out']}")
    return "\n".join(lines)


def result_line(result: dict[str, float]) -> str:
    return "RESULT " + " ".join(f"{k}={v:g}" for k, v in result.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit-mb", type=int, default=600, help="the cgroup's memory limit (default 600)")
    p.add_argument("--seconds", type=float, default=120.0, help="traffic per run (default 120, quick 60)")
    p.add_argument("--runs", type=int, default=3, help="runs (default 3, quick 1)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="build cache of the demo repository")
    p.add_argument("--out", type=Path, default=HERE / "results" / "memory_cgroup.json")
    a = p.parse_args(argv)
    seconds, runs = (60.0, 1) if a.quick else (a.seconds, a.runs)
    build_zoo(a.zoo, progress=lambda line: None)  # idempotent: a complete cache is left untouched
    out = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="letmesh-cgroup-") as tmp:
            repo = Path(tmp) / "repository"
            shutil.copytree(a.zoo, repo)
            out.append(one_run(repo, a.limit_mb, seconds, Path(tmp)))
    keys = ("oom_kills", "failed_charges", "worker_crashes", "worker_crashes_from_first_move", "share_503",
            "moves_making_room")
    summary = {k: spread([float(r[k]) for r in out]) for k in keys}
    report = {"benchmark": "memory_cgroup", "options": {"limit_mb": a.limit_mb, "seconds": seconds, "runs": runs},
              "runs": out, "summary": summary, "out": str(a.out),
              "result": {f"{k}_median": summary[k]["median"] for k in keys}}
    return publish(report, a.out, render, result_line)


if __name__ == "__main__":
    sys.exit(main())
