"""Frozen config objects of the agent and of the worker processes it starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mesh.config import Address, NonNegativeFloat, NonNegativeInt, Port, PositiveFloat, PositiveInt

# Set to "1" in the environment of an agent's workers and profilers when [agent] onnx_upgrade is on.
ONNX_UPGRADE_ENV = "LETMESH_ONNX_UPGRADE"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    controller: Address = "tcp://127.0.0.1:5555"
    # Empty: a random id kept in state_dir (see agents.identity), so restarts keep it.
    agent_id: str = ""
    state_dir: str = ".letmesh"
    heartbeat_interval_s: PositiveFloat = 0.5
    missed_heartbeats: PositiveInt = 4
    # While the controller does not answer, a registration (with what the agent runs then) is
    # re-sent after register_retry_s, the wait doubling up to register_retry_max_s; each goes
    # on a fresh connection, so none queue up behind a dead link to be replayed on heal.
    register_retry_s: PositiveFloat = 1.0
    register_retry_max_s: PositiveFloat = 4.0
    worker_max_restarts: NonNegativeInt = 5
    worker_restart_window_s: PositiveFloat = 60.0
    worker_restart_backoff_s: NonNegativeFloat = 0.2
    worker_stop_timeout_s: PositiveFloat = 5.0
    # Given to the workers: their beats to the gateways (see the gateway's setting of the same name).
    worker_heartbeat_interval_s: PositiveFloat = 0.25
    # Serve a TorchScript variant through ONNX Runtime where its conversion answers the same and
    # runs faster on this host (agents.onnx_upgrade); profiles then measure what is served.
    onnx_upgrade: bool = False
    # How the workers share a core with the processes beside them (mesh.cpu_policy): "batch" (a
    # worker woken by a request does not preempt the one running, nor is it preempted mid-batch by
    # another "batch" process such as the gateway) or "normal" (the kernel's default).
    worker_cpu_policy: Literal["batch", "normal"] = "batch"
    # The artifact cache (STATE_DIR/artifacts: artifacts and their ONNX conversions) is kept within
    # this size: what no worker or profiling run here uses goes, least recently used first (0: no
    # bound). Checked every 30 s while registered (agents.agent_actor.CACHE_CHECK_S).
    artifact_cache_mb: NonNegativeInt = 10_240
    # Limit the CPU cores this agent offers (0: all it may use).
    max_cores: NonNegativeInt = 0
    # Cap the memory the CPU device offers the planner, in MiB (0: the host's, or the cgroup
    # limit this agent runs under when that is less; agents.probe).
    max_memory_mb: NonNegativeInt = 0
    # Prometheus /metrics on this HTTP port (0: off) and address.
    metrics_port: Port = 0
    metrics_host: str = "127.0.0.1"
    # Keys (letmesh keys): a directory makes every link CURVE-encrypted and authenticated.
    keys_dir: str = ""
    # Allow plaintext on a non-loopback address when no keys are given.
    insecure: bool = False
    # Socket-level liveness of links: ZMTP heartbeat, the silence after which a link is closed,
    # and the longest wait between redials.
    link_heartbeat_s: PositiveFloat = 1.0
    link_timeout_s: PositiveFloat = 3.0
    link_reconnect_max_s: PositiveFloat = 2.0

    def runtime_env(self) -> dict[str, str]:
        """What the agent's workers and profilers share about runtimes: an artifact must be served
        by the runtime it was profiled in."""
        return {ONNX_UPGRADE_ENV: "1" if self.onnx_upgrade else "0"}
