"""A whole mesh on this machine: controller, gateway and one agent as child processes on 127.0.0.1.

Used by ``letmesh up``, ``letmesh demo``, the integration tests and the benchmarks. Children run
in their own sessions (a Ctrl-C reaches only the launcher, which stops them in order) and are
killed by the kernel if the launcher itself dies, so nothing outlives it. Every port the mesh
binds is checked before anything starts; each role's stderr passes through to ours, its last
lines kept to say why a role that died did.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agents.process import die_with_parent
from gateway.health import ROUTING_VERSION_HEADER, UNSERVED_HEADER
from letmesh.port import check_free, distinct
from letmesh.startup import StartupProgress
from letmesh.status import KNOWN_KEYRINGS, StatusUnavailable, ask_controller, fetch_status
from mesh.keys import ensure_local_keyring
from protocol.message import GetProfiles, ProfilesReply, StatusReply

STDERR_TAIL_LINES = 20
_WILDCARDS = {"", "0.0.0.0", "::"}


class LaunchError(Exception):
    """The mesh did not come up: a port was taken, a role exited, or it was not ready in time."""


class RoleExited(LaunchError):
    """A role's process exited; ``tail`` holds the last lines it wrote to stderr."""

    def __init__(self, role: str, code: int, tail: list[str], when: str = "") -> None:
        self.role, self.code, self.tail = role, code, tail
        said = "\n".join(f"    {line}" for line in tail) if tail else "    (it wrote nothing to stderr)"
        super().__init__(f"{role} exited with code {code}{when}; its last lines:\n{said}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a role to bind once started. Drawn outside the
    kernel's ephemeral range: a port from inside it (what binding port 0 gives) can be taken by any
    outgoing connection on the host in the seconds before the role binds it."""
    low, high = _ephemeral_range()
    ranges = [(lo, hi) for lo, hi in ((20000, low - 1), (high + 1, 65535)) if hi - lo >= 1000]
    for _ in range(100):
        port = random.randint(*random.choice(ranges)) if ranges else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def placement_served(status: StatusReply, ready_status: int, ready_headers: Mapping[str, str]) -> bool:
    """Whether the whole first placement is up, from the controller's status and the gateway's
    answer to ``/v2/health/ready``: every variant the plan places has a ready worker, the routing
    table naming them has reached the gateway, and the gateway is ready with a live worker for each
    variant it routes to. A request naming any placed variant is then served (readiness alone asks
    only that every family can be); a variant the plan leaves unplaced (more families than
    gpu-lets) is not waited for."""
    if any(m.placed and m.state != "READY" for m in status.models):
        return False
    version = ready_headers.get(ROUTING_VERSION_HEADER, "")
    return (ready_status == 200 and ready_headers.get(UNSERVED_HEADER) == "0"
            and version.isdigit() and int(version) >= status.routing_version)


@dataclass
class LocalMesh:
    repository: Path
    state_dir: Path
    http_port: int = 0
    controller_port: int = 0
    data_port: int = 0
    max_cores: int = 0
    # The agent's --onnx-upgrade; off passes no flag, so a config file's [agent] onnx_upgrade still applies.
    onnx_upgrade: bool = False
    log_level: str = "WARNING"
    http_host: str = "127.0.0.1"
    # A TOML file every role reads (its own table); the flags the launcher passes win over it.
    config_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    quiet: bool = True
    # When set, each role's stderr (its log, and its workers') goes to log_dir/<role>.log.
    log_dir: Path | None = None
    # CURVE on every link, with a keyring made in state_dir/keys: the secure path is the tested one.
    secure: bool = True
    # Prometheus /metrics of the controller and the agent on free ports (the gateway's is on its HTTP port).
    metrics: bool = False
    controller_metrics_port: int = 0
    agent_metrics_port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _tails: dict[str, collections.deque] = field(default_factory=dict, init=False, repr=False)
    _pumps: list[threading.Thread] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        # A port drawn here is free now, as may be one given for another role that has not bound
        # it yet: a draw never takes a port given or drawn for another role (up would refuse the clash).
        taken = {p for p in (self.http_port, self.controller_port, self.data_port, self.controller_metrics_port,
                             self.agent_metrics_port) if p}

        def draw(port: int) -> int:
            if port:
                return port
            while (port := free_port()) in taken:
                pass
            taken.add(port)
            return port

        self.http_port = draw(self.http_port)
        self.controller_port = draw(self.controller_port)
        self.data_port = draw(self.data_port)
        if self.metrics:
            self.controller_metrics_port = draw(self.controller_metrics_port)
            self.agent_metrics_port = draw(self.agent_metrics_port)

    def metrics_url(self, role: str) -> str:
        """Where ``role`` serves /metrics ("" when it does not)."""
        if role == "gateway":
            return f"{self.http_url}/metrics"
        port = {"controller": self.controller_metrics_port, "agent": self.agent_metrics_port}[role]
        return f"http://127.0.0.1:{port}/metrics" if port else ""

    @property
    def http_url(self) -> str:
        host = "127.0.0.1" if self.http_host in _WILDCARDS else self.http_host
        return f"http://{host}:{self.http_port}"

    @property
    def controller_address(self) -> str:
        return f"tcp://127.0.0.1:{self.controller_port}"

    @property
    def keys_dir(self) -> Path | None:
        return self.state_dir / "keys" if self.secure else None

    def command(self, role: str) -> list[str]:
        base = [sys.executable, "-m", "letmesh", "--log-level", self.log_level]
        if self.config_path is not None:
            base += ["--config", str(self.config_path)]
        return base + self._role_args(role) + self._metrics_args(role) + (["--keys", str(self.ensure_keys())] if self.keys_dir else [])

    def ensure_keys(self) -> Path | None:
        """The mesh's keyring, made on first use (whichever role starts first, by whatever path)."""
        if self.keys_dir is not None:
            ensure_local_keyring(self.keys_dir)
            KNOWN_KEYRINGS[self.controller_address] = self.keys_dir
        return self.keys_dir

    def _metrics_args(self, role: str) -> list[str]:
        port = {"controller": self.controller_metrics_port, "agent": self.agent_metrics_port}.get(role, 0)
        return ["--metrics-port", str(port)] if port else []

    def _role_args(self, role: str) -> list[str]:
        if role == "controller":
            return ["controller", "--bind", self.controller_address, "--repository", str(self.repository),
                           "--state-dir", str(self.state_dir)]
        if role == "gateway":
            return ["gateway", "--controller", self.controller_address, "--http-port", str(self.http_port),
                           "--http-host", self.http_host,
                           "--data-bind", f"tcp://127.0.0.1:{self.data_port}", "--gateway-id", "local"]
        if role == "agent":
            # max_cores 0 passes no flag, so a config file's [agent] max_cores still applies.
            flags = (["--max-cores", str(self.max_cores)] if self.max_cores else []) + \
                (["--onnx-upgrade"] if self.onnx_upgrade else [])
            return ["agent", "--controller", self.controller_address, "--agent-id", "local",
                    "--state-dir", str(self.state_dir), *flags]
        raise ValueError(role)

    def ports(self) -> list[tuple[str, int, str]]:
        """(host, port, what binds it) for every TCP port the mesh's roles bind."""
        return [("127.0.0.1", self.controller_port, "controller"),
                (self.http_host or "0.0.0.0", self.http_port, "gateway HTTP"),
                ("127.0.0.1", self.data_port, "gateway data"),
                *((("127.0.0.1", port, f"{role} metrics") for role, port in
                   (("controller", self.controller_metrics_port), ("agent", self.agent_metrics_port)) if port))]

    def check_ports(self) -> None:
        """Raise :class:`letmesh.port.PortsClash` for a port two roles would bind, and
        :class:`letmesh.port.PortTaken` for the first port another process holds."""
        distinct(self.ports())
        for host, port, purpose in self.ports():
            check_free(host, port, purpose)

    def start_role(self, role: str) -> subprocess.Popen:
        env = dict(os.environ, **self.extra_env)
        out = subprocess.DEVNULL if self.quiet else None
        proc = subprocess.Popen(
            self.command(role), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=die_with_parent,
        )
        self.procs[role] = proc
        copy = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            copy = open(self.log_dir / f"{role}.log", "ab")  # the pump closes it when the pipe ends
        tail = self._tails[role] = collections.deque(maxlen=STDERR_TAIL_LINES)
        pump = threading.Thread(target=_pass_through, args=(proc.stderr, tail, copy), name=f"stderr-{role}",
                                daemon=True)
        pump.start()
        self._pumps.append(pump)
        return proc

    def stderr_tail(self, role: str) -> list[str]:
        """The last lines ``role`` wrote to stderr (its workers' included, for the agent)."""
        return list(self._tails.get(role, ()))

    def exited(self) -> RoleExited | None:
        """The first role whose process has exited, with its last stderr lines; None while all run."""
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                for pump in self._pumps:  # its last lines may still be in the pipe
                    if pump.name == f"stderr-{role}":
                        pump.join(2.0)
                return RoleExited(role, proc.returncode, self.stderr_tail(role))
        return None

    def start(self, timeout_s: float = 180.0, *, progress: Callable[[str], None] | None = None,
              cancelled: Callable[[], bool] = lambda: False) -> None:
        """Check the ports, start every role and wait until the gateway is ready.

        ``progress`` gets a line per start-up milestone (then the controller is polled for them);
        ``cancelled`` is asked while waiting, to give up early. On any failure nothing is left running.
        """
        self.check_ports()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ensure_keys()
        try:
            for role in ("controller", "gateway", "agent"):
                self.start_role(role)
            self.wait_ready(timeout_s, progress=progress, cancelled=cancelled)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float, *, progress: Callable[[str], None] | None = None,
                   cancelled: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + timeout_s
        milestones = StartupProgress(self.controller_address, self.http_url) if progress else None
        while time.monotonic() < deadline:
            died = self.exited()
            if died is not None:
                raise RoleExited(died.role, died.code, died.tail, " before the mesh was ready")
            if cancelled():
                raise LaunchError("stopped before the mesh was ready")
            snapshot = self._snapshot()
            ready = self._placement_served(snapshot.get("status"))
            if milestones is not None:
                for line in milestones.see(time.monotonic(), **snapshot, gateway_ready=ready):
                    progress(line)
            if ready:
                return
            time.sleep(0.2)
        raise LaunchError(f"mesh not ready within {timeout_s:.0f} s")

    def _placement_served(self, status: StatusReply | None) -> bool:
        if status is None:
            return False
        try:
            with urllib.request.urlopen(self.http_url + "/v2/health/ready", timeout=1.0) as resp:
                return placement_served(status, resp.status, resp.headers)
        except (urllib.error.URLError, OSError):
            return False

    def _snapshot(self) -> dict:
        """What the controller says now (status and profiling runs); empty when it does not answer."""
        try:
            status = fetch_status(self.controller_address, timeout_s=0.5, keys_dir=self.keys_dir)
            profiles = ask_controller(self.controller_address, GetProfiles(), ProfilesReply, 0.5, self.keys_dir)
        except StatusUnavailable:
            return {}
        return {"status": status, "profiling": profiles.running}

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
        for pump in self._pumps:  # each ends when the last process holding its pipe has exited
            pump.join(2.0)
        self._pumps = [p for p in self._pumps if p.is_alive()]

    def __enter__(self) -> LocalMesh:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pass_through(pipe, tail: collections.deque, copy=None) -> None:
    """Copy a role's stderr to ours line by line, keeping the last lines in ``tail``, and to
    ``copy`` (a binary file, closed at the end) when given."""
    with pipe:
        for line in iter(pipe.readline, b""):
            try:
                os.write(2, line)
            except OSError:
                pass
            if copy is not None:
                copy.write(line)
                copy.flush()
            tail.append(line.decode(errors="replace").rstrip())
    if copy is not None:
        copy.close()


def http_status(url: str, timeout_s: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0
