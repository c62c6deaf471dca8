"""mesh.cpu_policy: a process's threads, those running and those it starts later, take the policy;
a real-time or idle one set from outside stays. Each case runs in a child process that starts
under the other policy: the policy is the process's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mesh import cpu_policy

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not cpu_policy.supported() or cpu_policy.policy_of(0) == "other",
                       reason="needs SCHED_BATCH, and a test runner under SCHED_OTHER or SCHED_BATCH"),
]

OPPOSITE = {"batch": "normal", "normal": "batch"}

CHILD = r"""
import json, os, sys, threading
from mesh import cpu_policy
first, then = sys.argv[1], sys.argv[2]
codes = {"batch": os.SCHED_BATCH, "normal": os.SCHED_OTHER, "idle": os.SCHED_IDLE,
         "normal+reset": os.SCHED_OTHER | os.SCHED_RESET_ON_FORK}
os.sched_setscheduler(0, codes[first], os.sched_param(0))  # the policy the process starts under
go, done = threading.Event(), threading.Event()
before = threading.Thread(target=lambda: (go.wait(), done.wait()))
before.start()  # running before the policy is set: inherits ``first``
out = {"before": sorted(cpu_policy.policy_of(int(t)) for t in os.listdir("/proc/self/task"))}
out["problem"] = cpu_policy.apply(then)
after = threading.Thread(target=lambda: (go.wait(), done.wait()))
after.start()  # started after: inherits what the main thread has now
go.set()
out["threads"] = sorted(cpu_policy.policy_of(int(t)) for t in os.listdir("/proc/self/task"))
done.set(); before.join(); after.join()
print(json.dumps(out))
"""


def run_child(first: str, then: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, first, then], capture_output=True, text=True, timeout=30,
                          check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("policy", cpu_policy.POLICIES)
def test_every_thread_running_and_started_later_takes_the_policy(policy) -> None:
    out = run_child(OPPOSITE[policy], policy)
    assert out["before"] == [OPPOSITE[policy]] * 2  # the other policy, until applied
    assert out["problem"] is None
    assert out["threads"] == [policy] * 3


def test_a_reset_on_fork_flag_is_read_through() -> None:
    out = run_child("normal+reset", "batch")
    assert out["before"] == ["normal"] * 2  # SCHED_OTHER with the flag is still "normal"
    assert out["threads"] == ["batch"] * 3


def test_a_policy_set_from_outside_is_left_as_it_is() -> None:
    out = run_child("idle", "batch")
    assert out["problem"] is None
    # The main thread (and the thread it started before) run SCHED_IDLE as set from outside; the
    # one started after inherits that too, not the policy asked for.
    assert out["threads"] == ["other"] * 3


def test_an_unknown_policy_is_refused_and_changes_nothing() -> None:
    before = cpu_policy.policy_of(0)
    with pytest.raises(ValueError, match="unknown CPU policy 'fifo'"):
        cpu_policy.apply("fifo")
    assert cpu_policy.policy_of(0) == before


def test_another_process_is_given_the_policy_thread_by_thread() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                              "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
                              "print('up', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        threads = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        target = OPPOSITE[cpu_policy.policy_of(child.pid)]
        assert cpu_policy.apply(target, child.pid) is None
        assert len(threads) == 2 and {cpu_policy.policy_of(t) for t in threads} == {target}
    finally:
        child.kill()
        child.wait()
