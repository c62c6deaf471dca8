"""Whether a TCP port can be bound here, and which process holds it when it cannot.

Used by ``letmesh up`` before it starts anything. The holder is looked up in ``/proc`` (Linux):
the listening socket's inode, then the process with that inode among its open files. That finds
only processes this user may inspect; otherwise the holder is unknown and the message says so.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_BOUND = {"0A", "07"}  # TCP states in /proc/net/tcp: listening, and bound but not listening


class PortTaken(Exception):
    """A port a role must bind is already bound by another socket."""

    def __init__(self, port: int, host: str, purpose: str, holder: str | None) -> None:
        self.port, self.host, self.purpose, self.holder = port, host, purpose, holder
        held = f"held by {holder}" if holder else "by a process not visible to this user"
        super().__init__(f"port {port} ({purpose}, {host}) is already in use, {held}")


class PortsClash(Exception):
    """Two roles of one mesh were given the same port."""

    def __init__(self, port: int, first: str, second: str) -> None:
        self.port = port
        super().__init__(f"{first} and {second} would both bind port {port}")


def distinct(ports: list[tuple[str, int, str]]) -> None:
    """Raise :class:`PortsClash` when two of ``(host, port, purpose)`` name one port (0: any port)."""
    seen: dict[int, str] = {}
    for _, port, purpose in ports:
        if port and port in seen:
            raise PortsClash(port, seen[port], purpose)
        seen[port] = purpose


def check_free(host: str, port: int, purpose: str) -> None:
    """Raise :class:`PortTaken` when ``host:port`` cannot be bound for listening; port 0 is always free.

    The probe sets SO_REUSEADDR as our servers do, so a port left in TIME_WAIT by a mesh that
    just stopped counts as free, while one with a listener on it does not.
    """
    if port == 0:
        return
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise PortTaken(port, host, purpose, holder(port)) from None


def holder(port: int, proc: Path = Path("/proc")) -> str | None:
    """``pid N (command line)`` of a process bound to TCP ``port``, or None when none can be seen."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    return f"pid {entry.name} ({_command_line(entry)})"
            except OSError:
                continue
    return None


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] in _BOUND and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _command_line(entry: Path, limit: int = 120) -> str:
    try:
        words = (entry / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(" ".join(w.decode(errors="replace").split()) for w in words if w)
    return text if len(text) <= limit else text[: limit - 3] + "..."
