"""The chaos benchmark's mesh under test and its phases: steady load, one fault, what the client saw.

``MeshUnderTest`` wraps ``LocalMesh`` with what a fault needs (role and worker pids, health, healing by
restarting roles). ``run_phase`` drives open-loop load, injects one fault at a fixed time, watches
every role and worker process for exits nobody caused, and returns the phase's figures. Roles are
(re)started only from the calling thread: their parent-death signal is tied to the thread that forks.
A composition root: may import everything.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.support import procfs
from benchmarks.support.openloop import LoadRun, Stream, summarise
from agents.process import die_with_parent
from letmesh.launcher import LaunchError, LocalMesh, http_status
from letmesh.status import StatusUnavailable, fetch_status
from mesh.keys import split_server_key

ROLES = ("controller", "gateway", "agent")
CLIENT_BOUND_LAG_MS = 100.0
LAG_SAMPLE_S = 1.0  # the gauge is the worst of the gateway's last 20 heartbeat timers (5 s by default)
LOOP_LAG_LINE = re.compile(r"^letmesh_gateway_event_loop_lag_seconds ([0-9.eE+-]+)$", re.MULTILINE)
# What a role logs when one of its actors dies (its supervisor restarts it inside the same process).
ACTOR_CRASH = re.compile(r"mesh\.actor: actor (\S+) crashed")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Escalated)\b.*")


class LoggedMesh(LocalMesh):
    """A LocalMesh whose roles write stderr to ``<state_dir>/logs/<role>.log`` (workers share the
    agent's), so the benchmark can count actor crashes a role survived by restarting the actor."""

    def start_role(self, role: str) -> subprocess.Popen:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{role}.log", "ab") as err:
            proc = subprocess.Popen(
                self.command(role), env=dict(os.environ, **self.extra_env), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, preexec_fn=die_with_parent,
            )
        self.procs[role] = proc
        return proc


@dataclass
class CrashLog:
    """Reads what the roles logged since the last read: actor crashes and the exceptions named."""

    logs: Path
    offsets: dict[str, int] = field(default_factory=dict)

    def read(self) -> dict[str, Any]:
        crashes: dict[str, int] = {}
        errors: list[str] = []
        for path in sorted(self.logs.glob("*.log")):
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path.name, 0))
                text = f.read().decode("utf-8", "replace")
                self.offsets[path.name] = f.tell()
            role = path.stem
            for line in text.splitlines():
                if m := ACTOR_CRASH.search(line):
                    key = f"{role}/{m.group(1)}"
                    crashes[key] = crashes.get(key, 0) + 1
                elif EXCEPTION_LINE.match(line) and f"{role}: {line[:160]}" not in errors and len(errors) < 8:
                    errors.append(f"{role}: {line[:160]}")
        return {"actor_crashes": crashes, "exceptions": errors}

MARKER_ENV = "LETMESH_CHAOS_RUN"  # every process of a run carries it, so leftovers can be found


@dataclass
class MeshUnderTest:
    """One local mesh and the bookkeeping the faults need. Used from one thread."""

    repository: Path
    state_dir: Path
    log_level: str = "WARNING"
    mesh: LocalMesh = field(init=False)

    def __post_init__(self) -> None:
        self.mesh = LoggedMesh(repository=self.repository, state_dir=self.state_dir, log_level=self.log_level,
                               extra_env={MARKER_ENV: str(self.state_dir)})
        self.crash_log = CrashLog(self.state_dir / "logs")

    @property
    def marker(self) -> str:
        return f"{MARKER_ENV}={self.state_dir}"

    @property
    def url(self) -> str:
        return self.mesh.http_url

    def start(self, timeout_s: float) -> str:
        """Start every role and wait for readiness; '' when ready, else why not (the roles stay up)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for role in ROLES:
            self.mesh.start_role(role)
        try:
            self.mesh.wait_ready(timeout_s)
        except LaunchError as exc:
            return str(exc)
        return ""

    def stop(self) -> list[int]:
        """Stop every role; the pids of this mesh's processes still alive a few seconds later."""
        for pid in self.stopped_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.mesh.stop()
        deadline = time.monotonic() + 10.0
        while (left := procfs.processes_mentioning(self.marker)) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def pid(self, role: str) -> int | None:
        proc = self.mesh.procs.get(role)
        return proc.pid if proc is not None and proc.poll() is None else None

    def status(self, timeout_s: float = 2.0):
        try:
            return fetch_status(self.mesh.controller_address, timeout_s=timeout_s)
        except StatusUnavailable:
            return None

    def loop_lag_s(self) -> float | None:
        """The gateway's ``letmesh_gateway_event_loop_lag_seconds`` now; None if it cannot be read."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=0.3) as reply:
                text = reply.read().decode()
        except (OSError, ValueError):
            return None
        found = LOOP_LAG_LINE.search(text)
        return float(found.group(1)) if found else None

    def worker_pids(self) -> dict[str, int]:
        """Live worker processes, by pid, from /proc (the agent's children): needs no controller."""
        agent = self.pid("agent")
        return {str(p): p for p in procfs.children(agent)} if agent else {}

    def stopped_pids(self) -> list[int]:
        pids = [p for p in (self.pid(r) for r in ROLES) if p] + list(self.worker_pids().values())
        return [p for p in pids if procfs.state(p) == "T"]

    def health(self) -> str:
        """'' when the mesh serves as before a fault, else what is wrong (a user-visible symptom)."""
        dead = [r for r in ROLES if self.pid(r) is None]
        if dead:
            return f"not running: {', '.join(dead)}"
        if http_status(self.url + "/v2/health/ready") != 200:
            return "gateway not ready"
        status = self.status()
        if status is None:
            return "controller does not answer"
        if f"tcp://127.0.0.1:{self.mesh.data_port}" not in {split_server_key(g)[0] for g in status.gateways}:
            return "gateway not registered at the controller"
        if not status.workers or any(w.state != "ready" for w in status.workers):
            return "workers not ready: " + ", ".join(f"{w.worker_id}={w.state}" for w in status.workers)
        if not all(a.alive for a in status.agents):
            return "agent lost"
        return ""

    def wait_healthy(self, timeout_s: float, seen: list[str] | None = None) -> str:
        """'' once healthy, else the problem still there after ``timeout_s``; ``seen`` collects each
        distinct problem met on the way (a mesh can pass through several before it heals)."""
        deadline = time.monotonic() + timeout_s
        while (problem := self.health()) and time.monotonic() < deadline:
            if seen is not None and problem not in seen and len(seen) < 10:
                seen.append(problem)
            time.sleep(0.25)
        return problem

    def restart_role(self, role: str, wait_s: float = 15.0) -> int | None:
        """Stop what is left of ``role`` (SIGTERM, then SIGKILL) and start it again; its old exit code."""
        code = self.mesh.stop_role(role, timeout_s=wait_s)
        self.mesh.start_role(role)
        return code

    def heal(self, timeout_s: float) -> dict[str, Any]:
        """Back to a healthy mesh: restart dead roles, then the gateway, then everything."""
        steps: list[str] = []
        seen: list[str] = []
        for pid in self.stopped_pids():
            os.kill(pid, signal.SIGCONT)
            steps.append(f"SIGCONT {pid}")
        problem = self.wait_healthy(timeout_s, seen)
        for role in ROLES:
            if problem and self.pid(role) is None:
                self.restart_role(role)
                steps.append(f"restarted {role}")
        if steps and problem:
            problem = self.wait_healthy(timeout_s, seen)
        if problem.startswith("gateway"):
            self.restart_role("gateway")
            steps.append(f"restarted gateway ({problem})")
            problem = self.wait_healthy(timeout_s, seen)
        if problem:
            steps.append(f"restarted the mesh ({problem})")
            self.mesh.stop()
            problem = self.start(timeout_s) or self.wait_healthy(timeout_s, seen)
        return {"healthy": not problem, "problem": problem, "steps": steps, "problems_seen": seen}


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """What one fault class does. ``inject`` returns notes and the pids it ends on purpose."""

    name: str
    describe: str
    inject: Callable[[MeshUnderTest], tuple[dict[str, Any], set[int]]]
    heal_after_s: float | None = None
    heal: Callable[[MeshUnderTest], dict[str, Any]] | None = None
    expected_worker_restarts: int = 0


@dataclass(slots=True)
class Watch:
    """Processes seen alive during a phase, and the ones that went away without being told to.

    A worker leaving is not by itself a crash (a re-plan stops workers on purpose); the controller's
    restart counts say which exits were crashes.
    """

    seen: dict[int, str] = field(default_factory=dict)
    exits: list[dict[str, Any]] = field(default_factory=list)
    worker_exits: list[dict[str, Any]] = field(default_factory=list)
    expected: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)
    loop_lag_max_s: float | None = None  # the gateway's own event-loop lag gauge, sampled once a second
    _lag_due: float = 0.0

    def poll(self, target: MeshUnderTest, t0: float) -> None:
        if time.monotonic() >= self._lag_due:
            self._lag_due = time.monotonic() + LAG_SAMPLE_S
            lag = target.loop_lag_s()
            if lag is not None:
                self.loop_lag_max_s = max(self.loop_lag_max_s or 0.0, lag)
        for role in ROLES:
            if (pid := target.pid(role)) is not None and pid not in self.gone:
                self.seen.setdefault(pid, role)
        for pid in target.worker_pids().values():
            if pid not in self.gone:
                self.seen.setdefault(pid, "worker")
        for pid, what in list(self.seen.items()):
            if not procfs.alive(pid):
                del self.seen[pid]
                self.gone.add(pid)
                if pid not in self.expected:
                    into = self.worker_exits if what == "worker" else self.exits
                    into.append({"process": what, "pid": pid, "at_s": round(time.monotonic() - t0, 2)})


def restarts_total(target: MeshUnderTest) -> int | None:
    status = target.status()
    return None if status is None else sum(w.restarts for w in status.workers)


def run_phase(target: MeshUnderTest, streams: tuple[Stream, ...], fault: Fault | None, *, duration_s: float,
              fault_at_s: float, deadline_ms: float, client_timeout_s: float,
              recovery_from_s: float | None = None) -> dict[str, Any]:
    """Load for ``duration_s``; the fault ``fault_at_s`` into it; the figures of what the client saw.

    ``recovery_from_s`` (offset into the run) overrides where recovery is measured from (the end of an
    overload burst rather than its start).
    """
    restarts_before = restarts_total(target)
    target.crash_log.read()  # what happened before this phase is not its doing
    load = LoadRun(target.url, streams, duration_s=duration_s, client_timeout_s=client_timeout_s)
    t0 = load.start()
    watch = Watch()
    fault_t: float | None = None
    healed = fault is None or fault.heal is None
    notes: dict[str, Any] = {}
    while load.running():
        now = time.monotonic()
        watch.poll(target, t0)
        if fault is not None and fault_t is None and now >= t0 + fault_at_s:
            fault_t = time.monotonic()
            fault_notes, ended = fault.inject(target)
            notes.update(fault_notes)
            watch.expected |= ended
        if fault_t is not None and not healed and now >= fault_t + (fault.heal_after_s or 0.0):
            healed = True
            notes.update(fault.heal(target))
        time.sleep(0.05)
    outcomes = load.join()
    watch.poll(target, t0)
    if recovery_from_s is not None:
        fault_t = t0 + recovery_from_s
    result = summarise(outcomes, fault_at=fault_t, deadline_ms=deadline_ms)
    result["by_stream"] = {s.label: summarise([o for o in outcomes if o.stream == s.label], fault_at=fault_t,
                                              deadline_ms=deadline_ms) for s in streams}
    restarts_after = restarts_total(target)
    restarts = None if restarts_before is None or restarts_after is None else restarts_after - restarts_before
    logged = target.crash_log.read()
    expected_restarts = fault.expected_worker_restarts if fault else 0
    unexpected_restarts = max(0, (restarts or 0) - expected_restarts)
    result.update(
        fault=fault.name if fault else "none",
        describe=fault.describe if fault else "steady load, no fault",
        notes=notes,
        unexpected_exits=watch.exits,
        worker_exits=watch.worker_exits,
        worker_restarts=restarts,
        actor_crashes=logged["actor_crashes"],
        exceptions=logged["exceptions"],
        crashes=len(watch.exits) + unexpected_restarts + sum(logged["actor_crashes"].values()),
        gateway_loop_lag_max_ms=None if watch.loop_lag_max_s is None else round(watch.loop_lag_max_s * 1e3, 1),
        # Past this the client could not keep its schedule on this machine: the figures say as much
        # about the client as about the mesh.
        client_bound=(result["client_lag_p99_ms"] or 0.0) > CLIENT_BOUND_LAG_MS,
    )
    return result
