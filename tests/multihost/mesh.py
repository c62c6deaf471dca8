"""A letmesh mesh spread over a ``NetnsLab``: each role on its own host, started as a user starts it.

Every role runs ``python -m letmesh <role> ...`` with the flags of README "Running a mesh"; the
controller and gateway bind the wildcard address and advertise their host's address. With
``keys`` (the default) the mesh is made as README "Multi-host mesh and security" says: a keyring
(``letmesh keys init``) on the controller's side, a key pair issued per gateway and agent host
(``letmesh keys add``) and each role started with ``--keys`` naming its own folder. The
``role_args`` hook adds other flags per role. Each role has its own state dir.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from letmesh.status import StatusUnavailable, fetch_status
from mesh.keys import add_peer, init_keyring
from protocol.message import StatusReply
from tests.multihost.netns import NetnsLab
from tests.polling import wait_until

CONTROL_PORT = 5555
HTTP_PORT = 8000
DATA_PORT = 5556
# Worker states the controller may legitimately have a live process for.
LIVE_WORKER_STATES = frozenset({"starting", "ready", "restarting", "draining", "stopping"})

# Profiling quick enough for a test or a benchmark; heartbeats and the re-plan period stay at
# their defaults, as a user runs them. Demand is smoothed over a second so a steady load is
# steady to the planner within a few seconds.
QUICK_PROFILING = {
    "LETMESH_CONTROLLER_PROFILE_REPEATS": "3",
    "LETMESH_CONTROLLER_PROFILE_COLOCATION": "0",
    "LETMESH_CONTROLLER_STOP_DRAIN_S": "1",
    "LETMESH_CONTROLLER_DEMAND_HALF_LIFE_S": "1",
    "LETMESH_CONTROLLER_DEMAND_HISTORY_S": "4",
}

RoleArgs = Callable[[str, str], list[str]]  # (role, host) -> extra flags


def no_extra_args(role: str, host: str) -> list[str]:
    return []


@dataclass
class NetMesh:
    lab: NetnsLab
    repository: Path
    state_root: Path
    controller_host: str = "ctl"
    gateway_host: str = "gw"
    env: dict[str, str] = field(default_factory=dict)
    role_args: RoleArgs = no_extra_args
    log_level: str = "INFO"
    roles: dict[str, tuple[str, object]] = field(default_factory=dict)  # label -> (host, Popen)
    keys: bool = True

    def __post_init__(self) -> None:
        self.keys_root = self.state_root / "keys"
        self.operator_keys: Path | None = None
        if self.keys:
            self.operator_keys = init_keyring(self.keys_root)

    def host_keys(self, role: str, host: str) -> list[str]:
        """``--keys`` for ``role`` on ``host``: the keyring for the controller, else the host's own
        folder, issued on first use (plaintext needs ``--insecure`` beyond loopback)."""
        if not self.keys:
            return ["--insecure"]
        if role == "controller":
            return ["--keys", str(self.keys_root)]
        folder = self.keys_root / "hosts" / f"{role}-{host}"
        if not folder.exists():
            folder = add_peer(self.keys_root, role, host)
        return ["--keys", str(folder)]

    # --- addresses -------------------------------------------------------------------------

    @property
    def controller_address(self) -> str:
        return f"tcp://{self.lab.address(self.controller_host)}:{CONTROL_PORT}"

    @property
    def http_url(self) -> str:
        return f"http://{self.lab.address(self.gateway_host)}:{HTTP_PORT}"

    # --- roles -----------------------------------------------------------------------------

    def _start(self, label: str, host: str, role: str, args: list[str]):
        argv = [sys.executable, "-m", "letmesh", "--log-level", self.log_level, role, *args,
                *self.host_keys(role, host), *self.role_args(role, host)]
        env = dict(os.environ, **self.env)
        proc = self.lab.spawn(host, argv, env=env, label=label)
        self.roles[label] = (host, proc)
        return proc

    def start_controller(self):
        state = self.state_root / "controller"
        state.mkdir(parents=True, exist_ok=True)
        return self._start("controller", self.controller_host, "controller", [
            "--bind", f"tcp://0.0.0.0:{CONTROL_PORT}", "--advertise", self.controller_address,
            "--repository", str(self.repository), "--state-dir", str(state)])

    def start_gateway(self):
        return self._start("gateway", self.gateway_host, "gateway", [
            "--controller", self.controller_address, "--http-host", "0.0.0.0", "--http-port", str(HTTP_PORT),
            "--data-bind", f"tcp://0.0.0.0:{DATA_PORT}",
            "--data-advertise", f"tcp://{self.lab.address(self.gateway_host)}:{DATA_PORT}",
            "--gateway-id", self.gateway_host])

    def start_agent(self, host: str, *, max_cores: int = 1):
        state = self.state_root / f"agent-{host}"
        state.mkdir(parents=True, exist_ok=True)
        return self._start(f"agent-{host}", host, "agent", [
            "--controller", self.controller_address, "--agent-id", host, "--state-dir", str(state),
            "--max-cores", str(max_cores)])

    def start(self, agents: list[str], timeout_s: float = 150.0) -> None:
        """Controller, gateway and ``agents``; returns once every agent is alive and the gateway ready."""
        self.start_controller()
        self.start_gateway()
        for host in agents:
            self.start_agent(host)

        def formed() -> bool:
            self.check_running()
            status = self.status(timeout_s=1.0)
            return (status is not None and set(agents) <= alive_agents(status)
                    and self.http_status("/v2/health/ready") == 200)

        wait_for(formed, timeout_s, 0.5, what="mesh formed across hosts (every agent alive, gateway ready)")

    def stop(self) -> dict[str, int]:
        """Every role with SIGTERM, the front door first and the controller last; their exit codes."""
        order = ["gateway", *(label for label in self.roles if label.startswith("agent-")), "controller"]
        codes = {}
        for label in [*order, *(label for label in self.roles if label not in order)]:
            if label in self.roles:
                codes[label] = self.lab.stop(self.roles[label][1])
        return codes

    def check_running(self) -> None:
        for label, (_, proc) in self.roles.items():
            if proc.poll() is not None:
                raise AssertionError(f"{label} exited with code {proc.returncode}:\n{self.lab.log_tail(label)}")

    # --- what the mesh reports -------------------------------------------------------------

    def status(self, timeout_s: float = 2.0) -> StatusReply | None:
        try:
            return fetch_status(self.controller_address, timeout_s=timeout_s, keys_dir=self.operator_keys)
        except StatusUnavailable:
            return None

    def http_status(self, path: str, timeout_s: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=timeout_s) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return 0

    def worker_processes(self, host: str) -> list[int]:
        """Pids of the gpu-let worker processes running inside ``host``."""
        found = []
        for pid in self.lab.pids(host):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and b"agents.worker" in cmdline:
                found.append(pid)
        return sorted(found)

    def orphans(self, status: StatusReply, hosts: list[str]) -> list[tuple[str, int]]:
        """Worker processes running on ``hosts`` that the controller does not list as its workers."""
        known = {(w.agent_id, w.pid) for w in status.workers if w.state in LIVE_WORKER_STATES}
        return [(h, pid) for h in hosts for pid in self.worker_processes(h) if (h, pid) not in known]


def wait_for(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.2, what: str = "condition"):
    """:func:`tests.polling.wait_until`, polling less often: these conditions ask a controller."""
    return wait_until(predicate, timeout_s, interval_s, what)


def serving_workers(status: StatusReply, variant: str) -> list[tuple[str, str, int]]:
    """(agent, worker, pid) of the ready workers serving ``variant``."""
    return [(w.agent_id, w.worker_id, w.pid) for w in status.workers if w.state == "ready" and variant in w.variants]


def alive_agents(status: StatusReply) -> set[str]:
    return {a.agent_id for a in status.agents if a.alive}
