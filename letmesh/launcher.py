"""A whole mesh on this machine: controller, gateway and one agent as child processes on 127.0.0.1.

Used by ``letmesh up``, ``letmesh demo``, the integration tests and the benchmarks. Children run
in their own sessions (a Ctrl-C reaches only the launcher, which stops them in order) and are
killed by the kernel if the launcher itself dies, so nothing outlives it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from agents.process import die_with_parent


class LaunchError(Exception):
    """The mesh did not come up: a role exited, or it was not ready in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalMesh:
    repository: Path
    state_dir: Path
    http_port: int = 0
    controller_port: int = 0
    data_port: int = 0
    max_cores: int = 0
    log_level: str = "WARNING"
    extra_env: dict[str, str] = field(default_factory=dict)
    quiet: bool = True
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.http_port = self.http_port or free_port()
        self.controller_port = self.controller_port or free_port()
        self.data_port = self.data_port or free_port()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def controller_address(self) -> str:
        return f"tcp://127.0.0.1:{self.controller_port}"

    def command(self, role: str) -> list[str]:
        base = [sys.executable, "-m", "letmesh", "--log-level", self.log_level]
        if role == "controller":
            return base + ["controller", "--bind", self.controller_address, "--repository", str(self.repository),
                           "--state-dir", str(self.state_dir)]
        if role == "gateway":
            return base + ["gateway", "--controller", self.controller_address, "--http-port", str(self.http_port),
                           "--data-bind", f"tcp://127.0.0.1:{self.data_port}", "--gateway-id", "local"]
        if role == "agent":
            return base + ["agent", "--controller", self.controller_address, "--agent-id", "local",
                           "--state-dir", str(self.state_dir), "--max-cores", str(self.max_cores)]
        raise ValueError(role)

    def start_role(self, role: str) -> subprocess.Popen:
        env = dict(os.environ, **self.extra_env)
        out = subprocess.DEVNULL if self.quiet else None
        proc = subprocess.Popen(
            self.command(role), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=None,
            start_new_session=True, preexec_fn=die_with_parent,
        )
        self.procs[role] = proc
        return proc

    def start(self, timeout_s: float = 180.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            for role in ("controller", "gateway", "agent"):
                self.start_role(role)
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    raise LaunchError(f"{role} exited with code {proc.returncode} before the mesh was ready")
            if http_status(self.http_url + "/v2/health/ready") == 200:
                return
            time.sleep(0.2)
        raise LaunchError(f"mesh not ready within {timeout_s:.0f} s")

    def stop_role(self, role: str, timeout_s: float = 10.0) -> int | None:
        proc = self.procs.pop(role, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop(self, timeout_s: float = 10.0) -> None:
        # Front door first, so nothing new arrives; the agent stops its workers; the controller last.
        for role in ("gateway", "agent", "controller"):
            self.stop_role(role, timeout_s)

    def __enter__(self) -> LocalMesh:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_status(url: str, timeout_s: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0
