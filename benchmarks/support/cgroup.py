"""A real memory cgroup made for a benchmark or a test (root, and a memory controller: v2 where the
unified hierarchy has it, else v1), and what the kernel counted in it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class MemoryCgroup:
    path: Path
    v2: bool

    @property
    def procs(self) -> Path:
        """Write a pid here to move that process (and what it starts later) into the group."""
        return self.path / "cgroup.procs"

    def oom_kills(self) -> int:
        """Processes the kernel killed in the group for want of memory."""
        text = (self.path / ("memory.events" if self.v2 else "memory.oom_control")).read_text().split()
        fields = dict(zip(text[::2], text[1::2]))
        return int(fields.get("oom_kill", 0))

    def failed_charges(self) -> int:
        """Times the group hit its limit (v1's failcnt; v2: the ``max`` events)."""
        if self.v2:
            text = (self.path / "memory.events").read_text().split()
            return int(dict(zip(text[::2], text[1::2])).get("max", 0))
        return int((self.path / "memory.failcnt").read_text())

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text()) if (self.path / name).exists() else 0

    def remove(self) -> None:
        """The group's directory, once no process is left in it."""
        self.path.rmdir()


def memory_cgroup(limit_bytes: int, prefix: str = "letmesh") -> MemoryCgroup | None:
    """A new memory cgroup limited to ``limit_bytes``; None when this host lets us make none."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    for base, limit_file in ((Path("/sys/fs/cgroup"), "memory.max"), (Path("/sys/fs/cgroup/unified"), "memory.max"),
                             (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes")):
        v2 = limit_file == "memory.max"
        if not (base / limit_file).exists() and not (base / "cgroup.controllers").exists():
            continue
        if v2 and "memory" not in (base / "cgroup.controllers").read_text().split():
            continue
        group = base / name
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            (group / limit_file).write_text(str(limit_bytes))
            return MemoryCgroup(group, v2)
        except OSError:
            group.rmdir()
    return None
