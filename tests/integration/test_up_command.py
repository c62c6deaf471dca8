"""`letmesh up` brings a mesh up, says where to send requests, and stops it all on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from letmesh.launcher import free_port, http_status
from tests.integration.conftest import processes_mentioning, wait_until


def test_up_serves_and_sigterm_leaves_no_process_behind(tmp_path, trivial_repo) -> None:
    state = tmp_path / "state"
    http_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "letmesh", "up", "--repository", str(trivial_repo), "--state-dir", str(state),
         "--http-port", str(http_port), "--controller-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops the mesh" in line:
                break
        out = "".join(lines)
        assert "letmesh is up" in out and f"http://127.0.0.1:{http_port}/v2/models/<model>/infer" in out, out
        assert http_status(f"http://127.0.0.1:{http_port}/v2/health/ready") == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    wait_until(lambda: not processes_mentioning(str(state.resolve())), timeout_s=10)
