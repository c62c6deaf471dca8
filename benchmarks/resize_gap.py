"""Serving gap while the mesh resizes its partitions make-before-break, under steady load.

Starts a whole mesh on loopback serving two variants of the demo repository, waits for the
device profiles and the first plan, then drives closed-loop load on one variant and alternates
operator re-plans between the "temporal" policy (one whole-device worker serving both) and the
"gpulet" policy (one 1-core gpu-let each), so every re-plan resizes the partitions. For every
resize it reports the serving gap (the longest interval between consecutive successful
completions, from the command until shortly after the old workers stopped) against the
steady-state inter-completion intervals measured just before, the requests that failed and why,
latency and throughput during the switch, and how long the new workers took to come up. It follows
every worker's state and the agent's liveness in the controller's status, so a failure can be
traced to its cause. Prints a table, writes JSON, ends with one ``RESULT`` line. Asserts nothing about speed.

Run: ``python benchmarks/resize_gap.py [--quick]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.support.closed_loop import ClosedLoop  # noqa: E402
from benchmarks.support.overhead_report import environment, result_line  # noqa: E402
from benchmarks.support.report import plain, write_json  # noqa: E402
from benchmarks.support.resize_report import (GSLICE_GAP_MS, POLICY_CYCLE, ResizeEvents,  # noqa: E402
                                              analyse_resize, describe_layout, render, summarise)
from controller.registry import LEAVING  # noqa: E402
from letmesh.launcher import LocalMesh  # noqa: E402
from letmesh.profiles import wait_for_profiles  # noqa: E402
from letmesh.status import ask_controller, fetch_status  # noqa: E402
from letmesh.zoo import MANIFEST, build_zoo  # noqa: E402
from protocol.message import Replan, ReplanReply, StatusReply  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "resize_gap.json"
DEFAULT_ZOO = HERE / "results" / "zoo"  # a build cache: git-ignored, rebuilt only when incomplete
# Only the operator's re-plans (no periodic one, none on a demand jump), short profiling, a short
# drain. Accuracy scaling is off: when a plan leaves demand unserved it puts its own layout in
# place of the policy's, and the resize under test is the policy's.
MESH_ENV = {
    "LETMESH_CONTROLLER_REPLAN_PERIOD_S": "3600",
    "LETMESH_CONTROLLER_FAST_REPLAN_S": "3600",
    "LETMESH_CONTROLLER_ACCURACY_SCALING": "0",
    "LETMESH_CONTROLLER_PROFILE_REPEATS": "5",
    "LETMESH_CONTROLLER_PROFILE_COLOCATION": "0",
    "LETMESH_CONTROLLER_STOP_DRAIN_S": "1",
}
# Two variants: "gpulet" gives each a 1-core gpu-let, "temporal" one 2-core worker serving both.
# Both are so cheap that a noisy profile cannot push either out of the temporal plan; with a costly
# one (digits-cnn) a busy machine's 2-core profile can make the temporal plan drop the other.
DEFAULT_MODELS = ("identity", "digits-linear")
NOTHING_RETIRED_AFTER_S = 2.0  # the controller marks retired workers draining within a tick (0.5 s)
NO_NEW_WORKER_S = 10.0  # a re-plan shows its new workers within a tick; none by then: same layout
EXITED = frozenset({"gone", "stopped", "crashed"})  # a retired worker in one of these has left

Say = Callable[[str], None]


class SetupError(Exception):
    """The repository lacks the requested models, or the mesh never reached its first plan."""


class ResizeError(Exception):
    """A re-plan was refused, changed nothing, or did not finish in time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    quick: bool
    resizes: int
    clients: int
    variant: str
    models: tuple[str, ...]  # empty: every model of the repository
    warmup_s: float
    steady_s: float
    tail_s: float
    slo_ms: float | None
    poll_s: float
    transition_timeout_s: float
    profile_timeout_s: float
    repository: Path | None
    zoo: Path
    out: Path


def parse_options(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter resizes (about a minute), same code path")
    p.add_argument("--resizes", type=int, help="re-plans under load, alternating temporal/gpulet (default 6, quick 2)")
    p.add_argument("--clients", type=int, default=4, help="closed-loop clients (default 4)")
    p.add_argument("--variant", default="identity", help="the variant under load (default identity: almost "
                   "no compute, so the gap is the mesh's, not the model's)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated variants the mesh serves, "
                   f"or 'all' (default {','.join(DEFAULT_MODELS)}; the temporal policy puts at most three "
                   "variants on a device, so with 'all' two go unserved after each temporal re-plan)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="load before the first steady phase")
    p.add_argument("--steady-s", type=float, help="steady phase before each resize (default 8, quick 4)")
    p.add_argument("--tail-s", type=float, default=2.0, help="the switch window lasts until this long after "
                   "the old workers stopped")
    p.add_argument("--slo-ms", type=float, help="send parameter letmesh_slo_ms (default: none, so the "
                   "model's default deadline applies)")
    p.add_argument("--poll-s", type=float, default=0.05, help="controller status poll interval during a resize")
    p.add_argument("--transition-timeout-s", type=float, default=60.0, help="longest a resize may take")
    p.add_argument("--profile-timeout-s", type=float, default=180.0, help="longest profiling may take")
    p.add_argument("--repository", type=Path, help="the model repository to take the models from (default: "
                   "the demo repository, built once into --zoo)")
    p.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="build cache of the demo repository")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    a = p.parse_args(argv)
    for name in ("resizes", "clients", "steady_s", "slo_ms", "poll_s", "transition_timeout_s", "profile_timeout_s"):
        value = getattr(a, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("warmup_s", "tail_s"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    models = () if a.models == "all" else tuple(m.strip() for m in a.models.split(",") if m.strip())
    if models and a.variant not in models:
        p.error(f"--variant {a.variant} is not among --models {a.models}")
    return Options(
        quick=a.quick,
        resizes=a.resizes or (2 if a.quick else 6),
        clients=a.clients,
        variant=a.variant,
        models=models,
        warmup_s=a.warmup_s,
        steady_s=a.steady_s or (4.0 if a.quick else 8.0),
        tail_s=a.tail_s,
        slo_ms=a.slo_ms,
        poll_s=a.poll_s,
        transition_timeout_s=a.transition_timeout_s,
        profile_timeout_s=a.profile_timeout_s,
        repository=a.repository,
        zoo=a.zoo,
        out=a.out,
    )


# --- the request ------------------------------------------------------------------------------


def request_bytes(port: int, repository: Path, variant: str, slo_ms: float | None) -> tuple[bytes, str]:
    """One OIP JSON request for ``variant`` (a batch of one, shaped by its manifest) and its description."""
    manifest = repository / variant / MANIFEST
    if not manifest.is_file():
        raise SetupError(f"the served repository {repository} has no variant {variant!r}")
    spec = json.loads(manifest.read_text())["inputs"][0]
    shape = [1 if d < 0 else d for d in spec["shape"]]
    x = np.linspace(0.0, 1.0, math.prod(shape), dtype=np.float32)
    body: dict[str, Any] = {"inputs": [{"name": spec["name"], "datatype": spec["datatype"], "shape": shape,
                                        "data": x.tolist()}]}
    if slo_ms is not None:
        body["parameters"] = {"letmesh_slo_ms": slo_ms}
    raw = json.dumps(body).encode()
    head = (f"POST /v2/models/{variant}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n").encode()
    return head + raw, f"{variant} {spec['datatype']}{shape} (OIP JSON)"


# --- the mesh's layout and one resize ------------------------------------------------------------


def layout_of(status: StatusReply, variant: str) -> list[dict[str, Any]]:
    return [{"worker": w.worker_id, "state": w.state, "cores": list(w.partition.cores), "variants": list(w.variants),
             "serves_load": variant in w.variants} for w in status.workers]


def settled(status: StatusReply) -> bool:
    """Every worker ready: nothing starting, draining or stopping."""
    return bool(status.workers) and all(w.state == "ready" for w in status.workers)


async def wait_first_plan(address: str, timeout_s: float, say: Say) -> StatusReply:
    """Force the first plan (the profiles are in) and wait until it is in force, steady for a second.

    With no periodic re-plan, the controller's own attempt at start-up came before the profiles,
    so the operator's command is what puts the first plan in place. A plan that matches the
    initial placement changes nothing; one that differs shows its new workers within a tick.
    """
    reply = await asyncio.to_thread(ask_controller, address, Replan(policy=POLICY_CYCLE[-1]), ReplanReply)
    if not reply.accepted:
        raise SetupError(f"controller refused the first plan: {reply.message}")
    await asyncio.sleep(1.0)
    deadline = time.monotonic() + timeout_s
    stable_since = None
    while True:
        status = await asyncio.to_thread(fetch_status, address)
        now = time.monotonic()
        if settled(status):
            stable_since = stable_since or now
            if now - stable_since >= 1.0:
                say(f"first plan in force: {', '.join(w.worker_id for w in status.workers)}")
                return status
        else:
            stable_since = None
        if now > deadline:
            raise SetupError(f"the first plan was not in force within {timeout_s:.0f} s: "
                             f"{[(w.worker_id, w.state) for w in status.workers]}")
        await asyncio.sleep(0.1)


async def resize(address: str, policy: str, variant: str, opts: Options) -> ResizeEvents:
    """Send Replan(policy) and follow the transition until the old workers are gone."""
    before = await asyncio.to_thread(fetch_status, address)
    old = {w.worker_id for w in before.workers}
    ev = ResizeEvents(policy=policy, command_ns=time.monotonic_ns(), before=layout_of(before, variant))
    reply = await asyncio.to_thread(ask_controller, address, Replan(policy=policy), ReplanReply)
    ev.reply_ns = time.monotonic_ns()
    if not reply.accepted:
        raise ResizeError(f"controller refused re-plan {policy!r}: {reply.message}")
    retired: set[str] = set()
    while True:
        status = await asyncio.to_thread(fetch_status, address)
        now = time.monotonic_ns()
        ev.polls += 1
        for agent in status.agents:
            ev.agent_silence_max_s = max(ev.agent_silence_max_s, agent.last_seen_s)
            if not agent.alive and not ev.agent_lost_ns:
                ev.agent_lost_ns = now
        here = {w.worker_id: w.state for w in status.workers}
        for worker_id in here.keys() | ev.states_seen.keys():
            seen = ev.states_seen.setdefault(worker_id, [])
            state = here.get(worker_id, "gone")
            if not seen or seen[-1][0] != state:
                seen.append((state, now))
        new = [w for w in status.workers if w.worker_id not in old]
        retired |= {w for w in old if w not in here or here[w] in LEAVING}
        all_ready = bool(new) and all(w.state == "ready" for w in new)
        if new and not ev.new_seen_ns:
            ev.new_seen_ns = now
        if all_ready and not ev.new_ready_ns:
            ev.new_ready_ns = now
        if ev.new_ready_ns and retired and not ev.switch_ns:
            ev.switch_ns = now
        # Done once the retired workers are gone. A plan that only adds workers retires none,
        # which is known only after the controller has had a few ticks to mark some draining.
        only_added = not retired and ev.new_ready_ns and now - ev.new_ready_ns > NOTHING_RETIRED_AFTER_S * 1e9
        exited = all(here.get(w, "gone") in EXITED for w in retired)  # "lost" while stopping is not exited
        if all_ready and exited and not any(s in LEAVING for s in here.values()) and (retired or only_added):
            ev.done_ns = now
            ev.switch_ns = ev.switch_ns or ev.new_ready_ns  # nothing retired: the new workers simply join
            ev.after = layout_of(status, variant)
            ev.new_workers = sorted(w.worker_id for w in new)
            ev.retired_workers = sorted(retired)
            return ev
        if not new and now - ev.command_ns > NO_NEW_WORKER_S * 1e9:
            raise ResizeError(f"re-plan {policy!r} started no new worker within {NO_NEW_WORKER_S:.0f} s "
                              "(the plan is the layout already serving?)")
        if now - ev.command_ns > opts.transition_timeout_s * 1e9:
            raise ResizeError(f"re-plan {policy!r} did not finish within {opts.transition_timeout_s:.0f} s: "
                              f"{sorted(here.items())}")
        await asyncio.sleep(opts.poll_s)


# --- the run -----------------------------------------------------------------------------------


def serving_repository(opts: Options, dest: Path, say: Say) -> Path:
    """The repository the mesh serves: the chosen models of the source repository, copied to ``dest``."""
    source = opts.repository
    if source is None:
        build_zoo(opts.zoo, progress=lambda line: None)  # idempotent: a complete cache is left untouched
        source = opts.zoo
    if not opts.models:
        return source
    missing = [m for m in opts.models if not (source / m / MANIFEST).is_file()]
    if missing:
        raise SetupError(f"{source} has no variant {', '.join(missing)}")
    for name in opts.models:
        shutil.copytree(source / name, dest / name)
    say(f"serving {', '.join(opts.models)} from {source}")
    return dest


async def drive(mesh: LocalMesh, request: bytes, opts: Options, say: Say) -> dict[str, Any]:
    """Steady load, and the resizes one after another, each after a steady phase."""
    address = mesh.controller_address
    load = ClosedLoop(mesh.http_port, request, opts.clients)
    started = time.monotonic()
    load.start()
    windows: list[tuple[ResizeEvents, int, int]] = []
    try:
        await asyncio.sleep(opts.warmup_s)
        for i in range(opts.resizes):
            policy = POLICY_CYCLE[i % len(POLICY_CYCLE)]
            steady_from = time.monotonic_ns()
            await asyncio.sleep(opts.steady_s)
            ev = await resize(address, policy, opts.variant, opts)
            await asyncio.sleep(opts.tail_s)
            windows.append((ev, steady_from, ev.done_ns + int(opts.tail_s * 1e9)))
            say(f"resize {i + 1}/{opts.resizes} ({policy}): {describe_layout(ev.before)} -> "
                f"{describe_layout(ev.after)}, routing switched after {(ev.switch_ns - ev.command_ns) / 1e9:.2f} s")
        await asyncio.sleep(0.2)  # completions just after the last window close its last gap
    finally:
        await load.stop()
    arrays = load.record.arrays()
    resizes = [analyse_resize(arrays, load.record.errors, ev, steady_from_ns=s, window_end_ns=e)
               for ev, s, e in windows]
    return {"resizes": resizes, "served_by": sorted({v for v in load.record.variant if v}),
            **summarise(resizes, load.record, time.monotonic() - started)}


def _run(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def measure(opts: Options, say: Say = print) -> dict[str, Any]:
    env = environment()
    with tempfile.TemporaryDirectory(prefix="letmesh-resize-") as tmp:
        repo = serving_repository(opts, Path(tmp) / "repository", say)
        served = sorted(p.parent.name for p in repo.glob(f"*/{MANIFEST}"))
        started = time.monotonic()
        mesh = LocalMesh(repository=repo, state_dir=Path(tmp) / "state", extra_env=MESH_ENV)
        try:
            mesh.start()
            profiles = wait_for_profiles(mesh.controller_address, timeout_s=opts.profile_timeout_s, say=say)
            first = _run(wait_first_plan(mesh.controller_address, opts.transition_timeout_s, say))
            setup_s = time.monotonic() - started
            request, described = request_bytes(mesh.http_port, repo, opts.variant, opts.slo_ms)
            result = _run(drive(mesh, request, opts, say))
        finally:
            mesh.stop()
    s, c = result["summary"], result["counts"]
    return {
        "benchmark": "resize_gap",
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "environment": env,
        "mesh_env": MESH_ENV,
        "served_models": served,
        "request": described,
        "setup_s": setup_s,
        "first_plan": layout_of(first, opts.variant),
        # What the planner saw: a busy machine's noisy profile explains a surprising plan.
        "profiles": [{"variant": p.variant, "cores": p.partition, "batch": p.batch, "p50_ms": p.p50_ms,
                      "p99_ms": p.p99_ms} for p in profiles.samples],
        **result,
        "loadavg_at_end": list(os.getloadavg()),
        "gslice_gap_ms": GSLICE_GAP_MS,
        "out": str(opts.out),
        "result": {
            "resize_gap_ms": s["gap_ms"]["median"],
            "steady_gap_p99_ms": s["steady_gap_p99_ms"]["median"],
            "failed_requests": c["failed"] + c["unanswered"],
            "switch_s": s["switch_s"]["median"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    report = plain(measure(opts, say=lambda line: print(line, flush=True)))
    write_json(opts.out, report)
    print(render(report))
    print(result_line(report["result"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
