"""Hosts on one machine: a Linux bridge and one network namespace per host, with link cuts.

``NetnsLab`` creates a bridge in the root namespace (with an address, so this process reaches
every host through it, like a client on the LAN) and, per host, a namespace with a veth pair
into the bridge, a 10.203.N.x/24 address and loopback up. ``cut(host)`` disables the host's
bridge port (frames dropped silently both ways, no carrier change: what a real partition looks
like to the peers); ``heal(host)`` forwards again. Processes run inside a namespace in their own
process group and are all killed at ``close()``, which also deletes every namespace, veth and
the bridge, whatever state the test left them in.

Names carry the creating process's pid (``lmn<pid><k>-<host>``; interface names stay under the
kernel's 15 characters), so parallel runs never collide and a later run removes what a crashed
one left behind (names whose pid is gone). Each lab takes its own /24 under 10.203.0.0/16,
chosen under a lock among those no interface of this machine holds. Needs root and ``ip``.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.process import die_with_parent

log = logging.getLogger(__name__)

SUPERNET = "10.203"  # our labs live in 10.203.N.0/24, one N per lab
LOCK_PATH = Path("/run/letmesh-netns.lock")
_NAME = re.compile(r"^lmn(\d+)([a-z])")
_counter = itertools.count()


class NetnsUnavailable(Exception):
    """This process cannot create network namespaces (not root, or no ``ip netns``)."""


def unavailable_reason() -> str | None:
    """Why a lab cannot run here, or None when it can (checked by creating and deleting a namespace)."""
    if os.geteuid() != 0:
        return "multi-host tests need root (network namespaces, veth, bridge)"
    if shutil.which("ip") is None or shutil.which("bridge") is None:
        return "multi-host tests need iproute2 (`ip`, `bridge`)"
    probe = f"lmn{os.getpid()}z-probe"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"multi-host tests need network namespaces; `ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespace_pids(namespace: str) -> list[int]:
    done = _ip("netns", "pids", namespace, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_all_in(namespace: str, timeout_s: float = 5.0) -> None:
    """SIGKILL every process inside ``namespace`` until none is left (bounded)."""
    deadline = time.monotonic() + timeout_s
    while (pids := namespace_pids(namespace)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def remove_stale() -> list[str]:
    """Delete namespaces and links a crashed earlier run left (their creator's pid is gone)."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _kill_all_in(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _NAME.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    if removed:
        log.warning("removed what an earlier run left behind: %s", ", ".join(removed))
    return removed


def _subnets_in_use() -> set[int]:
    used = set()
    for m in re.finditer(rf"inet {re.escape(SUPERNET)}\.(\d+)\.", _ip("-4", "-o", "addr", "show", check=False).stdout):
        used.add(int(m.group(1)))
    return used


@dataclass
class Host:
    name: str
    namespace: str
    port: str  # its bridge port, in the root namespace
    address: str


class NetnsLab:
    """A bridge and one namespace per host. One owner thread; ``close()`` is idempotent.

    Invariant: every process started through ``spawn`` runs in its own process group inside one
    of this lab's namespaces, and ``close()`` leaves no such process, namespace, veth or bridge.
    """

    def __init__(self, hosts: Sequence[str], *, log_dir: Path) -> None:
        self.tag = f"lmn{os.getpid()}{chr(ord('a') + next(_counter) % 26)}"
        self.bridge = f"{self.tag}br"
        self.log_dir = log_dir
        self.hosts: dict[str, Host] = {}
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._initial = list(hosts)
        self._subnet = -1
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> NetnsLab:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(LOCK_PATH, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                remove_stale()
                free = [n for n in range(1, 255) if n not in _subnets_in_use()]
                if not free:
                    raise NetnsUnavailable(f"no free /24 left in {SUPERNET}.0.0/16")
                self._subnet = free[0]
                _ip("link", "add", "name", self.bridge, "type", "bridge")
                _ip("addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            for name in self._initial:
                self.add_host(name)
        except BaseException:
            self.close()
            raise

    @property
    def gateway_address(self) -> str:
        """This (root) namespace's address on the bridge."""
        return f"{SUPERNET}.{self._subnet}.254"

    def add_host(self, name: str) -> Host:
        """A new namespace plugged into the bridge (hosts may join after the lab opened)."""
        if name in self.hosts or not re.fullmatch(r"[a-z0-9]{1,8}", name):
            raise ValueError(f"host name {name!r}: 1-8 lowercase letters or digits, unique")
        index = len(self.hosts) + 1
        host = Host(name=name, namespace=f"{self.tag}-{name}", port=f"{self.tag}p{index}",
                    address=f"{SUPERNET}.{self._subnet}.{index}")
        self.hosts[name] = host  # registered first, so close() removes a half-made host too
        _ip("netns", "add", host.namespace)
        _ip("link", "add", "name", host.port, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        _ip("link", "set", host.port, "master", self.bridge)
        _ip("link", "set", host.port, "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Stop every process (SIGTERM to its group, then SIGKILL), delete namespaces and links."""
        if self._closed:
            return
        self._closed = True
        for _, proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
        for _, proc in self.procs:
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                log.error("process %d survived SIGKILL", proc.pid)
        for host in self.hosts.values():
            _kill_all_in(host.namespace)  # whatever escaped its group (a worker in its own session)
            _ip("netns", "del", host.namespace, check=False)  # takes the veth pair with it
            _ip("link", "del", host.port, check=False)
        if self._subnet >= 0:
            _ip("link", "del", self.bridge, check=False)

    # --- processes -------------------------------------------------------------------------

    def address(self, host: str) -> str:
        return self.hosts[host].address

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host].namespace, *argv]

    def spawn(self, host: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
              label: str = "") -> subprocess.Popen:
        """Start ``argv`` inside ``host`` in a new process group; output goes to a log file.

        The process is killed by the kernel if the thread that spawned it ends (call this from a
        long-lived thread), so a test runner killed outright leaves no role running.
        """
        label = label or f"{host}-{len(self.procs)}"
        out = open(self.log_dir / f"{label}.log", "ab")
        try:
            proc = subprocess.Popen(self.command(host, argv), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=die_with_parent)
        finally:
            out.close()
        self.procs.append((host, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
        """SIGTERM ``proc``'s group, SIGKILL after ``timeout_s``; returns its exit code."""
        _signal_group(proc, signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            return proc.wait(5.0)

    def pids(self, host: str) -> list[int]:
        """Every process running inside ``host``'s namespace."""
        return namespace_pids(self.hosts[host].namespace)

    # --- faults ----------------------------------------------------------------------------

    def cut(self, host: str) -> None:
        """Drop every frame to and from ``host`` (its bridge port disabled; its link stays up)."""
        subprocess.run(["bridge", "link", "set", "dev", self.hosts[host].port, "state", "0"], check=True,
                       capture_output=True, timeout=10)

    def heal(self, host: str) -> None:
        subprocess.run(["bridge", "link", "set", "dev", self.hosts[host].port, "state", "3"], check=True,
                       capture_output=True, timeout=10)

    def log_tail(self, label: str, lines: int = 20) -> str:
        path = self.log_dir / f"{label}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass

