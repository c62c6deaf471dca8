"""How the data plane's processes take turns on a core they share: the kernel's scheduling policy.

On one host the gateway and the workers run on the same cores (an edge board, ``letmesh up``).
Under the default policy (SCHED_OTHER) a process woken by a message preempts the one running: a
request arriving at the gateway interrupts a worker mid-batch, and the worker, woken by the
gateway's send, interrupts the gateway mid-parse. Each interruption switches context and caches,
and the batch being computed finishes later for every request in it. Under SCHED_BATCH a woken
process does not preempt: it runs when the running one blocks, or at the scheduler's tick once
that one's slice is spent, so the core is still shared fairly and nothing waits longer than a
slice and a tick (a few milliseconds). Each side then finishes what it holds before the other
starts: fewer switches, the gateway forwards what arrived meanwhile together, batches finish
sooner. ``benchmarks/cpu_policy.py`` measures both policies on one mesh, side by side.

Policies by name: "batch" or "normal" (SCHED_OTHER). A policy set from outside the process (a
real-time one, SCHED_IDLE, by ``chrt``) is left as it is. Linux only; elsewhere nothing changes.
"""

from __future__ import annotations

import os

POLICIES = ("batch", "normal")
# A worker's policy, from its agent's [agent] worker_cpu_policy.
ENV = "LETMESH_CPU_POLICY"


def _codes() -> dict[str, int]:
    return {"batch": os.SCHED_BATCH, "normal": os.SCHED_OTHER}


def apply(policy: str) -> str | None:
    """Give every thread of this process ``policy``; threads started later inherit it from the
    thread that starts them. Returns None, or why it could not be set (the platform has no such
    call, the system refused it). ValueError for a policy not in POLICIES."""
    if policy not in POLICIES:
        raise ValueError(f"unknown CPU policy {policy!r}: one of {', '.join(POLICIES)}")
    if not hasattr(os, "sched_setscheduler"):
        return "this platform has no scheduling policies"
    codes = _codes()
    ours = set(codes.values())
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # no /proc: the calling thread, before it starts any other
    for tid in threads:
        try:
            if os.sched_getscheduler(tid) not in ours:
                continue  # set from outside: not ours to change
            os.sched_setscheduler(tid, codes[policy], os.sched_param(0))
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except OSError as exc:
            return f"{policy}: {exc.strerror or exc}"
    return None


def policy_of(tid: int) -> str:
    """The policy a thread or process runs under: "batch", "normal", or "other" (set from outside)."""
    code = os.sched_getscheduler(tid)
    return next((name for name, c in _codes().items() if c == code), "other")
