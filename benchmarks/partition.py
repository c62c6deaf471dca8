"""Network partitions across hosts: an agent cut and the controller cut under steady load.

Builds the multi-host lab of tests/multihost (a bridge and one network namespace per host:
controller, gateway, three agents), starts each role with the command a user runs, and sends
steady open-loop load from this namespace to the gateway. Per run it cuts the link of the agent
serving the model (60 s; quick 15 s) and then the controller's, each silently at the bridge, and
measures the requests sent / answered / failed, the seconds to detect the loss, to re-place the
model on another agent and to resume after the heal, and the worker processes the controller
does not know about. Last, a host with no credentials runs ``letmesh agent``: whether the
controller accepts it (rogue_accepted; it must be 0 once the mesh authenticates its peers).
Prints a table, writes JSON, ends with one ``RESULT`` line. Needs root (network namespaces).

Run: ``python benchmarks/partition.py [--quick]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.support.report import publish  # noqa: E402
from letmesh.zoo import build_trivial  # noqa: E402
from tests.multihost.faults import FaultReport, agent_cut, controller_cut  # noqa: E402
from tests.multihost.mesh import QUICK_PROFILING, NetMesh, alive_agents, no_extra_args  # noqa: E402
from tests.multihost.netns import NetnsLab, unavailable_reason  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "partition.json"
AGENTS = ["a1", "a2", "a3"]
FIGURES = ("sent", "answered", "failed", "unanswered", "detect_s", "replace_s", "resume_s", "serving_resumed_s")
# The controller's own view is out of reach while it is cut, and nothing is re-placed for it.
NOT_APPLICABLE = {"controller_cut": {"detect_s", "replace_s"}}


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    quick: bool
    runs: int
    agent_cut_s: float
    controller_cut_s: float
    rate_rps: float
    rogue_wait_s: float
    out: Path


def parse_options(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter cuts, one run, same code path")
    p.add_argument("--runs", type=int, help="agent and controller cuts per fault (default 3, quick 1)")
    p.add_argument("--agent-cut-s", type=float, help="seconds the agent's link stays cut (default 60, quick 15)")
    p.add_argument("--controller-cut-s", type=float, help="seconds the controller's link stays cut (default 60, quick 15)")
    p.add_argument("--rate-rps", type=float, default=20.0, help="steady open-loop request rate (default 20)")
    p.add_argument("--rogue-wait-s", type=float, default=30.0,
                   help="how long a host with no credentials gets to register (default 30)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    a = p.parse_args(argv)
    for name in ("runs", "agent_cut_s", "controller_cut_s", "rate_rps", "rogue_wait_s"):
        value = getattr(a, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    quick = a.quick
    return Options(quick=quick, runs=a.runs or (1 if quick else 3),
                   agent_cut_s=a.agent_cut_s or (15.0 if quick else 60.0),
                   controller_cut_s=a.controller_cut_s or (15.0 if quick else 60.0),
                   rate_rps=a.rate_rps, rogue_wait_s=a.rogue_wait_s, out=a.out)


# --- measuring --------------------------------------------------------------------------


def role_args(role: str, host: str) -> list[str]:
    """Extra flags per role and host of the mesh proper (credentials, once the mesh has them)."""
    return no_extra_args(role, host)


def figures(report: FaultReport) -> dict[str, Any]:
    """One fault's figures: requests over the whole window (cut, heal and recovery) and seconds."""
    total = report.total
    return {"sent": total.sent, "answered": total.sent - total.unanswered, "ok": total.ok, "failed": total.failed,
            "unanswered": total.unanswered, "statuses": total.statuses, "crossed": total.crossed,
            "failed_during_cut": report.during.failed, "failed_after_heal": report.after.failed,
            "detect_s": report.detect_s, "replace_planned_s": report.replace_planned_s, "replace_s": report.replace_s,
            "resume_s": report.resume_s, "serving_resumed_s": report.serving_resumed_s,
            "orphans": len(report.orphans), "started_after_heal": report.started_after_heal,
            "host": report.host, "cut_s": report.cut_s, "notes": report.notes}


def across(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Median and min/max across runs of every figure; a figure missing in any run (never
    happened) is None, so a fault that was never resumed is not hidden by one that was."""
    out: dict[str, dict[str, float | None]] = {}
    for key in FIGURES:
        values = [r[key] for r in runs]
        if any(v is None for v in values):
            out[key] = {"median": None, "min": None, "max": None, "missing": sum(v is None for v in values)}
        else:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


async def rogue_accepted(lab: NetnsLab, mesh: NetMesh, wait_s: float) -> bool:
    """Start ``letmesh agent`` on a new host with no credentials; True if the controller lists it alive."""
    lab.add_host("rogue")
    # No key of the mesh's keyring: plaintext (it must say --insecure to dial beyond loopback), as
    # a host that merely reaches the controller's address would try.
    rogue = NetMesh(lab, mesh.repository, mesh.state_root / "rogue", controller_host=mesh.controller_host,
                    gateway_host=mesh.gateway_host, env=mesh.env, log_level=mesh.log_level, keys=False)
    proc = rogue.start_agent("rogue")
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and proc.poll() is None:
            status = await asyncio.to_thread(mesh.status, 1.0)
            if status is not None and "rogue" in alive_agents(status):
                return True
            await asyncio.sleep(0.25)
        if proc.poll() is not None:
            print(f"the rogue agent exited with code {proc.returncode} before it was accepted", flush=True)
        return False
    finally:
        lab.stop(proc)


async def measure_async(opts: Options, lab: NetnsLab, mesh: NetMesh) -> dict[str, Any]:
    agent_runs, controller_runs = [], []
    for run in range(opts.runs):
        report = await agent_cut(mesh, cut_s=opts.agent_cut_s, rate_rps=opts.rate_rps)
        print("\n".join(report.rows()), flush=True)
        agent_runs.append(figures(report))
        report = await controller_cut(mesh, cut_s=opts.controller_cut_s, rate_rps=opts.rate_rps)
        print("\n".join(report.rows()), flush=True)
        controller_runs.append(figures(report))
    accepted = await rogue_accepted(lab, mesh, opts.rogue_wait_s)
    return {"agent_cut": {"runs": agent_runs, "summary": across(agent_runs)},
            "controller_cut": {"runs": controller_runs, "summary": across(controller_runs)},
            "rogue_accepted": int(accepted)}


def measure(opts: Options) -> dict[str, Any]:
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"partition benchmark: {reason}")
    env = environment()
    with tempfile.TemporaryDirectory(prefix="letmesh-partition-") as tmp:
        root = Path(tmp)
        build_trivial(root / "repository")
        with NetnsLab(["ctl", "gw", *AGENTS], log_dir=root / "logs") as lab:
            mesh = NetMesh(lab, root / "repository", root / "state", env=QUICK_PROFILING, role_args=role_args,
                           log_level="WARNING")
            started = time.monotonic()
            try:
                mesh.start(AGENTS)
                formed_s = time.monotonic() - started
                faults = asyncio.run(measure_async(opts, lab, mesh))
            finally:
                codes = mesh.stop()
    agent, controller = faults["agent_cut"], faults["controller_cut"]
    lost = sum(r["unanswered"] for r in (*agent["runs"], *controller["runs"]))
    orphans = sum(r["orphans"] for r in (*agent["runs"], *controller["runs"]))
    return {
        "benchmark": "partition", "options": {**asdict(opts), "out": str(opts.out)}, "environment": env, "formed_s": formed_s,
        "exit_codes": codes, **faults,
        "result": {
            "lost": lost,
            "failed_agent_cut": agent["summary"]["failed"]["median"],
            "resume_s_agent": agent["summary"]["resume_s"]["median"],
            "resume_s_controller": controller["summary"]["resume_s"]["median"],
            "orphans": orphans,
            "rogue_accepted": faults["rogue_accepted"],
        },
    }


# --- report -----------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_at_start": list(os.getloadavg()),
            "note": "every host is a network namespace on this machine; all roles share these cores"}


def _cell(s: dict[str, float | None]) -> str:
    if s["median"] is None:
        return f"never ({s['missing']} run{'s' if s['missing'] != 1 else ''})"
    if s["min"] == s["max"]:
        return f"{s['median']:g}"
    return f"{s['median']:g} [{s['min']:g}-{s['max']:g}]"


def render(report: dict[str, Any]) -> str:
    o = report["options"]
    lines = [f"Partition benchmark: {o['runs']} run(s); agent cut {o['agent_cut_s']:g} s, controller cut "
             f"{o['controller_cut_s']:g} s; {o['rate_rps']:g} req/s open loop; mesh formed in {report['formed_s']:.1f} s",
             "  median of runs [min-max]; requests counted from the load's start to 2 s after the mesh resumed;",
             "  detect / re-place from the cut; resume / serving (requests succeed for good) from the heal, negative: before it", ""]
    header = ["fault", *FIGURES]
    rows = [[name.replace("_", " "), *("n/a" if k in NOT_APPLICABLE.get(name, ()) else _cell(report[name]["summary"][k])
                                       for k in FIGURES)]
            for name in ("agent_cut", "controller_cut")]
    widths = [max(len(r[i]) for r in (header, *rows)) + 2 for i in range(len(header))]
    for r in (header, *rows):
        lines.append("  " + "".join(c.ljust(w) for c, w in zip(r, widths)))
    lines += ["", f"  orphan workers: {report['result']['orphans']}; rogue host accepted as an agent: "
                  f"{'yes' if report['rogue_accepted'] else 'no'}; exit codes {report['exit_codes']}",
              f"  JSON: {o['out']}"]
    return "\n".join(lines)


def result_line(result: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "never"
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return "RESULT " + " ".join(f"{k}={fmt(v)}" for k, v in result.items())


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    return publish(measure(opts), opts.out, render, result_line)


if __name__ == "__main__":
    sys.exit(main())
