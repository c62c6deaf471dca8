"""A worker's memory and CPU time as the agent's metrics read them, from real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from agents.proc_usage import process_usage

BOUND_S = 30.0
MIB = 1 << 20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")

# Touches 256 MiB, frees it, burns CPU for a while, then waits for stdin to close.
CHILD = r"""
import sys, time
block = bytearray(256 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
del block
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_process_that_held_memory_and_let_it_go_reads_its_peak_its_resident_set_and_cpu_time() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"  # bounded: the child either prints or exits
        usage = process_usage(child.pid)
        assert usage is not None
        assert usage.peak_resident_bytes >= 256 * MIB  # the block was resident once
        assert usage.resident_bytes < usage.peak_resident_bytes - 200 * MIB  # and given back
        assert usage.resident_bytes > 1 * MIB  # an interpreter is still there
        assert 0.3 <= usage.cpu_seconds < 60  # the busy loop's CPU time, counted in seconds
    finally:
        child.stdin.close()
        child.wait(timeout=BOUND_S)


def test_a_process_that_exited_reads_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:  # a zombie until reaped: no memory lines, so nothing to read
        usage = process_usage(child.pid)
        if usage is None:
            break
        time.sleep(0.05)
    assert process_usage(child.pid) is None
    child.wait(timeout=BOUND_S)
    assert process_usage(child.pid) is None  # reaped: gone from /proc


# Maps a 96 MiB file and reads every page of it (the pages are the file's, shared with any other
# process that maps it), then holds 64 MiB of its own.
MAPPER = r"""
import mmap, sys
with open(sys.argv[1], "rb") as f:
    view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
total = sum(view[i] for i in range(0, len(view), 4096))
own = bytearray(64 << 20)
for i in range(0, len(own), 4096):
    own[i] = 1
print("ready", flush=True)
sys.stdin.read()
"""


def test_pages_of_a_mapped_file_count_as_shared_and_not_as_the_processes_own(tmp_path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(b"\1" * (96 * MIB))
    child = subprocess.Popen([sys.executable, "-c", MAPPER, str(data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        usage = process_usage(child.pid)
        assert usage is not None
        assert usage.peak_resident_bytes >= 160 * MIB  # the file's pages and its own block
        assert usage.shared_resident_bytes >= 96 * MIB
        assert 64 * MIB <= usage.own_peak_bytes() < usage.peak_resident_bytes - 90 * MIB
    finally:
        child.stdin.close()
        child.wait(timeout=BOUND_S)
