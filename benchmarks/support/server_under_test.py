"""Servers under test, pinned to their cores: a whole letmesh mesh or the plain baseline, with their CPU use.

Every process of a server (a mesh's controller, gateway, agent and the workers the agent spawns
later) inherits the cores it was started on: the starting thread pins itself while it launches.
CPU time is read from /proc for the server's whole process tree. An entry point's helper: may
import everything.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from agents.process import die_with_parent
from benchmarks.support import procfs
from letmesh.launcher import LocalMesh, free_port, http_status
from letmesh.status import fetch_status

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_ROOT = Path(__file__).resolve().parents[2]


def pick_cores(server_cores: int = 1) -> tuple[tuple[int, ...], int]:
    """(server cores, load-generator core): the first ``server_cores`` usable cores and the next one;
    the generator shares the server's first core when no other is left."""
    cores = sorted(os.sched_getaffinity(0))
    server = tuple(cores[:max(1, server_cores)])
    rest = cores[len(server):]
    return server, rest[0] if rest else server[0]


@contextlib.contextmanager
def pinned(cores: int | Iterable[int]):
    """This thread (and every process it starts meanwhile) on ``cores``; the previous set restored after."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cores} if isinstance(cores, int) else set(cores))
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and of its reaped children (so a child that exits mid-interval still counts)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) * _TICK_S


class Server:
    """A server under test pinned to one core: its root pids, its CPU, its affinity."""

    name: str
    port: int
    roots: list[int]

    def pids(self) -> list[int]:
        return [p for root in self.roots for p in (root, *procfs.descendants(root))]

    def cpu_s(self) -> float:
        return sum(_cpu_s(p) for p in self.pids())

    def idle_cpu_ms_per_s(self, seconds: float) -> float:
        """CPU the server spends per second with no request at all (heartbeats, timers), to the ns."""
        pids = self.pids()
        before = sum(procfs.on_cpu_s(p) for p in pids)
        start = time.monotonic()
        time.sleep(seconds)
        return (sum(procfs.on_cpu_s(p) for p in pids) - before) / (time.monotonic() - start) * 1e3

    def runtimes(self) -> dict[str, str]:
        """The runtime notes its workers report per variant (a conversion, or why one was not made)."""
        return {}

    def part(self, pid: int) -> str:
        """Which part of the server ``pid`` is, for the CPU breakdown."""
        return "server"

    def cpu_s_by_part(self) -> dict[str, float]:
        """On-CPU seconds so far of each part of the server (``part``), its ZeroMQ I/O threads apart
        as "<part> ZeroMQ I/O"; live threads only (see ``procfs.on_cpu_s``)."""
        parts: dict[str, float] = {}
        for pid in self.pids():
            name = self.part(pid)
            for kind, seconds in procfs.on_cpu_s_by_thread_kind(pid).items():
                key = name if kind == "own" else f"{name} ZeroMQ I/O"
                if seconds or kind == "own":
                    parts[key] = parts.get(key, 0.0) + seconds
        return parts

    def affinity(self) -> list[int]:
        cores: set[int] = set()
        for pid in self.pids():
            with contextlib.suppress(OSError):
                cores |= os.sched_getaffinity(pid)
        return sorted(cores)

    def stop(self) -> None:
        raise NotImplementedError


class MeshServer(Server):
    def __init__(self, repo: Path, state: Path, cores: tuple[int, ...], *, onnx_upgrade: bool = False,
                 extra_env: dict[str, str] | None = None) -> None:
        self.name = "letmesh"
        self.mesh = LocalMesh(repository=repo, state_dir=state, max_cores=len(cores), log_level="ERROR",
                              onnx_upgrade=onnx_upgrade, extra_env=dict(extra_env or {}))
        with pinned(cores):  # every role, and every worker an agent spawns, inherits the server's cores
            self.mesh.start(timeout_s=300)
        self.port = self.mesh.http_port
        self.roots = [proc.pid for proc in self.mesh.procs.values()]
        status = fetch_status(self.mesh.controller_address, keys_dir=self.mesh.keys_dir)
        self._runtimes = {v: r for w in status.workers for v, r in w.runtimes.items()}

    def runtimes(self) -> dict[str, str]:
        return dict(self._runtimes)

    def part(self, pid: int) -> str:
        args = procfs.argv(pid)
        for module, name in (("agents.worker", "worker"), ("agents.profiler", "profiler")):
            if module in args:
                return name
        return next((role for role in ("controller", "gateway", "agent") if role in args), "other")

    def stop(self) -> None:
        self.mesh.stop()


class BaselineServer(Server):
    def __init__(self, artifact: Path, backend: str, variant: str, cores: tuple[int, ...], device: str = "cpu") -> None:
        self.name = "baseline"
        self.port = free_port()
        command = [sys.executable, "-m", "benchmarks.support.baseline_server", "--artifact", str(artifact),
                   "--backend", backend, "--variant", variant, "--port", str(self.port), "--device", device]
        with pinned(cores):
            # Killed with the benchmark, as the mesh's roles are (a benchmark killed mid-run left it serving).
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         cwd=_ROOT, preexec_fn=die_with_parent)
        self.roots = [self.proc.pid]
        deadline = time.monotonic() + 120
        while http_status(f"http://127.0.0.1:{self.port}/v2/health/ready") != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"baseline server did not start (exit code {self.proc.returncode})")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def settle(server: Server, *, busy_below: float = 0.1, window_s: float = 1.0, timeout_s: float = 120.0) -> float:
    """Wait (at most ``timeout_s``) until the server idles: under ``busy_below`` of a core over ``window_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        before = server.cpu_s()
        time.sleep(window_s)
        if server.cpu_s() - before < busy_below * window_s:
            break
    return time.monotonic() - start
