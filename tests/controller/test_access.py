"""What the controller answers, decided from the sender's authenticated name."""

from __future__ import annotations

import pytest

from controller.access import refusal
from protocol.message import (
    FetchArtifact,
    GetStatus,
    Heartbeat,
    RegisterAgent,
    RegisterGateway,
    Replan,
    VariantLoadFailed,
    WorkerReady,
    WorkerStopped,
)

OWNERS = {"w1": "e1", "w2": "e2"}
REVOKED = {"agent:gone", "worker:gone"}

BEAT = Heartbeat(sender="x", role="agent")
STATUS = GetStatus()
FETCH = FetchArtifact(sha256="0" * 64, offset=0, length=1)
READY = WorkerReady(worker_id="w1", agent_id="e1", variants=(), pid=1, batch_latency_ms={})


def check(peer: str, name: str | None, msg: object) -> str | None:
    return refusal(peer, name, msg, allowed=lambda n: n not in REVOKED, agent_of_worker=OWNERS.get)


@pytest.mark.parametrize(("peer", "name", "msg"), [
    ("agent:e1", "agent:e1", BEAT),
    ("agent:e1", "agent:e1", RegisterAgent(agent_id="e1", hostname="h", devices=())),
    ("agent:e1", "agent:e1", FETCH),
    ("agent:e1", "agent:e1", WorkerStopped(worker_id="w1", agent_id="e1", exit_code=0)),
    ("gateway:g", "gateway:g", RegisterGateway(gateway_id="g", data_endpoint="tcp://h:1", http_url="")),
    ("worker:w1", "worker:w1", READY),  # its own credential
    ("worker:w1", "worker:w1", FETCH),
    ("worker:w1", "worker:w1", VariantLoadFailed(worker_id="w1", variant="v", reason="bad")),
    ("profiler:e1:7.1", "agent:e1", FETCH),
    ("cli:abc", "operator:me", STATUS),
    ("gateway:g1", "gateway:g1", STATUS),  # its dashboard shows the mesh
    ("cli:abc", "operator:me", Replan(policy="")),
    ("agent:anything", None, STATUS),  # no keys: today's loopback mesh
])
def test_allowed(peer: str, name: str | None, msg: object) -> None:
    assert check(peer, name, msg) is None


@pytest.mark.parametrize(("peer", "name", "msg"), [
    ("agent:e2", "agent:e1", BEAT),  # another agent's identity
    ("agent:e1", "agent:e1", RegisterAgent(agent_id="e2", hostname="h", devices=())),  # body names another
    ("agent:e1", "agent:e1", WorkerStopped(worker_id="w2", agent_id="e1", exit_code=0)),  # another agent's worker
    ("gateway:g", "gateway:h", BEAT),
    ("gateway:g", "gateway:g", RegisterGateway(gateway_id="h", data_endpoint="tcp://h:1", http_url="")),
    ("worker:w2", "worker:w1", READY),  # another worker's credential
    ("worker:w1", "agent:e1", READY),  # its agent's key: a worker has its own, the agent's stays with the agent
    ("worker:unknown", "agent:e1", FETCH),
    ("worker:w1", "worker:w1", VariantLoadFailed(worker_id="w2", variant="v", reason="bad")),  # about another
    ("worker:w1", "worker:w1", WorkerStopped(worker_id="w1", agent_id="e1", exit_code=0)),  # its agent's to say
    ("worker:gone", "worker:gone", READY),  # withdrawn credential
    ("profiler:e2:1.1", "agent:e1", FETCH),
    ("cli:abc", "agent:e1", STATUS),
    ("agent:e1", "agent:e1", STATUS),
    ("gateway:g1", "gateway:g1", Replan(policy="")),
    ("worker:w1", "worker:w1", STATUS),
    ("agent:e1", "agent:e1", Replan(policy="")),
    ("cli:abc", "operator:me", FETCH),
    ("agent:gone", "agent:gone", BEAT),  # revoked: its live link is refused too
    ("stranger:x", "agent:e1", BEAT),
])
def test_refused(peer: str, name: str | None, msg: object) -> None:
    assert check(peer, name, msg)
