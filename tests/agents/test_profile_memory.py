"""What a co-runner would add, against what a device's memory has left beside its processes."""

from __future__ import annotations

import os

from agents.proc_usage import ProcessUsage
from agents.profile_memory import corunner_shortfall, corunner_shortfall_now

MIB = 1 << 20


def usage(own_mib: int, shared_mib: int = 90) -> ProcessUsage:
    peak = (own_mib + shared_mib) * MIB
    return ProcessUsage(resident_bytes=peak, peak_resident_bytes=peak, cpu_seconds=1.0,
                        shared_resident_bytes=shared_mib * MIB)


def test_a_co_runner_fits_where_the_offer_and_the_kernel_both_hold_one_more_profiler() -> None:
    # The 600 MiB board as measured: the agent offers 543 MiB; a worker and the profiler hold
    # 168 and 170 MiB of their own, and the files they map are charged once, or to another cgroup.
    worker, profiler = usage(168), usage(170)
    assert corunner_shortfall(543 * MIB, [worker, profiler], profiler) == 0  # 205 MiB left for 170
    assert corunner_shortfall(543 * MIB, [worker, profiler], profiler, headroom=200 * MIB) == 0
    # The kernel charged the 96 MiB of libraries here: 110 MiB left, 60 short.
    assert corunner_shortfall(543 * MIB, [worker, profiler], profiler, headroom=110 * MIB) == 60 * MIB
    assert corunner_shortfall(543 * MIB, [worker, profiler], profiler, headroom=0) == 170 * MIB  # at the limit
    # An operator's 400 MiB cap: 62 MiB left of it, whatever the kernel would allow.
    assert corunner_shortfall(400 * MIB, [worker, profiler], profiler, headroom=1 << 40) == 108 * MIB


def test_nothing_known_holds_nothing_back() -> None:
    assert corunner_shortfall(0, [usage(147)], usage(147)) == 0  # the device says nothing of its memory
    assert corunner_shortfall(100 * MIB, [usage(147)], None) == 0  # the profiler could not be read


def test_processes_are_read_from_proc_and_gone_ones_hold_nothing() -> None:
    me = os.getpid()
    assert corunner_shortfall_now(1 << 40, [me, 2 ** 22 + 1], me) == 0  # (unless this host is out of memory)
    assert corunner_shortfall_now(1 * MIB, [2 ** 22 + 1], me) > 0  # this process alone fills 1 MiB
