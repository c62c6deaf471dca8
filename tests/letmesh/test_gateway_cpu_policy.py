"""``letmesh gateway`` runs under its configured CPU policy ([gateway] cpu_policy), every thread of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from letmesh.launcher import free_port
from mesh import cpu_policy

pytestmark = pytest.mark.timeout(120)

START_S = 60.0  # a fresh interpreter importing the gateway on a loaded 2-core machine


@pytest.mark.parametrize("configured", [None, "normal", "batch"])
def test_a_gateway_runs_every_thread_under_its_cpu_policy(configured) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LETMESH_GATEWAY_CPU_POLICY"}
    if configured:
        env["LETMESH_GATEWAY_CPU_POLICY"] = configured
    # No controller answers: the gateway starts, serves HTTP and keeps dialling.
    cmd = [sys.executable, "-m", "letmesh", "gateway", "--http-port", str(free_port()),
           "--data-bind", f"tcp://127.0.0.1:{free_port()}", "--controller", f"tcp://127.0.0.1:{free_port()}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + START_S
        line = ""
        while "letmesh gateway: HTTP" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "letmesh gateway: HTTP" in line, proc.stderr.read() if proc.poll() is not None else "no start line"
        threads = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert len(threads) > 1  # the event loop's and ZeroMQ's
        assert {cpu_policy.policy_of(t) for t in threads} == {configured or "batch"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
