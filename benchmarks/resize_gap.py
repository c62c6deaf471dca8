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
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.overhead import environment, result_line  # noqa: E402
from benchmarks.support.report import plain, write_json  # noqa: E402
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
# Each re-plan switches policy, so each one resizes: 1-core gpu-lets <-> one whole-device worker.
POLICY_CYCLE = ("temporal", "gpulet")
# Two variants: "gpulet" gives each a 1-core gpu-let, "temporal" one 2-core worker serving both.
# Both are so cheap that a noisy profile cannot push either out of the temporal plan; with a costly
# one (digits-cnn) a busy machine's 2-core profile can make the temporal plan drop the other.
DEFAULT_MODELS = ("identity", "digits-linear")
GSLICE_GAP_MS = 0.1  # GSLICE (SoCC 2020): GPU re-allocation downtime "< 100 us"
STOP_GRACE_S = 30.0  # how long a request may still be outstanding when the load stops
NOTHING_RETIRED_AFTER_S = 2.0  # the controller marks retired workers draining within a tick (0.5 s)
NO_NEW_WORKER_S = 10.0  # a re-plan shows its new workers within a tick; none by then: same layout
TOP_GAPS = 5
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


# --- load: closed-loop clients that record every request ---------------------------------------


@dataclass(slots=True)
class LoadRecord:
    """Every request of the run in completion order: monotonic ns and HTTP status (0: connection lost)."""

    sent_ns: list[int] = field(default_factory=list)
    done_ns: list[int] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    variant: list[str] = field(default_factory=list)  # letmesh_variant of a 200 reply, else ""
    errors: list[tuple[int, int, str]] = field(default_factory=list)  # (done ns, status, message) of the rest
    sent: int = 0
    unanswered: int = 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sent, done, status), sorted by completion time."""
        sent, done, status = (np.asarray(v, dtype=np.int64) for v in (self.sent_ns, self.done_ns, self.status))
        order = np.argsort(done, kind="stable")
        return sent[order], done[order], status[order]


class ClosedLoop:
    """N clients, each on one keep-alive HTTP/1.1 connection, sending the next request when the
    last is answered. Runs on one event loop; ``stop`` lets the requests in flight finish (bounded
    by STOP_GRACE_S; a client still waiting then counts one unanswered request)."""

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
        if not self._tasks:
            return
        done, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        self.record.unanswered += len(pending)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()

    async def _client(self) -> None:
        while not self._stopping.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
            except OSError:
                await asyncio.sleep(0.05)  # the gateway is refusing connections: try again shortly
                continue
            try:
                await self._serve(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one connection until stopped or the connection is lost (the gateway always
        answers with Content-Length)."""
        while not self._stopping.is_set():
            sent = time.monotonic_ns()
            self.record.sent += 1
            writer.write(self._request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                self._note(sent, 0, "", f"connection lost: {type(exc).__name__}")
                return
            status = int(head[9:12])
            variant = error = ""
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                if status == 200:
                    variant = json.loads(body)["parameters"]["letmesh_variant"]
                else:
                    error = str(json.loads(body).get("error", ""))[:200]
            self._note(sent, status, variant, error)

    def _note(self, sent: int, status: int, variant: str, error: str = "") -> None:
        rec = self.record
        done = time.monotonic_ns()
        rec.sent_ns.append(sent)
        rec.done_ns.append(done)
        rec.status.append(status)
        rec.variant.append(variant)
        if status != 200:
            rec.errors.append((done, status, error))


# --- the mesh's layout and one resize ------------------------------------------------------------


def layout_of(status: StatusReply, variant: str) -> list[dict[str, Any]]:
    return [{"worker": w.worker_id, "state": w.state, "cores": list(w.partition.cores), "variants": list(w.variants),
             "serves_load": variant in w.variants} for w in status.workers]


def describe_layout(workers: list[dict[str, Any]]) -> str:
    """'1c+1c*': the core count of each ready worker, '*' on those serving the loaded variant."""
    ready = [w for w in workers if w["state"] == "ready"]
    return "+".join(f"{len(w['cores'])}c{'*' if w['serves_load'] else ''}" for w in ready) or "none"


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


@dataclass(slots=True)
class ResizeEvents:
    """Monotonic ns of what a resize went through, as seen by polling the controller's status."""

    policy: str
    command_ns: int
    reply_ns: int = 0
    new_seen_ns: int = 0  # the new workers appear (starting)
    new_ready_ns: int = 0  # every new worker ready
    switch_ns: int = 0  # old workers marked draining: routing has moved to the new ones
    done_ns: int = 0  # the old workers are gone; nothing draining or stopping
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)
    new_workers: list[str] = field(default_factory=list)
    retired_workers: list[str] = field(default_factory=list)
    polls: int = 0
    # Liveness as the controller saw it: an agent it declares lost takes its workers out of routing.
    agent_silence_max_s: float = 0.0
    agent_lost_ns: int = 0
    states_seen: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # worker -> (state, first ns)


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


# --- analysis: pure functions of the request record and the event times ----------------------------


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else 0.0


def interval_stats(done_ns: np.ndarray, start_ns: int, end_ns: int) -> dict[str, float]:
    """Inter-completion intervals (ms) with both completions inside [start, end); ``done_ns`` sorted."""
    t = done_ns[(done_ns >= start_ns) & (done_ns < end_ns)]
    gaps = np.diff(t) / 1e6
    return {"n": int(gaps.size), "p50_ms": _pct(gaps, 50), "p99_ms": _pct(gaps, 99), "p999_ms": _pct(gaps, 99.9),
            "max_ms": float(gaps.max()) if gaps.size else 0.0}


def gaps_overlapping(done_ns: np.ndarray, start_ns: int, end_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Intervals between consecutive completions that overlap [start, end]: (lengths ns, start ns).

    The completion just before ``start`` and the one just after ``end`` count, so a stall that
    began before the window or outlasted it is measured whole. ``done_ns`` sorted.
    """
    lo = max(int(np.searchsorted(done_ns, start_ns, side="left")) - 1, 0)
    hi = min(int(np.searchsorted(done_ns, end_ns, side="right")) + 1, done_ns.size)
    t = done_ns[lo:hi]
    if t.size < 2:  # nothing completed around the window: all of it is a gap
        return np.asarray([end_ns - start_ns], dtype=np.int64), np.asarray([start_ns], dtype=np.int64)
    return np.diff(t), t[:-1]


def longest_gap(done_ns: np.ndarray, start_ns: int, end_ns: int) -> tuple[float, int]:
    """The longest interval overlapping [start, end]: (ms, the ns it began)."""
    lengths, starts = gaps_overlapping(done_ns, start_ns, end_ns)
    i = int(lengths.argmax())
    return float(lengths[i]) / 1e6, int(starts[i])


def latency_stats(sent_ns: np.ndarray, done_ns: np.ndarray) -> dict[str, float]:
    lat = (done_ns - sent_ns) / 1e6
    return {"n": int(lat.size), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "max_ms": float(lat.max()) if lat.size else 0.0}


def phase_at(t_ns: int, ev: ResizeEvents) -> str:
    """Which part of a resize a moment falls in."""
    if t_ns < ev.command_ns:
        return "before"
    if t_ns < ev.switch_ns:
        return "start-up"  # new workers loading and warming up; old ones serving everything
    if t_ns < ev.done_ns:
        return "drain"  # routing moved; old workers finish what they hold, then stop
    return "after"


def failure_kinds(errors: list[tuple[int, int, str]], ev: ResizeEvents, start_ns: int,
                  end_ns: int) -> list[dict[str, Any]]:
    """Failed requests in [start, end] grouped by status and message, with when they began and ended."""
    kinds: dict[tuple[int, str], dict[str, Any]] = {}
    for done, status, message in errors:
        if not start_ns <= done <= end_ns:
            continue
        text = "".join("#" if ch.isdigit() else ch for ch in message)  # ids and counts would split a kind
        at = (done - ev.command_ns) / 1e9
        kind = kinds.setdefault((status, text), {"status": status, "message": text, "count": 0, "first_s": at})
        kind["count"] += 1
        kind["last_s"] = at
    return sorted(kinds.values(), key=lambda k: -k["count"])


def analyse_resize(rec: tuple[np.ndarray, np.ndarray, np.ndarray], errors: list[tuple[int, int, str]],
                   ev: ResizeEvents, *, steady_from_ns: int, window_end_ns: int) -> dict[str, Any]:
    """One resize: the switch window [command, window end] against the steady phase before it."""
    sent, done, status = rec
    ok = status == 200
    ok_done = done[ok]
    steady = (done >= steady_from_ns) & (done < ev.command_ns)
    switch = (done >= ev.command_ns) & (done <= window_end_ns)
    steady_gaps = interval_stats(ok_done, steady_from_ns, ev.command_ns)
    gap_ms, gap_at = longest_gap(ok_done, ev.command_ns, window_end_ns)
    lengths, starts = gaps_overlapping(ok_done, ev.command_ns, window_end_ns)
    top = np.argsort(lengths)[::-1][:TOP_GAPS]
    phases = {"start-up": (ev.command_ns, ev.switch_ns), "drain": (ev.switch_ns, ev.done_ns),
              "after": (ev.done_ns, window_end_ns)}
    steady_s = (ev.command_ns - steady_from_ns) / 1e9
    switch_s = (window_end_ns - ev.command_ns) / 1e9
    failed = status[switch & ~ok]

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
        "agent_silence_max_s": ev.agent_silence_max_s,
        "agent_lost_at_s": rel(ev.agent_lost_ns) if ev.agent_lost_ns else None,
        "worker_states_seen": {w: [[state, rel(t)] for state, t in seen] for w, seen in ev.states_seen.items()},
        # A new worker seen lost: routing dropped the worker carrying the load (its agent was declared lost).
        "new_workers_lost": [w for w in ev.new_workers if any(st == "lost" for st, _ in ev.states_seen.get(w, []))],
        "gap_ms": gap_ms,
        "gap_at_s": rel(gap_at),
        "gap_phase": phase_at(gap_at, ev),
        "gap_by_phase_ms": {p: longest_gap(ok_done, a, b)[0] if b > a else 0.0 for p, (a, b) in phases.items()},
        "top_gaps": [{"ms": float(lengths[i]) / 1e6, "at_s": rel(int(starts[i])), "phase": phase_at(int(starts[i]), ev)}
                     for i in top],
        "gap_over_steady_p99": gap_ms / steady_gaps["p99_ms"] if steady_gaps["p99_ms"] > 0 else None,
        "gap_minus_steady_max_ms": gap_ms - steady_gaps["max_ms"],
        "steady": {
            "seconds": steady_s,
            "intervals": steady_gaps,
            "latency": latency_stats(sent[steady & ok], done[steady & ok]),
            "rps": int((steady & ok).sum()) / steady_s if steady_s > 0 else 0.0,
            "failed": int((steady & ~ok).sum()),
        },
        "switch": {
            "seconds": switch_s,
            "requests": int(switch.sum()),
            "latency": latency_stats(sent[switch & ok], done[switch & ok]),
            "rps": int((switch & ok).sum()) / switch_s if switch_s > 0 else 0.0,
            "failed": int(failed.size),
            "failed_statuses": {str(s): int((failed == s).sum()) for s in np.unique(failed)},
            "failures": failure_kinds(errors, ev, ev.command_ns, window_end_ns),
        },
    }


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median": 0.0, "min": 0.0, "max": 0.0, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


SUMMARY_FIGURES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "gap_ms": lambda r: r["gap_ms"],
    # When the controller declares the agent lost it takes the new workers out of routing: those
    # resizes apart, so the switch's own gap is visible whether or not that happened.
    "gap_routed_ms": lambda r: None if r["new_workers_lost"] else r["gap_ms"],
    "gap_unrouted_ms": lambda r: r["gap_ms"] if r["new_workers_lost"] else None,
    "gap_start_up_ms": lambda r: r["gap_by_phase_ms"]["start-up"],
    "gap_drain_ms": lambda r: r["gap_by_phase_ms"]["drain"],
    "gap_after_ms": lambda r: r["gap_by_phase_ms"]["after"],
    "steady_gap_p50_ms": lambda r: r["steady"]["intervals"]["p50_ms"],
    "steady_gap_p99_ms": lambda r: r["steady"]["intervals"]["p99_ms"],
    "steady_gap_max_ms": lambda r: r["steady"]["intervals"]["max_ms"],
    "gap_over_steady_p99": lambda r: r["gap_over_steady_p99"],
    "gap_minus_steady_max_ms": lambda r: r["gap_minus_steady_max_ms"],
    "switch_s": lambda r: r["timeline_s"]["switch"],
    "old_gone_s": lambda r: r["timeline_s"]["old_gone"],
    "steady_latency_p50_ms": lambda r: r["steady"]["latency"]["p50_ms"],
    "switch_latency_p50_ms": lambda r: r["switch"]["latency"]["p50_ms"],
    "steady_latency_p99_ms": lambda r: r["steady"]["latency"]["p99_ms"],
    "switch_latency_p99_ms": lambda r: r["switch"]["latency"]["p99_ms"],
    "steady_rps": lambda r: r["steady"]["rps"],
    "switch_rps": lambda r: r["switch"]["rps"],
}


def summarise(resizes: list[dict[str, Any]], rec: LoadRecord, load_s: float) -> dict[str, Any]:
    """Median and range over resizes of every figure, and the request counts of the whole run."""
    summary = {}
    for key, figure in SUMMARY_FIGURES.items():
        summary[key] = spread([v for r in resizes if (v := figure(r)) is not None])
    status = np.asarray(rec.status, dtype=np.int64)
    counts = {
        "sent": rec.sent,
        "answered": int(status.size),
        "unanswered": rec.unanswered,
        "ok": int((status == 200).sum()),
        "failed": int((status != 200).sum()),
        "failed_in_switch_windows": sum(r["switch"]["failed"] for r in resizes),
        "statuses": {str(s): int((status == s).sum()) for s in np.unique(status)},
        "load_seconds": load_s,
    }
    return {"summary": summary, "counts": counts}


# --- report ------------------------------------------------------------------------------------


def interpretation(report: dict[str, Any]) -> list[str]:
    s, env = report["summary"], report["environment"]
    gap, p99, smax = s["gap_ms"]["median"], s["steady_gap_p99_ms"]["median"], s["steady_gap_max_ms"]["median"]
    phases = sorted({r["gap_phase"] for r in report["resizes"]})
    where = ", ".join(f"{sum(r['gap_phase'] == p for r in report['resizes'])} in {p}" for p in phases)
    own = s["gap_routed_ms"]["median"] if s["gap_routed_ms"]["n"] else gap
    routed = (f"{s['gap_routed_ms']['median']:.2f} ms median over the {s['gap_routed_ms']['n']} resizes where the new "
              "workers stayed routed;" if s["gap_unrouted_ms"]["n"] and s["gap_routed_ms"]["n"] else "")
    points = [
        f"Routing moves only once the new workers are ready, so the {s['switch_s']['median']:.2f} s from command to "
        "switch is worker start-up (process, model load, warm-up) while the old workers keep serving: not downtime.",
        f"The serving gap, {gap:.2f} ms median, is the longest wait between two answers anywhere in the switch "
        f"window (largest gaps: {where}); {routed} the same load in steady state shows p99 {p99:.2f} ms and max "
        f"{smax:.2f} ms. On this CPU the switch's gap is bounded by the HTTP -> gateway -> ZeroMQ -> worker path "
        "and by "
        f"{env['usable_cores']} cores shared among the old and new worker processes, gateway, controller, agent "
        "and clients: a new worker's start-up and warm-up compete with serving, while the routing flip itself is "
        "one routing-table update at the gateway and the old workers finish what they hold.",
        f"GSLICE reports GPU re-allocation downtime under {GSLICE_GAP_MS * 1000:.0f} us (standby process, shared "
        f"weights, MPS). The switch's gap here, {own:.2f} ms, is {own / GSLICE_GAP_MS:.0f}x that figure, but it is "
        "a different quantity on "
        "different hardware: the max inter-completion interval of closed-loop load on a shared 2-core CPU, where "
        f"even steady serving has a {smax:.2f} ms max. Compare it with the steady figures, not with the GPU "
        "number; the GPU measurement (E10: MPS resize, standby with shared weights) needs an MPS-capable device.",
    ]
    lost = [r for r in report["resizes"] if r["new_workers_lost"]]
    if lost:
        failed = sum(r["switch"]["failed"] for r in lost)
        points.append(
            f"In {len(lost)} of {len(report['resizes'])} resizes the controller heard no heartbeat from the agent "
            f"for up to {max(r['agent_silence_max_s'] for r in lost):.1f} s while it stopped the retired workers, "
            "declared it lost and took its workers, the new one serving the load included, out of routing until "
            f"it heard from it again: {failed} requests failed in those resizes and their gaps "
            f"({s['gap_unrouted_ms']['median']:.0f} ms median) are that outage, not the switch "
            f"({s['gap_routed_ms']['median']:.1f} ms median where the new workers stayed routed).")
    lines = ["What this means:"]
    for point in points:
        lines += textwrap.wrap(point, width=116, initial_indent="  - ", subsequent_indent="    ")
    return lines


def render(report: dict[str, Any]) -> str:
    env, o, s, c = report["environment"], report["options"], report["summary"], report["counts"]
    lines = [
        f"letmesh resize gap: make-before-break re-plans under steady closed-loop load "
        f"({'quick' if o['quick'] else 'full'} run)",
        f"machine: {env['cpu_model']}, {env['usable_cores']} usable cores shared by the clients, gateway, controller, "
        f"agent and workers; load average {env['loadavg_at_start'][0]:.2f} at start, "
        f"{report['loadavg_at_end'][0]:.2f} at end",
        f"software: python {env['python']}, torch {env['torch']}, aiohttp {env['aiohttp']}, "
        f"pyzmq {env['pyzmq']} (libzmq {env['libzmq']})",
        f"mesh: serving {', '.join(report['served_models'])}; load: {o['clients']} closed-loop clients "
        f"(keep-alive HTTP/1.1) on {report['request']}; deadline: "
        + ("the model's default" if o["slo_ms"] is None else f"letmesh_slo_ms={o['slo_ms']:g}"),
        f"resizes: {len(report['resizes'])} operator re-plans alternating {' / '.join(POLICY_CYCLE)}, "
        f"{o['steady_s']:g} s steady phase before each; switch window: command until {o['tail_s']:g} s after the old "
        f"workers stopped; setup {report['setup_s']:.0f} s (start, profiling, first plan)",
        "  layout: cores of each ready worker, * = serves the loaded variant; times in s after the command",
        "",
        f"  {'#':>2} {'policy':<9} {'layout':<13} {'switch':>6} {'gone':>5} {'gap ms':>8} {'at':>6} {'phase':<8}"
        f" {'steady gap ms':>20} {'lat p99 ms':>12} {'req/s':>10} {'failed':>6}",
        f"  {'':>2} {'':<9} {'':<13} {'':>6} {'':>5} {'':>8} {'':>6} {'':<8}"
        f" {'p50/p99/max':>20} {'steady->sw':>12} {'steady->sw':>10} {'':>6}",
    ]
    for i, r in enumerate(report["resizes"], 1):
        st = r["steady"]["intervals"]
        steady_gap = f"{st['p50_ms']:.2f}/{st['p99_ms']:.2f}/{st['max_ms']:.2f}"
        lat = f"{r['steady']['latency']['p99_ms']:.1f}->{r['switch']['latency']['p99_ms']:.1f}"
        rps = f"{r['steady']['rps']:.0f}->{r['switch']['rps']:.0f}"
        lines.append(
            f"  {i:>2} {r['policy']:<9} {r['from'] + '->' + r['to']:<13} {r['timeline_s']['switch']:>6.2f} "
            f"{r['timeline_s']['old_gone']:>5.2f} {r['gap_ms']:>8.2f} {r['gap_at_s']:>6.2f} {r['gap_phase']:<8}"
            f" {steady_gap:>20} {lat:>12} {rps:>10} {r['switch']['failed']:>6}")

    def row(label: str, key: str, unit: str, fmt: str = ".2f") -> str:
        v = s[key]
        return f"  {label:<50} {v['median']:>9{fmt}} {unit:<4} [{v['min']:{fmt}}-{v['max']:{fmt}}]"

    lines += [
        "",
        f"  over {len(report['resizes'])} resizes: median [min-max]",
        row("serving gap: max inter-completion in switch window", "gap_ms", "ms"),
        row(f"  resizes where the new workers stayed routed (n={s['gap_routed_ms']['n']})", "gap_routed_ms", "ms"),
        row(f"  resizes where they left routing: agent lost (n={s['gap_unrouted_ms']['n']})", "gap_unrouted_ms",
            "ms"),
        row("  largest gap during start-up (old serving)", "gap_start_up_ms", "ms"),
        row("  largest gap from routing switch to old gone", "gap_drain_ms", "ms"),
        row("  largest gap after the old workers stopped", "gap_after_ms", "ms"),
        row("steady inter-completion p50", "steady_gap_p50_ms", "ms", ".3f"),
        row("steady inter-completion p99", "steady_gap_p99_ms", "ms"),
        row("steady inter-completion max", "steady_gap_max_ms", "ms"),
        row("gap / steady p99", "gap_over_steady_p99", "x", ".1f"),
        row("gap - steady max", "gap_minus_steady_max_ms", "ms"),
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
        f"{c['statuses']}; failed (not 200): {c['failed']}, in switch windows: {c['failed_in_switch_windows']}",
    ]
    for i, r in enumerate(report["resizes"], 1):
        for k in r["switch"]["failures"]:
            lines.append(f"  resize {i}: {k['count']} x {k['status']} from {k['first_s']:.2f} s to "
                         f"{k['last_s']:.2f} s: {k['message'] or '(no message)'}")
    for i, r in enumerate(report["resizes"], 1):
        if r["agent_lost_at_s"] is not None:
            lost = sorted(w for w, seen in r["worker_states_seen"].items() if any(st == "lost" for st, _ in seen))
            lines.append(f"  resize {i}: the controller heard nothing from the agent for up to "
                         f"{r['agent_silence_max_s']:.1f} s and declared it lost at {r['agent_lost_at_s']:.2f} s; "
                         f"workers seen lost (out of routing): {', '.join(lost) or 'none'}")
    dropped = [i for i, r in enumerate(report["resizes"], 1) if not r["loaded_variant_served_after"]]
    if dropped:
        lines.append(f"  WARNING: the plan of resize(s) {dropped} left {o['variant']} without a worker (requests "
                     "fail until the next re-plan; see the profiles in the JSON)")
    if c["failed"] or c["unanswered"]:
        lines.append("  WARNING: requests failed (0: connection lost, 503: no worker ready or overloaded, "
                     "504: deadline passed)")
    lines += ["", *interpretation(report), "", f"JSON: {report['out']}"]
    return "\n".join(lines)


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
