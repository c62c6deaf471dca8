"""``letmesh gateway`` runs under its configured CPU policy ([gateway] cpu_policy), every thread of it."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
import typing

import pytest

from agents.config import AgentConfig
from gateway.config import GatewayConfig
from letmesh.launcher import free_port
from mesh import cpu_policy

pytestmark = pytest.mark.timeout(120)

START_S = 60.0  # a fresh interpreter importing the gateway on a loaded 2-core machine
STARTED = "letmesh gateway: HTTP"


def test_the_configs_offer_the_policies_the_module_knows() -> None:
    for config in (GatewayConfig, AgentConfig):
        field = "cpu_policy" if config is GatewayConfig else "worker_cpu_policy"
        assert typing.get_args(typing.get_type_hints(config)[field]) == cpu_policy.POLICIES
        assert getattr(config(), field) == "batch"


def start_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The gateway's start line, or "" if it does not print one in time."""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = proc.stdout.readline()
                if STARTED in line:
                    return line
    return ""


@pytest.mark.skipif(not cpu_policy.supported() or cpu_policy.policy_of(0) == "other",
                    reason="needs SCHED_BATCH, and a test runner under SCHED_OTHER or SCHED_BATCH")
@pytest.mark.parametrize("configured", [None, "normal", "batch"])
def test_a_gateway_runs_every_thread_under_its_cpu_policy(configured) -> None:
    expected = configured or "batch"
    env = {k: v for k, v in os.environ.items() if k != "LETMESH_GATEWAY_CPU_POLICY"}
    if configured:
        env["LETMESH_GATEWAY_CPU_POLICY"] = configured
    other = {"batch": os.SCHED_OTHER, "normal": os.SCHED_BATCH}[expected]
    # No controller answers: the gateway starts, serves HTTP and keeps dialling. It starts under
    # the other policy, so only its own setting can give the one expected.
    cmd = [sys.executable, "-m", "letmesh", "gateway", "--http-port", str(free_port()),
           "--data-bind", f"tcp://127.0.0.1:{free_port()}", "--controller", f"tcp://127.0.0.1:{free_port()}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setscheduler(0, other, os.sched_param(0)))
    try:
        assert start_line(proc, START_S), "the gateway printed no start line"
        threads = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert len(threads) > 1  # the event loop's and ZeroMQ's
        assert {cpu_policy.policy_of(t) for t in threads} == {expected}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err
