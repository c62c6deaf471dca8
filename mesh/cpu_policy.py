"""How the data plane's processes take turns on a core they share: the kernel's scheduling policy.

On one host the gateway and the workers run on the same cores (an edge board, ``letmesh up``).
Under the default policy (SCHED_OTHER) a process woken by a message may preempt the one running:
a request arriving at the gateway interrupts a worker mid-batch, and the worker, woken by the
gateway's send, interrupts the gateway mid-request. Each interruption switches context and
caches, and the batch being computed finishes later for every request in it. Under SCHED_BATCH a
woken process does not preempt: it runs when the running one blocks, or at a scheduler tick once
that one's slice is spent, so the core is still shared fairly and each wake-up waits at most a
slice and a tick (4 ms at HZ=250, 10 ms at HZ=100). Each side then finishes what it holds before
the other starts: fewer switches, batches finish sooner. ``benchmarks/cpu_policy.py`` switches one
mesh between the two policies step by step and compares them.

Policies by name: "batch" or "normal" (SCHED_OTHER). A real-time or SCHED_IDLE policy set from
outside the process (``chrt``) is left as it is. Linux only: where the platform has no
SCHED_BATCH, nothing changes.
"""

from __future__ import annotations

import os

POLICIES = ("batch", "normal")
# A worker's policy, from its agent's [agent] worker_cpu_policy.
ENV = "LETMESH_CPU_POLICY"
# Passes over the process's threads at most: one started during a pass by a thread not yet set
# is set by the next.
_PASSES = 3


def supported() -> bool:
    return hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH")


def _codes() -> dict[str, int]:
    return {"batch": os.SCHED_BATCH, "normal": os.SCHED_OTHER}


def _policy_code(tid: int) -> int:
    return os.sched_getscheduler(tid) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)


def apply(policy: str, pid: int | None = None) -> str | None:
    """Give every thread of this process (or of ``pid``) ``policy``; threads started later inherit
    it from the thread that starts them. Returns None (also where the platform has no such
    policies), or what the system refused, naming how many threads were left as they were.
    ValueError for a policy not in POLICIES."""
    if policy not in POLICIES:
        raise ValueError(f"unknown CPU policy {policy!r}: one of {', '.join(POLICIES)}")
    if not supported():
        return None
    codes = _codes()
    want, ours = codes[policy], set(codes.values())
    refused: dict[int, str] = {}
    for _ in range(_PASSES):
        try:
            threads = [int(tid) for tid in os.listdir(f"/proc/{pid or 'self'}/task")]
        except OSError:
            threads = [pid or 0]  # no /proc: the process's main thread
        changed = False
        for tid in threads:
            try:
                current = _policy_code(tid)
                if current == want or current not in ours or tid in refused:
                    continue  # already so, or set from outside: not ours to change
                os.sched_setscheduler(tid, want, os.sched_param(0))
                changed = True
            except ProcessLookupError:
                continue  # a thread that ended meanwhile
            except OSError as exc:
                refused[tid] = exc.strerror or str(exc)
        if not changed:
            break
    if refused:
        return f"{policy}: {next(iter(refused.values()))} ({len(refused)} thread(s) left as they were)"
    return None


def policy_of(tid: int) -> str:
    """The policy a thread or process runs under: "batch", "normal", or "other" (set from outside)."""
    code = _policy_code(tid)
    return next((name for name, c in _codes().items() if c == code), "other")
