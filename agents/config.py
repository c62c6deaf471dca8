"""Frozen config objects of the agent and of the worker processes it starts."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AgentConfig:
    controller: str = "tcp://127.0.0.1:5555"
    agent_id: str = socket.gethostname()
    state_dir: str = ".letmesh"
    heartbeat_interval_s: float = 0.5
    missed_heartbeats: int = 4
    register_retry_s: float = 1.0
    worker_max_restarts: int = 5
    worker_restart_window_s: float = 60.0
    worker_restart_backoff_s: float = 0.2
    worker_stop_timeout_s: float = 5.0
    worker_heartbeat_interval_s: float = 0.1
    # Limit the CPU cores this agent offers (0: all it may use).
    max_cores: int = 0
