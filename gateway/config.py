"""The gateway's one frozen config object (defaults < TOML [gateway] < LETMESH_GATEWAY_* < flags)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal

from mesh.config import Address, NonNegativeFloat, OptionalAddress, Port, PositiveFloat, PositiveInt


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    controller: Address = "tcp://127.0.0.1:5555"
    gateway_id: str = socket.gethostname()
    http_host: str = "127.0.0.1"
    http_port: Port = 8000
    # /metrics is served on the HTTP port; a port here serves it on its own too (as Triton's 8002),
    # open to scrapers without the API's tokens. 0: not served separately.
    metrics_port: Port = 0
    data_bind: Address = "tcp://127.0.0.1:5556"
    # The address workers dial, when it differs from data_bind (a wildcard bind, NAT, containers).
    data_advertise: OptionalAddress = ""
    max_body_bytes: PositiveInt = 16 * 1024 * 1024
    # A request body not fully received within this is answered 408 (a slow or lying client).
    body_timeout_s: PositiveFloat = 10.0
    heartbeat_interval_s: PositiveFloat = 0.5
    missed_heartbeats: PositiveInt = 4
    # Between a gateway and each worker, both ways, while no request flows (a request or reply
    # stands in for a beat). A worker silent for interval x missed (0.75 s) is taken out of
    # routing. Every beat wakes both processes and their ZeroMQ threads: at 0.1 s the beats were
    # most of an idle mesh's CPU, which a lightly loaded mesh pays per request.
    worker_heartbeat_interval_s: PositiveFloat = 0.25
    worker_missed_heartbeats: PositiveInt = 3
    # How the gateway shares a core with the workers beside it (mesh.cpu_policy): "batch" (a request
    # arriving does not preempt a worker mid-batch; the gateway runs when the worker blocks, or
    # within a slice and a tick) or "normal" (the kernel's default: an arrival may preempt).
    cpu_policy: Literal["batch", "normal"] = "batch"
    max_outstanding_per_worker: PositiveInt = 512
    # Requests in flight to workers at this gateway at once; beyond it, 503 + Retry-After.
    max_inflight: PositiveInt = 10_000
    # Turn a request away at once (503 + Retry-After) when the requests queued on its worker mean
    # it cannot finish before its deadline, instead of queueing it into a 504.
    admission: bool = True
    # How long past a request's deadline the gateway still waits for its worker's reply before it
    # answers 504 itself (a worker that is stopped or cut off never replies). The worker answers
    # "late" on its own when it cannot start in time, so this only covers a reply in transit.
    deadline_grace_ms: NonNegativeFloat = 10.0
    # Time kept back from a request's budget for the reply's way back through the gateway.
    reply_margin_ms: NonNegativeFloat = 2.0
    shutdown_timeout_s: NonNegativeFloat = 5.0
    # On SIGTERM readiness answers 503 this long, requests still being taken, before the drain.
    drain_announce_s: NonNegativeFloat = 0.0
    # Once the requests in flight are done and no new connection is taken, how long the open ones
    # are left to close on their own (each closes after its next answer) before the rest are cut.
    drain_linger_s: NonNegativeFloat = 1.0
    # /v2/health/ready: False (default) ready when every family, and every variant the routing
    # table routes to, has a live worker; True: every variant of the repository must (Triton's
    # --strict-readiness), so a re-plan that leaves a variant unplaced makes the gateway unready.
    strict_readiness: bool = False
    # Bandit feedback: how long a decision waits for explicit feedback before it is closed with
    # the implicit reward, and how long a closed one is remembered to answer repeats precisely.
    # How a family request picks its variant: "bandit" (learns from feedback per context) or
    # "accurate" (the most accurate candidate; under accuracy scaling, the plan's shares).
    selection: Literal["bandit", "accurate"] = "bandit"
    feedback_wait_s: NonNegativeFloat = 30.0
    feedback_retain_s: NonNegativeFloat = 300.0
    decision_batch_max: PositiveInt = 256
    # Keys (letmesh keys): a directory makes every link CURVE-encrypted and authenticated.
    keys_dir: str = ""
    # Allow plaintext on a non-loopback address when no keys are given.
    insecure: bool = False
    # Socket-level liveness of links: ZMTP heartbeat, the silence after which a link is closed,
    # and the longest wait between redials.
    link_heartbeat_s: PositiveFloat = 1.0
    link_timeout_s: PositiveFloat = 3.0
    link_reconnect_max_s: PositiveFloat = 2.0
    # HTTP: bearer tokens (a TOML file of sha256 digests, see gateway/access.py) and TLS.
    tokens_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
