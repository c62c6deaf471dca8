"""Serving gap while the mesh resizes its partitions make-before-break, under steady load.

Starts a whole mesh on loopback on the demo repository, waits for the device profiles and the
first plan, then drives closed-loop load on one variant and alternates operator re-plans between
the "temporal" policy (one whole-device worker) and the "gpulet" policy (1-core gpu-lets), so
each re-plan resizes the partitions. For every resize it reports the serving gap (the longest
interval between consecutive successful completions from the command until shortly after the
old workers stopped) against the steady-state inter-completion intervals measured just before,
the requests that failed, latency during the switch, and how long the new workers took to come
up. Prints a table, writes JSON, ends with one ``RESULT`` line. Asserts nothing about speed.

Run: ``python benchmarks/resize_gap.py [--quick]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.overhead import _plain, _run_loop, environment, result_line  # noqa: E402
from controller.registry import LEAVING  # noqa: E402
from letmesh.launcher import LocalMesh  # noqa: E402
from letmesh.profiles import wait_for_profiles  # noqa: E402
from letmesh.status import ask_controller, fetch_status  # noqa: E402
from letmesh.zoo import MANIFEST, build_zoo  # noqa: E402
from protocol.message import Replan, ReplanReply, StatusReply  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "resize_gap.json"
DEFAULT_ZOO = HERE / "results" / "zoo"  # a build cache: git-ignored, rebuilt only when incomplete
# Fast, quiet re-planning: no spontaneous re-plan (only the operator's), short profiling, a short drain.
MESH_ENV = {
    "LETMESH_CONTROLLER_REPLAN_PERIOD_S": "3600",
    "LETMESH_CONTROLLER_PROFILE_REPEATS": "5",
    "LETMESH_CONTROLLER_PROFILE_COLOCATION": "0",
    "LETMESH_CONTROLLER_STOP_DRAIN_S": "1",
}
# Each re-plan switches policy, so each one resizes: 1-core gpu-lets <-> one whole-device worker.
POLICY_CYCLE = ("temporal", "gpulet")
# With these two, "gpulet" plans one 1-core gpu-let each and "temporal" one 2-core worker serving both.
DEFAULT_MODELS = ("identity", "digits-cnn")
GSLICE_GAP_MS = 0.1  # GSLICE (SoCC 2020): GPU re-allocation downtime "< 100 us"
STOP_GRACE_S = 30.0  # how long a request may still be outstanding when the load stops


class ResizeError(Exception):
    """The mesh did not go through a resize as expected (refused, no change, or too slow)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    quick: bool
    resizes: int
    clients: int
    variant: str
    warmup_s: float
    steady_s: float
    tail_s: float
    slo_ms: float | None
    poll_s: float
    transition_timeout_s: float
    profile_timeout_s: float
    repository: Path | None
    zoo: Path
    models: tuple[str, ...]
    out: Path


def parse_options(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter resizes (1-2 minutes), same code path")
    p.add_argument("--resizes", type=int, help="re-plans under load, alternating temporal/gpulet (default 6, quick 2)")
    p.add_argument("--clients", type=int, default=4, help="closed-loop clients (default 4)")
    p.add_argument("--variant", default="identity", help="the variant under load (default identity: "
                   "almost no compute, so the gap is the mesh's, not the model's)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="load before the first steady phase")
    p.add_argument("--steady-s", type=float, help="steady phase before each resize (default 8, quick 4)")
    p.add_argument("--tail-s", type=float, default=2.0, help="the switch window runs this long after the "
                   "old workers stopped")
    p.add_argument("--slo-ms", type=float, help="send parameter letmesh_slo_ms (default: none, so the "
                   "model's default deadline applies)")
    p.add_argument("--poll-s", type=float, default=0.05, help="status poll interval during a resize")
    p.add_argument("--transition-timeout-s", type=float, default=60.0, help="longest a resize may take")
    p.add_argument("--profile-timeout-s", type=float, default=180.0, help="longest profiling may take")
    p.add_argument("--repository", type=Path, help="an existing model repository to take the models from "
                   "(default: the demo repository, built once into --zoo)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated variants the mesh "
                   f"serves, or 'all' (default {','.join(DEFAULT_MODELS)}: the temporal policy puts at most "
                   "three variants on a device, so with more some go unserved after that resize)")
    p.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="build cache of the demo repository")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    a = p.parse_args(argv)
    for name in ("resizes", "clients", "steady_s", "slo_ms", "poll_s", "transition_timeout_s",
                 "profile_timeout_s"):
        value = getattr(a, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("warmup_s", "tail_s"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    return Options(
        quick=a.quick,
        resizes=a.resizes or (2 if a.quick else 6),
        clients=a.clients,
        variant=a.variant,
        warmup_s=a.warmup_s,
        steady_s=a.steady_s or (4.0 if a.quick else 8.0),
        tail_s=a.tail_s,
        slo_ms=a.slo_ms,
        poll_s=a.poll_s,
        transition_timeout_s=a.transition_timeout_s,
        profile_timeout_s=a.profile_timeout_s,
        repository=a.repository,
        zoo=a.zoo,
        models=() if a.models == "all" else tuple(m.strip() for m in a.models.split(",") if m.strip()),
        out=a.out,
    )


# --- the request ------------------------------------------------------------------------------


def request_bytes(port: int, repository: Path, variant: str, slo_ms: float | None) -> tuple[bytes, str]:
    """One OIP JSON request for ``variant`` (batch of one, shape from its manifest) and a description."""
    manifest_path = repository / variant / MANIFEST
    if not manifest_path.exists():
        raise SystemExit(f"no variant {variant!r} in {repository}")
    spec = json.loads(manifest_path.read_text())["inputs"][0]
    shape = [1 if d < 0 else d for d in spec["shape"]]
    x = np.linspace(0.0, 1.0, math.prod(shape), dtype=np.float32)
    body = {"inputs": [{"name": spec["name"], "datatype": spec["datatype"], "shape": shape, "data": x.tolist()}]}
    if slo_ms is not None:
        body["parameters"] = {"letmesh_slo_ms": slo_ms}
    raw = json.dumps(body).encode()
    head = (f"POST /v2/models/{variant}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n").encode()
    return head + raw, f"{variant} {spec['datatype']}{shape} (OIP JSON)"


# --- load: closed-loop clients that record every request ---------------------------------------


@dataclass(slots=True)
class LoadRecord:
    """Every request of the run, in completion order: monotonic ns, HTTP status (0: connection lost)."""

    sent_ns: list[int] = field(default_factory=list)
    done_ns: list[int] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    variant: list[str] = field(default_factory=list)  # letmesh_variant of a 200 reply, else ""
    sent: int = 0
    unanswered: int = 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.asarray(self.sent_ns, dtype=np.int64), np.asarray(self.done_ns, dtype=np.int64),
                np.asarray(self.status, dtype=np.int64))


class ClosedLoop:
    """N clients, each one keep-alive HTTP/1.1 connection sending the next request when the last
    is answered. Runs on one event loop; ``stop`` lets every request in flight finish (bounded)."""

    def __init__(self, port: int, request: bytes, clients: int) -> None:
        self._port = port
        self._request = request
        self._clients = clients
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.record = LoadRecord()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(), name=f"client-{i}") for i in range(self._clients)]

    async def stop(self) -> None:
        self._stopping.set()
        done, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        self.record.unanswered += len(pending)  # each stuck client holds exactly one request
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()

    async def _client(self) -> None:
        rec = self.record
        while not self._stopping.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                while not self._stopping.is_set():
                    sent = time.monotonic_ns()
                    rec.sent += 1
                    writer.write(self._request)
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = 0
                        for line in head.split(b"\r\n"):
                            if line[:15].lower() == b"content-length:":
                                length = int(line[15:])
                        body = await reader.readexactly(length)
                    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                        self._note(sent, 0, "")
                        break  # reconnect
                    status = int(head[9:12])
                    variant = ""
                    if status == 200:
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            variant = json.loads(body)["parameters"]["letmesh_variant"]
                    self._note(sent, status, variant)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    def _note(self, sent: int, status: int, variant: str) -> None:
        rec = self.record
        rec.sent_ns.append(sent)
        rec.done_ns.append(time.monotonic_ns())
        rec.status.append(status)
        rec.variant.append(variant)


# --- the mesh's layout and one resize ------------------------------------------------------------


def layout_of(status: StatusReply, variant: str) -> list[dict[str, Any]]:
    return [{"worker": w.worker_id, "state": w.state, "cores": list(w.partition.cores), "variants": list(w.variants),
             "serves_load": variant in w.variants} for w in status.workers]


def describe_layout(workers: list[dict[str, Any]]) -> str:
    """'1c+1c' style: the core count of each ready worker, '*' on those serving the loaded variant."""
    ready = [w for w in workers if w["state"] == "ready"]
    return "+".join(f"{len(w['cores'])}c{'*' if w['serves_load'] else ''}" for w in ready) or "none"


def settled(status: StatusReply) -> bool:
    """The first plan is in force: planned workers ready, nothing starting, draining or stopping."""
    states = [(w.worker_id, w.state) for w in status.workers]
    return (any(".g" in w and s == "ready" for w, s in states)
            and all(".g" in w and s == "ready" for w, s in states))


async def wait_first_plan(address: str, timeout_s: float, say) -> StatusReply:
    """Force the first plan (profiles are in) and wait until it is in force and stays so for a second."""
    reply = await asyncio.to_thread(ask_controller, address, Replan(policy=POLICY_CYCLE[1]), ReplanReply)
    if not reply.accepted:
        raise ResizeError(f"controller refused the first plan: {reply.message}")
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
            raise ResizeError(f"the first plan was not in force within {timeout_s:.0f} s: "
                              f"{[(w.worker_id, w.state) for w in status.workers]}")
        await asyncio.sleep(0.1)


@dataclass(slots=True)
class ResizeEvents:
    """Monotonic ns of what a resize went through, as seen by polling the controller's status."""

    policy: str
    command_ns: int
    reply_ns: int = 0
    new_seen_ns: int = 0  # the new workers appear (starting)
    new_ready_ns: int = 0  # all new workers ready
    switch_ns: int = 0  # old workers marked draining: routing has switched to the new ones
    done_ns: int = 0  # the old workers are gone; nothing draining or stopping
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)
    new_workers: list[str] = field(default_factory=list)
    retired_workers: list[str] = field(default_factory=list)
    polls: int = 0


async def resize(address: str, policy: str, variant: str, opts: Options) -> ResizeEvents:
    before = await asyncio.to_thread(fetch_status, address)
    old = {w.worker_id for w in before.workers}
    ev = ResizeEvents(policy=policy, command_ns=time.monotonic_ns(), before=layout_of(before, variant))
    reply = await asyncio.to_thread(ask_controller, address, Replan(policy=policy), ReplanReply)
    ev.reply_ns = time.monotonic_ns()
    if not reply.accepted:
        raise ResizeError(f"controller refused re-plan {policy!r}: {reply.message}")
    deadline = ev.command_ns + int(opts.transition_timeout_s * 1e9)
    retired: set[str] = set()
    while True:
        status = await asyncio.to_thread(fetch_status, address)
        now = time.monotonic_ns()
        ev.polls += 1
        new = [w for w in status.workers if w.worker_id not in old]
        here = {w.worker_id: w.state for w in status.workers}
        retired |= {w for w in old if here.get(w, "gone") in LEAVING or w not in here}
        if new and not ev.new_seen_ns:
            ev.new_seen_ns = now
        all_ready = bool(new) and all(w.state == "ready" for w in new)
        if all_ready and not ev.new_ready_ns:
            ev.new_ready_ns = now
        if ev.new_ready_ns and retired and not ev.switch_ns:
            ev.switch_ns = now
        if all_ready and not any(s in LEAVING for s in here.values()):
            ev.done_ns = now
            ev.switch_ns = ev.switch_ns or ev.new_ready_ns  # nothing retired: new workers simply join
            ev.after = layout_of(status, variant)
            ev.new_workers = sorted(w.worker_id for w in new)
            ev.retired_workers = sorted(retired)
            return ev
        if not new and now - ev.command_ns > 10e9:
            raise ResizeError(f"re-plan {policy!r} started no new worker within 10 s (same layout?)")
        if now > deadline:
            raise ResizeError(f"re-plan {policy!r} did not finish within {opts.transition_timeout_s:.0f} s: "
                              f"{sorted(here.items())}")
        await asyncio.sleep(opts.poll_s)


# --- analysis: pure functions of the request record and the event times ----------------------------


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else 0.0


def interval_stats(done_ns: np.ndarray, start_ns: int, end_ns: int) -> dict[str, float]:
    """Inter-completion intervals (ms) with both completions inside [start, end]."""
    t = done_ns[(done_ns >= start_ns) & (done_ns <= end_ns)]
    gaps = np.diff(t) / 1e6
    return {"n": int(gaps.size), "p50_ms": _pct(gaps, 50), "p99_ms": _pct(gaps, 99),
            "p999_ms": _pct(gaps, 99.9), "max_ms": float(gaps.max()) if gaps.size else 0.0}


def longest_gap(done_ns: np.ndarray, start_ns: int, end_ns: int) -> tuple[float, int]:
    """The longest interval between consecutive completions that overlaps [start, end]: (ms, its start ns).

    The completion just before ``start`` and the one just after ``end`` count, so a stall that
    began before the window or outlasted it is measured whole.
    """
    lo = max(int(np.searchsorted(done_ns, start_ns, side="left")) - 1, 0)
    hi = min(int(np.searchsorted(done_ns, end_ns, side="right")) + 1, done_ns.size)
    t = done_ns[lo:hi]
    if t.size < 2:
        return float(end_ns - start_ns) / 1e6, start_ns
    gaps = np.diff(t)
    i = int(gaps.argmax())
    return float(gaps[i]) / 1e6, int(t[i])


def latency_stats(sent_ns: np.ndarray, done_ns: np.ndarray) -> dict[str, float]:
    lat = (done_ns - sent_ns) / 1e6
    return {"n": int(lat.size), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "max_ms": float(lat.max()) if lat.size else 0.0}


def phase_at(t_ns: int, ev: ResizeEvents) -> str:
    """Which part of a resize a moment falls in."""
    if t_ns < ev.switch_ns:
        return "start-up"  # new workers loading and warming, old ones serving everything
    if t_ns < ev.done_ns:
        return "drain"  # routing switched; old workers finish what they hold, then stop
    return "after"


def analyse_resize(rec: tuple[np.ndarray, np.ndarray, np.ndarray], ev: ResizeEvents, *, steady_from_ns: int,
                   window_end_ns: int) -> dict[str, Any]:
    sent, done, status = rec
    ok = status == 200
    ok_done = done[ok]
    steady_mask = (done >= steady_from_ns) & (done < ev.command_ns)
    switch_mask = (done >= ev.command_ns) & (done <= window_end_ns)
    gap_ms, gap_at = longest_gap(ok_done, ev.command_ns, window_end_ns)
    by_phase = {}
    bounds = {"start-up": (ev.command_ns, ev.switch_ns), "drain": (ev.switch_ns, ev.done_ns),
              "after": (ev.done_ns, window_end_ns)}
    for phase, (a, b) in bounds.items():
        by_phase[phase] = longest_gap(ok_done, a, b)[0] if b > a else 0.0
    steady_s = (ev.command_ns - steady_from_ns) / 1e9
    switch_s = (window_end_ns - ev.command_ns) / 1e9
    steady_gaps = interval_stats(ok_done, steady_from_ns, ev.command_ns)
    failed = status[switch_mask & ~ok]

    def rel(t_ns: int) -> float:
        return (t_ns - ev.command_ns) / 1e9

    return {
        "policy": ev.policy,
        "from": describe_layout(ev.before),
        "to": describe_layout(ev.after),
        "layout_before": ev.before,
        "layout_after": ev.after,
        "new_workers": ev.new_workers,
        "retired_workers": ev.retired_workers,
        "loaded_variant_served_after": any(w["serves_load"] and w["state"] == "ready" for w in ev.after),
        "timeline_s": {"reply": rel(ev.reply_ns), "new_seen": rel(ev.new_seen_ns), "new_ready": rel(ev.new_ready_ns),
                       "switch": rel(ev.switch_ns), "old_gone": rel(ev.done_ns), "window_end": rel(window_end_ns)},
        "status_polls": ev.polls,
        "gap_ms": gap_ms,
        "gap_at_s": rel(gap_at),
        "gap_phase": phase_at(gap_at, ev),
        "gap_by_phase_ms": by_phase,
        "gap_over_steady_p99": gap_ms / steady_gaps["p99_ms"] if steady_gaps["p99_ms"] > 0 else None,
        "steady": {
            "seconds": steady_s,
            "intervals": steady_gaps,
            "latency": latency_stats(sent[steady_mask & ok], done[steady_mask & ok]),
            "rps": int((steady_mask & ok).sum()) / steady_s if steady_s > 0 else 0.0,
            "failed": int((steady_mask & ~ok).sum()),
        },
        "switch": {
            "seconds": switch_s,
            "requests": int(switch_mask.sum()),
            "latency": latency_stats(sent[switch_mask & ok], done[switch_mask & ok]),
            "rps": int((switch_mask & ok).sum()) / switch_s if switch_s > 0 else 0.0,
            "failed": int(failed.size),
            "failed_statuses": {str(s): int((failed == s).sum()) for s in np.unique(failed)},
        },
    }


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median": 0.0, "min": 0.0, "max": 0.0, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(resizes: list[dict[str, Any]], rec: LoadRecord, load_from_ns: int, load_to_ns: int) -> dict[str, Any]:
    sent, done, status = rec.arrays()
    statuses = {str(s): int((status == s).sum()) for s in np.unique(status)}
    answered = int(status.size)
    failed = int((status != 200).sum())
    summary = {
        "gap_ms": spread([r["gap_ms"] for r in resizes]),
        "steady_gap_p50_ms": spread([r["steady"]["intervals"]["p50_ms"] for r in resizes]),
        "steady_gap_p99_ms": spread([r["steady"]["intervals"]["p99_ms"] for r in resizes]),
        "steady_gap_max_ms": spread([r["steady"]["intervals"]["max_ms"] for r in resizes]),
        "gap_over_steady_p99": spread([r["gap_over_steady_p99"] for r in resizes if r["gap_over_steady_p99"]]),
        "switch_s": spread([r["timeline_s"]["switch"] for r in resizes]),
        "old_gone_s": spread([r["timeline_s"]["old_gone"] for r in resizes]),
        "steady_latency_p50_ms": spread([r["steady"]["latency"]["p50_ms"] for r in resizes]),
        "steady_latency_p99_ms": spread([r["steady"]["latency"]["p99_ms"] for r in resizes]),
        "switch_latency_p50_ms": spread([r["switch"]["latency"]["p50_ms"] for r in resizes]),
        "switch_latency_p99_ms": spread([r["switch"]["latency"]["p99_ms"] for r in resizes]),
        "steady_rps": spread([r["steady"]["rps"] for r in resizes]),
        "switch_rps": spread([r["switch"]["rps"] for r in resizes]),
    }
    counts = {
        "sent": rec.sent,
        "answered": answered,
        "unanswered": rec.unanswered,
        "ok": int((status == 200).sum()),
        "failed": failed,
        "failed_in_switch_windows": sum(r["switch"]["failed"] for r in resizes),
        "statuses": statuses,
        "load_seconds": (load_to_ns - load_from_ns) / 1e9,
    }
    return {"summary": summary, "counts": counts}


# --- report ------------------------------------------------------------------------------------


def interpretation(report: dict[str, Any]) -> list[str]:
    s, env = report["summary"], report["environment"]
    gap = s["gap_ms"]["median"]
    p99 = s["steady_gap_p99_ms"]["median"]
    return [
        "What this means:",
        f"  - Routing switches only once the new workers are ready, so the {s['switch_s']['median']:.2f} s from command",
        "    to switch is worker start-up (process, model load, warm-up) while the old workers keep serving; it is",
        "    not downtime.",
        f"  - The serving gap, {gap:.2f} ms median, is the longest wait between two answers anywhere in the switch",
        f"    window; in steady state the same load shows p99 {p99:.2f} ms. On this CPU it is bounded by the",
        "    HTTP -> gateway -> ZeroMQ -> worker path and by the new and old worker processes, gateway, controller,",
        f"    agent and clients sharing {env['usable_cores']} cores during the switch (a new worker's start-up and warm-up",
        "    compete with serving), not by a routing pause: the gateway flips to the new workers on one routing",
        "    table while the old ones drain what they hold.",
        f"  - GSLICE reports re-allocation downtime under {GSLICE_GAP_MS * 1000:.0f} us on GPUs (standby process with",
        f"    shared weights, MPS). Our gap is {gap / GSLICE_GAP_MS:.0f}x that figure in absolute terms, but it is",
        "    a different quantity on different hardware: a max inter-completion interval under closed-loop load on",
        "    a shared 2-core CPU, which includes the normal spacing between answers. Compare it with the steady",
        "    p99/max above, not with the GPU number; the GPU measurement (E10) needs an MPS-capable device.",
    ]


def render(report: dict[str, Any]) -> str:
    env, o, s, c = report["environment"], report["options"], report["summary"], report["counts"]
    lines = [
        f"letmesh resize gap: make-before-break re-plans under steady closed-loop load "
        f"({'quick' if o['quick'] else 'full'} run)",
        f"machine: {env['cpu_model']}, {env['usable_cores']} usable cores shared by the clients, gateway, "
        f"controller, agent and workers; load average {env['loadavg_at_start'][0]:.2f} at start, "
        f"{report['loadavg_at_end'][0]:.2f} at end",
        f"software: python {env['python']}, torch {env['torch']}, aiohttp {env['aiohttp']}, "
        f"pyzmq {env['pyzmq']} (libzmq {env['libzmq']})",
        f"load: {o['clients']} closed-loop clients (keep-alive HTTP/1.1) on {report['request']}; deadline: "
        + ("the model's default" if o["slo_ms"] is None else f"letmesh_slo_ms={o['slo_ms']:g}"),
        f"resizes: {len(report['resizes'])} operator re-plans alternating {' / '.join(POLICY_CYCLE)} "
        f"(1-core gpu-lets <-> one whole-device worker); {o['steady_s']:g} s steady phase before each; switch "
        f"window from the command to {o['tail_s']:g} s after the old workers stopped; setup "
        f"{report['setup_s']:.0f} s (start, profiling, first plan)",
        "  layout: core count of each ready worker, * = serves the loaded variant",
        "",
        f"  {'#':>2} {'policy':<9} {'layout':<14} {'switch':>7} {'gone':>6} {'gap':>8} {'at':>6} {'phase':<9}"
        f" {'steady gap p50/p99/max':>23} {'latency p99':>14} {'req/s':>11} {'failed':>6}",
        f"  {'':>2} {'':<9} {'':<14} {'s':>7} {'s':>6} {'ms':>8} {'s':>6} {'':<9}"
        f" {'ms':>23} {'steady->switch':>14} {'steady->sw':>11} {'':>6}",
    ]
    for i, r in enumerate(report["resizes"], 1):
        st = r["steady"]["intervals"]
        lat = f"{r['steady']['latency']['p99_ms']:.1f}->{r['switch']['latency']['p99_ms']:.1f}"
        rps = f"{r['steady']['rps']:.0f}->{r['switch']['rps']:.0f}"
        lines.append(
            f"  {i:>2} {r['policy']:<9} {r['from'] + '->' + r['to']:<14} {r['timeline_s']['switch']:>7.2f} "
            f"{r['timeline_s']['old_gone']:>6.2f} {r['gap_ms']:>8.2f} {r['gap_at_s']:>6.2f} {r['gap_phase']:<9}"
            f" {st['p50_ms']:>7.2f}/{st['p99_ms']:.2f}/{st['max_ms']:.2f} {lat:>14} {rps:>11} {r['switch']['failed']:>6}"
        )

    def row(label: str, key: str, unit: str, fmt: str = ".2f") -> str:
        v = s[key]
        return (f"  {label:<52} {v['median']:>9{fmt}} {unit:<4} [{v['min']:{fmt}}-{v['max']:{fmt}}]")

    lines += [
        "",
        f"  summary over {len(report['resizes'])} resizes: median [min-max]",
        row("serving gap (max inter-completion in switch window)", "gap_ms", "ms"),
        row("steady inter-completion p50", "steady_gap_p50_ms", "ms", ".3f"),
        row("steady inter-completion p99", "steady_gap_p99_ms", "ms"),
        row("steady inter-completion max", "steady_gap_max_ms", "ms"),
        row("gap / steady p99", "gap_over_steady_p99", "x", ".1f"),
        row("command -> routing switch (new workers ready)", "switch_s", "s"),
        row("command -> old workers gone", "old_gone_s", "s"),
        row("latency p50, steady", "steady_latency_p50_ms", "ms"),
        row("latency p50, switch window", "switch_latency_p50_ms", "ms"),
        row("latency p99, steady", "steady_latency_p99_ms", "ms"),
        row("latency p99, switch window", "switch_latency_p99_ms", "ms"),
        row("throughput, steady", "steady_rps", "r/s", ".0f"),
        row("throughput, switch window", "switch_rps", "r/s", ".0f"),
        "",
        f"  requests: {c['sent']} sent, {c['answered']} answered, {c['unanswered']} unanswered; statuses "
        f"{c['statuses']}; failed (not 200): {c['failed']}, of which in switch windows: "
        f"{c['failed_in_switch_windows']}",
    ]
    dropped = [i for i, r in enumerate(report["resizes"], 1) if not r["loaded_variant_served_after"]]
    if dropped:
        lines.append(f"  WARNING: after resize(s) {dropped} no ready worker serves {o['variant']}")
    if c["failed"] or c["unanswered"]:
        lines.append("  WARNING: some requests failed (0: connection lost, 503: no worker ready or overloaded, "
                     "504: deadline passed)")
    lines += ["", *interpretation(report), "", f"JSON: {report['out']}"]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------


def repository_for(opts: Options, say) -> Path:
    if opts.repository is not None:
        return opts.repository
    build_zoo(opts.zoo, progress=lambda line: None)  # idempotent: a complete cache is left untouched
    say(f"demo repository ready in {opts.zoo}")
    return opts.zoo


async def drive(mesh: LocalMesh, request: bytes, opts: Options, say) -> dict[str, Any]:
    address = mesh.controller_address
    load = ClosedLoop(mesh.http_port, request, opts.clients)
    load_from = time.monotonic_ns()
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
            window_end = ev.done_ns + int(opts.tail_s * 1e9)
            windows.append((ev, steady_from, window_end))
            say(f"resize {i + 1}/{opts.resizes} ({policy}): {describe_layout(ev.before)} -> "
                f"{describe_layout(ev.after)}, switched after {(ev.switch_ns - ev.command_ns) / 1e9:.2f} s")
        await asyncio.sleep(0.2)  # completions just after the last window close its last gap
    finally:
        await load.stop()
    load_to = time.monotonic_ns()
    arrays = load.record.arrays()
    order = np.argsort(arrays[1], kind="stable")
    arrays = tuple(a[order] for a in arrays)
    resizes = [analyse_resize(arrays, ev, steady_from_ns=s, window_end_ns=e) for ev, s, e in windows]
    variants = sorted({v for v in load.record.variant if v})
    return {"resizes": resizes, "served_by_variants": variants,
            **summarise(resizes, load.record, load_from, load_to)}


def measure(opts: Options, say=print) -> dict[str, Any]:
    env = environment()
    repo = repository_for(opts, say)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="letmesh-resize-") as tmp:
        mesh = LocalMesh(repository=repo, state_dir=Path(tmp) / "state", extra_env=MESH_ENV)
        try:
            mesh.start()
            wait_for_profiles(mesh.controller_address, timeout_s=opts.profile_timeout_s, say=say)
            first = _run_loop(wait_first_plan(mesh.controller_address, opts.transition_timeout_s, say))
            setup_s = time.monotonic() - started
            request, described = request_bytes(mesh.http_port, repo, opts.variant, opts.slo_ms)
            result = _run_loop(drive(mesh, request, opts, say))
        finally:
            mesh.stop()
    s, c = result["summary"], result["counts"]
    return {
        "benchmark": "resize_gap",
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "environment": env,
        "mesh_env": MESH_ENV,
        "request": described,
        "setup_s": setup_s,
        "first_plan": layout_of(first, opts.variant),
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
    report = _plain(measure(opts, say=lambda line: print(line, flush=True)))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(result_line(report["result"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
