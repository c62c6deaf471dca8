"""What /proc says about the processes a benchmark started: alive, children, leftovers (memory and CPU
time: ``agents.proc_usage``)."""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path


def state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` ("R", "S", "T", "Z", ...); None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z", "X")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Children of ``pid``, their children, and so on (a snapshot: processes come and go)."""
    found: list[int] = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def on_cpu_s(pid: int) -> float:
    """Seconds ``pid``'s live threads have run, to the nanosecond (schedstat), unlike the 10 ms
    ticks of utime + stime; threads that already exited are not counted."""
    return sum(on_cpu_s_by_thread_kind(pid).values())


def on_cpu_s_by_thread_kind(pid: int) -> dict[str, float]:
    """``on_cpu_s`` of ``pid`` split in two: its ZeroMQ I/O threads ("zmq", libzmq names them
    ZMQbg/...) and all its other threads ("own")."""
    split = {"own": 0, "zmq": 0}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            name = Path(task, "comm").read_text().strip()
            ran = int(Path(task, "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        split["zmq" if name.startswith("ZMQbg") else "own"] += ran
    return {kind: ns / 1e9 for kind, ns in split.items()}


def argv(pid: int) -> list[str]:
    """``pid``'s command line as its arguments (empty when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it, for a benchmark's report."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def processes_mentioning(marker: str) -> list[int]:
    """Live pids (not this one) whose command line or environment contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if (marker.encode() in cmdline or marker.encode() in environ) and alive(int(entry)):
            found.append(int(entry))
    return found
