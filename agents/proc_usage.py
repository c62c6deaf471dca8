"""What a worker process uses of its host, read from Linux's /proc: resident memory now and at its
peak, and CPU time. The agent reads it at scrape time for its metrics; elsewhere (no /proc) there
is nothing to read and the answer is None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    resident_bytes: int  # VmRSS: what the process holds in memory now
    peak_resident_bytes: int  # VmHWM: the most it has held since it started
    cpu_seconds: float  # user + system time of all its threads


def process_usage(pid: int) -> ProcessUsage | None:
    """``pid``'s usage, or None when the process is gone, a zombie, or /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    kib = {}
    try:
        for line in status.splitlines():
            key, _, value = line.partition(b":")
            if key in (b"VmRSS", b"VmHWM"):
                kib[key] = int(value.split()[0])
        # The command name (field 2) may hold spaces and parentheses: fields count after its last ")".
        fields = stat[stat.rindex(b")") + 2:].split()
        utime, stime = int(fields[11]), int(fields[12])
    except (ValueError, IndexError):
        return None  # not the layout this reads
    if len(kib) < 2:
        return None  # a zombie has no memory lines: it holds nothing
    return ProcessUsage(resident_bytes=kib[b"VmRSS"] * 1024, peak_resident_bytes=kib[b"VmHWM"] * 1024,
                        cpu_seconds=(utime + stime) / _CLOCK_TICKS)
