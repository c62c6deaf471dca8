"""Whether a device's memory holds a profiling run's co-runner beside what already runs on it.

A co-location measurement starts a second profiler process, the co-runner, beside the one that
measures. On a board whose memory the agent's workers and the measuring profiler nearly fill, that
second process is what makes the kernel kill one of them (the run then fails, and a worker with
it). The co-runner is an interpreter with the same runtime loading models of the same run, so the
measuring profiler's own peak (less the files it maps, which the two share) is what it will add.
It must fit twice over: in what the device offers its workers and profilers (the agent's offer,
an operator's cap included) less what each of them holds of its own, and in what the kernel lets
the agent's cgroups and the host take now (which sees the shared pages it charged, and those it
charged elsewhere, as they are). Read from /proc and the cgroup files at the moment the co-runner
would start; where nothing can be read, it is not held back.
"""

from __future__ import annotations

from collections.abc import Iterable

from agents.probe import memory_headroom_bytes
from agents.proc_usage import ProcessUsage, process_usage


def corunner_shortfall(offered: int, beside: Iterable[ProcessUsage], profiler: ProcessUsage | None,
                       headroom: int | None = None) -> int:
    """Bytes a co-runner like ``profiler`` lacks: in ``offered`` less the own peaks of the
    processes ``beside`` (``profiler`` among them), and in the kernel's ``headroom`` (None:
    unknown); 0 when it fits, or when nothing is known of the device or the profiler."""
    if offered <= 0 or profiler is None:
        return 0
    room = offered - sum(u.own_peak_bytes() for u in beside)
    if headroom is not None:
        room = min(room, headroom)
    return max(0, profiler.own_peak_bytes() - room)


def corunner_shortfall_now(offered: int, pids: Iterable[int], profiler_pid: int) -> int:
    """:func:`corunner_shortfall` of the live processes ``pids`` (gone ones hold nothing) and of
    the kernel's headroom now."""
    usages = [u for u in map(process_usage, set(pids) | {profiler_pid}) if u is not None]
    return corunner_shortfall(offered, usages, process_usage(profiler_pid), memory_headroom_bytes())
