"""The gateway's one frozen config object (defaults < TOML [gateway] < LETMESH_GATEWAY_* < flags)."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    controller: str = "tcp://127.0.0.1:5555"
    gateway_id: str = socket.gethostname()
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    data_bind: str = "tcp://127.0.0.1:5556"
    # The address workers dial, when it differs from data_bind (a wildcard bind, NAT, containers).
    data_advertise: str = ""
    max_body_bytes: int = 16 * 1024 * 1024
    heartbeat_interval_s: float = 0.5
    missed_heartbeats: int = 4
    worker_heartbeat_interval_s: float = 0.1
    worker_missed_heartbeats: int = 5
    max_outstanding_per_worker: int = 512
    deadline_grace_ms: float = 50.0
    # Time kept back from a request's budget for the reply's way back through the gateway.
    reply_margin_ms: float = 2.0
    shutdown_timeout_s: float = 5.0
    # Bandit feedback: how long a decision waits for explicit feedback before it is closed with
    # the implicit reward, and how long a closed one is remembered to answer repeats precisely.
    # How a family request picks its variant: "bandit" (learns from feedback per context) or
    # "accurate" (the most accurate candidate; under accuracy scaling, the plan's shares).
    selection: str = "bandit"
    feedback_wait_s: float = 30.0
    feedback_retain_s: float = 300.0
    decision_batch_max: int = 256
