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
    # RssFile + RssShmem: pages of files and shared memory it maps, as the kernel counts them now
    # (shared libraries: other processes that map the same files share these pages)
    shared_resident_bytes: int = 0

    def own_peak_bytes(self) -> int:
        """The peak less what it maps of files and shared memory now: about the most memory of its
        own it has held (its heap, arenas and models), what one more such process would add."""
        return max(0, self.peak_resident_bytes - self.shared_resident_bytes)


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
            if key in (b"VmRSS", b"VmHWM", b"RssFile", b"RssShmem"):
                kib[key] = int(value.split()[0])
        # The command name (field 2) may hold spaces and parentheses: fields count after its last ")".
        fields = stat[stat.rindex(b")") + 2:].split()
        utime, stime = int(fields[11]), int(fields[12])
    except (ValueError, IndexError):
        return None  # not the layout this reads
    if b"VmRSS" not in kib or b"VmHWM" not in kib:
        return None  # a zombie has no memory lines: it holds nothing
    return ProcessUsage(resident_bytes=kib[b"VmRSS"] * 1024, peak_resident_bytes=kib[b"VmHWM"] * 1024,
                        cpu_seconds=(utime + stime) / _CLOCK_TICKS,
                        shared_resident_bytes=(kib.get(b"RssFile", 0) + kib.get(b"RssShmem", 0)) * 1024)
