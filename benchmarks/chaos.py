"""Chaos: every fault class under steady open-loop load, with exactly one recorded outcome per request.

Starts a mesh on 127.0.0.1 and, for each fault class in turn, drives steady load (the ``digits``
family plus ``digits-cnn`` by name), injects the fault at a fixed time and records what every request
got: status, latency from its scheduled send time, whether it came after deadline + 50 ms, Retry-After
on 503/429, or no answer within the client timeout. Classes: kill -9 of a worker, the agent, the
controller, the gateway (roles the launcher does not restart are restarted after a pause, and the
recovery is measured); SIGSTOP of a worker; SIGTERM of the gateway; poisoned control messages and
poisoned HTTP bodies; a 5x overload burst (to ``synth-large``, a variant costly per request built
beside the digits models, so that 5x is a rate the client can send); a repository with a
truncated or a corrupted artifact beside healthy variants. Then a fuzz phase (mutated HTTP bodies and control frames) with the RSS of
every role before and after. Reports what happened; asserts nothing. Every process it starts is
stopped and checked for in /proc.

Figures per class: ``unanswered`` (no answer within the client timeout: the client was left
waiting), ``dropped`` (the connection closed mid-request with no answer: the client knows at once,
as when the gateway holding it is killed), ``refused`` (could not connect), ``client_errors`` (any
other failure on the client's side), ``server_errors`` (5xx answers other than 503 and 504), ``late_200`` and
``late`` (a 200, or any answer, after deadline + 50 ms from the scheduled send), ``late_send``
(any answer after deadline + 50 ms from the moment the client actually sent it: what is left of
``late`` once the client's own lag is taken out), ``recovery_s`` (fault to
the first of 20 consecutive 200s), ``settled_s`` (fault to the run of 200s that lasts the phase),
``crashes`` (role exits nobody caused, actor crashes a role survived in-process, worker restarts
beyond the intended one), ``after`` (what it took to get the mesh healthy again). A class whose
client fell more than 100 ms behind its schedule is marked client-bound: on a small machine the load
client competes with the mesh for the same cores.

Run: ``python benchmarks/chaos.py [--quick]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.support.chaos_faults import (  # noqa: E402
    COSTLY,
    COSTLY_DEPTH,
    GRACE_MS,
    Options,
    bad_artifact_phase,
    faults,
    fuzz_phase,
    overload_phase,
    workload,
)
from benchmarks.support.chaos_mesh import MARKER_ENV as MESH_MARKER, MeshUnderTest, run_phase  # noqa: E402
from benchmarks.support import procfs  # noqa: E402
from benchmarks.support.report import write_json  # noqa: E402
from letmesh.costly import build_costly  # noqa: E402
from letmesh.zoo import build_trivial, build_zoo  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "chaos.json"
FAULTS = ("kill_worker", "stop_worker", "kill_agent", "kill_controller", "kill_gateway", "term_gateway",
          "poison_context", "poison_nan", "poison_demand")
CLASSES = ("baseline", *FAULTS, "overload", "bad_truncated", "bad_flipped")


def parse_options(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter phases and a small fuzz, same code path")
    p.add_argument("--classes", default=",".join(CLASSES), help=f"comma-separated subset of {', '.join(CLASSES)}")
    p.add_argument("--phase-s", type=float, help="seconds of load per class (default 20, quick 10)")
    p.add_argument("--fault-at-s", type=float, help="seconds into a phase the fault lands (default 5, quick 2)")
    p.add_argument("--down-s", type=float, help="seconds a killed or stopped role stays down before it is "
                   "restarted or resumed (default 3, quick 1.5)")
    p.add_argument("--overload-s", type=float, help="seconds of the overload burst (default 20, quick 4)")
    p.add_argument("--overload-factor", type=float, default=5.0, help="burst rate over the sustainable rate")
    p.add_argument("--max-rate", type=float, default=500.0, help="cap on the burst rate (requests/s)")
    p.add_argument("--deadline-ms", type=float, default=200.0, help="letmesh_slo_ms of every request")
    p.add_argument("--family-rps", type=float, default=50.0, help="steady rate to the family")
    p.add_argument("--named-rps", type=float, default=20.0, help="steady rate to one variant by name")
    p.add_argument("--client-timeout-s", type=float, default=10.0, help="a request unanswered this long is lost")
    p.add_argument("--fuzz-bodies", type=int, help="mutated HTTP bodies (default 100000, quick 3000)")
    p.add_argument("--fuzz-frames", type=int, help="mutated control frames (default 20000, quick 2000)")
    p.add_argument("--repo", choices=("digits", "trivial"), default="digits",
                   help="demo repository (digits family) or the identity model only (fast; no bad-artifact classes)")
    p.add_argument("--repository", type=Path, help="an already built repository of that kind, reused as is")
    p.add_argument("--epochs-scale", type=float, default=0.2, help="training length when building digits")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--keep", action="store_true", help="keep the work folder (repository, state, the roles' logs)")
    p.add_argument("--log-level", default="WARNING", help="the roles' log level (their logs are kept with --keep)")
    a = p.parse_args(argv)
    classes = tuple(c for c in a.classes.split(",") if c.strip())
    unknown = set(classes) - set(CLASSES)
    if unknown:
        p.error(f"unknown classes: {', '.join(sorted(unknown))}")
    if a.repo == "trivial":
        classes = tuple(c for c in classes if not c.startswith("bad_"))
    q = a.quick
    phase_s = a.phase_s or (10.0 if q else 20.0)
    fault_at_s = a.fault_at_s if a.fault_at_s is not None else (2.0 if q else 5.0)
    if not 0 <= fault_at_s < phase_s:
        p.error("--fault-at-s must lie within the phase")
    return Options(
        quick=q, classes=classes, phase_s=phase_s, fault_at_s=fault_at_s,
        down_s=a.down_s if a.down_s is not None else (1.5 if q else 3.0),
        overload_s=a.overload_s or (4.0 if q else 20.0), overload_factor=a.overload_factor,
        max_rate_rps=a.max_rate, deadline_ms=a.deadline_ms, family_rps=a.family_rps, named_rps=a.named_rps,
        client_timeout_s=a.client_timeout_s, heal_timeout_s=30.0 if q else 45.0,
        start_timeout_s=90.0 if q else 180.0, bad_start_timeout_s=45.0 if q else 60.0,
        fuzz_bodies=a.fuzz_bodies if a.fuzz_bodies is not None else (3000 if q else 100_000),
        fuzz_frames=a.fuzz_frames if a.fuzz_frames is not None else (2000 if q else 20_000),
        repo=a.repo, repository=a.repository, epochs_scale=a.epochs_scale, out=a.out, keep=a.keep,
        log_level=a.log_level,
    )


# --- report ------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(classes: list[dict[str, Any]], fuzz: dict[str, Any] | None) -> None:
    head = (f"{'class':<16}{'sent':>6}{'200':>6}  {'other answers':<26}{'unans':>6}{'drop':>5}{'refus':>6}{'late200':>8}"
            f"{'late':>6}{'l.send':>7}{'max_s':>7}{'recov_s':>8}{'settle':>7}{'crash':>6}  after")
    print(head)
    print("-" * len(head))
    for c in classes:
        other = " ".join(f"{k}x{n}" for k, n in c["statuses"].items() if k.isdigit() and k != "200") or "-"
        print(f"{c['fault']:<16}{c['sent']:>6}{c['ok']:>6}  {other:<26}{c['unanswered']:>6}{c['dropped']:>5}{c['refused']:>6}"
              f"{c['late_200']:>8}{c['late_answers']:>6}{c['late_from_send']:>7}{_fmt(c['max_answer_s'], 2):>7}"
              f"{_fmt(c['recovery_s'], 2):>8}{_fmt(c['settled_s'], 2):>7}{c['crashes']:>6}  {c['after']}")
    for c in classes:
        if c["client_bound"]:
            print(f"  {c['fault']}: CLIENT-BOUND, the client fell behind its schedule (p99 lag "
                  f"{c['client_lag_p99_ms']:.0f} ms): its timeouts and late answers are partly the client's")
        if c["late_answers"] > c["late_from_send"]:
            print(f"  {c['fault']}: {c['late_answers'] - c['late_from_send']} of {c['late_answers']} late answers "
                  f"were late only counted from their scheduled send (client lag up to "
                  f"{c['client_lag_max_ms']:.0f} ms)")
        if c["late_answers"] and c["gateway_loop_lag_max_ms"] is not None:
            print(f"  {c['fault']}: the gateway's event loop ran up to {c['gateway_loop_lag_max_ms']:.0f} ms late "
                  "in this class (sampled once a second)")
        if c["shed_without_retry_after"]:
            print(f"  {c['fault']}: {c['shed_without_retry_after']} 503/429 without Retry-After")
        if c["unexpected_exits"]:
            print(f"  {c['fault']}: exits nobody caused: {c['unexpected_exits']}")
        if c["actor_crashes"]:
            print(f"  {c['fault']}: actors crashed (restarted in-process): {c['actor_crashes']}; {c['exceptions'][:3]}")
    if fuzz:
        h, ctl = fuzz["http"], fuzz["control"]
        print(f"\nfuzz: {h['bodies']} HTTP bodies in {h['elapsed_s']:.0f} s: {h['statuses']}; "
              f"{ctl['frames']} control frames ({ctl['replies']} replies); role exits {fuzz['role_exits'] or 'none'}; "
              f"actor crashes {fuzz['actor_crashes'] or 'none'}; "
              f"after: {fuzz['health_after'] or 'healthy'}")
        print("RSS growth (MB): " + ", ".join(f"{k} {v:+.1f}" for k, v in fuzz["rss_growth_mb"].items()))


def headline(classes: list[dict[str, Any]], fuzz: dict[str, Any] | None) -> dict[str, Any]:
    faulted = [c for c in classes if c["fault"] != "none"]
    recovered = [c["recovery_s"] for c in faulted if c["recovery_s"] is not None]
    return {
        "unanswered": sum(c["unanswered"] for c in classes),
        "dropped": sum(c["dropped"] for c in classes),
        "late_200": sum(c["late_200"] for c in classes),
        "late": sum(c["late_answers"] for c in classes),
        "late_send": sum(c["late_from_send"] for c in classes),
        "refused": sum(c["refused"] for c in classes),
        "client_errors": sum(c["client_errors"] for c in classes),
        # Answers that are an error of the mesh's own: 5xx other than a shed's 503 and a passed
        # deadline's 504 (both designed answers, counted under their own figures).
        "server_errors": sum(n for c in classes for k, n in c["statuses"].items()
                             if k.isdigit() and int(k) >= 500 and k not in ("503", "504")),
        "crashes": sum(c["crashes"] for c in classes) + (fuzz["crashes"] if fuzz else 0),
        "leak_mb": fuzz["leak_mb"] if fuzz else None,
        "recovery_s_max": max(recovered, default=None),  # over the classes that recovered within their phase
        "not_recovered": sum(1 for c in faulted if c["recovery_s"] is None),
        "settled_s_max": max((c["settled_s"] for c in faulted if c["settled_s"] is not None), default=None),
        "not_settled": sum(1 for c in faulted if c["settled_s"] is None),
        "client_bound": sum(1 for c in classes if c["client_bound"]),
        "unhealthy_after": sum(1 for c in classes if c["after"] != "ok"),
        "fuzz_5xx": fuzz["http"]["http_5xx"] if fuzz else None,
    }


def _after(heal: dict[str, Any]) -> str:
    if not heal["healthy"]:
        return f"UNHEALTHY: {heal['problem']}"
    return "; ".join(heal["steps"]) or "ok"


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="letmesh-chaos-"))
    classes: list[dict[str, Any]] = []
    fuzz: dict[str, Any] | None = None
    left: list[int] = []
    began = time.monotonic()
    try:
        repo = opts.repository
        if repo is None:
            repo = work_dir / "repo"
            print(f"building the {opts.repo} repository ...", flush=True)
            if opts.repo == "digits":
                build_zoo(repo, epochs_scale=opts.epochs_scale, progress=lambda line: None)
                build_costly(repo, variants=((COSTLY, 0.95, COSTLY_DEPTH),), slo_ms=opts.deadline_ms, max_batch=8)
            else:
                build_trivial(repo, progress=lambda line: None)
        work = workload(repo, opts.repo, opts.deadline_ms)
        target = MeshUnderTest(repository=repo, state_dir=work_dir / "state", log_level=opts.log_level)
        try:
            problem = target.start(opts.start_timeout_s) or target.wait_healthy(opts.heal_timeout_s)
            if problem:
                print(f"chaos: the mesh did not come up: {problem}", file=sys.stderr)
                return 1
            table = faults(opts, work)
            for name in opts.classes:
                if name.startswith("bad_"):
                    continue
                print(f"# {name}", flush=True)
                if name == "overload":
                    result = overload_phase(target, opts, work)
                else:
                    result = run_phase(target, work.streams(opts), table.get(name), duration_s=opts.phase_s,
                                       fault_at_s=opts.fault_at_s, deadline_ms=opts.deadline_ms,
                                       client_timeout_s=opts.client_timeout_s)
                heal_began = time.monotonic()
                result["heal"] = target.heal(opts.heal_timeout_s)
                result["heal"]["seconds"] = round(time.monotonic() - heal_began, 1)
                result["after"] = _after(result["heal"])
                classes.append(result)
            if opts.fuzz_bodies or opts.fuzz_frames:
                print("# fuzz", flush=True)
                fuzz = fuzz_phase(target, opts, work)
        finally:
            left += target.stop()
        for how in ("truncated", "flipped"):
            if f"bad_{how}" in opts.classes:
                print(f"# bad_{how}", flush=True)
                result = bad_artifact_phase(how, repo, work_dir, opts, work)
                result["after"] = result["notes"]["health_after"] or "ok"
                left += result["notes"]["left_behind"]
                classes.append(result)
    finally:
        left += procfs.processes_mentioning(f"{MESH_MARKER}={work_dir}")
        for pid in set(left):  # reported below; not left running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if opts.keep:
            print(f"kept: {work_dir} (the roles' logs are under state/logs)", flush=True)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    result = headline(classes, fuzz)
    report = {
        "benchmark": "chaos",
        "environment": {"cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                        "load_avg": os.getloadavg(), "python": sys.version.split()[0]},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars_of(opts).items()},
        "grace_ms": GRACE_MS,
        "wall_s": round(time.monotonic() - began, 1),
        "classes": classes,
        "fuzz": fuzz,
        "left_behind": sorted(set(left)),
        "result": result,
    }
    print()
    print_table(classes, fuzz)
    print(f"\nprocesses left behind: {sorted(set(left)) or 'none'}; wall {report['wall_s']:.0f} s; JSON: {opts.out}")
    write_json(opts.out, report)
    print("RESULT " + " ".join(f"{k}={_fmt(v, 2)}" for k, v in result.items()))
    return 0


def vars_of(opts: Options) -> dict[str, Any]:
    return {name: getattr(opts, name) for name in opts.__dataclass_fields__}


if __name__ == "__main__":
    raise SystemExit(main())
