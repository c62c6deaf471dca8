"""The gateway listens to a worker only through the credential its agent issued to it, while
that credential and the agent are authorised."""

from __future__ import annotations

from gateway.peers import WorkerPeers
from protocol.message import RoutingTable
from protocol.types import WorkerRoute


def table(**owners: str) -> RoutingTable:
    return RoutingTable(version=1, models=(), workers=tuple(
        WorkerRoute(worker_id=w, variants=("v",), agent_id=a) for w, a in owners.items()))


def test_a_routed_worker_is_heard_only_through_its_own_credential() -> None:
    peers = WorkerPeers()
    peers.agents_changed({"e1": "KEY1", "e2": "KEY2"}, {"w1": "WKEY1", "w-new": "WKEY2"})
    peers.routes_changed(table(w1="e1"))
    assert peers.authorized.name_of("WKEY1") == "worker:w1"
    assert peers.accepts("w1", "worker:w1")
    assert not peers.accepts("w1", "agent:e1"), "the agent's key is the agent's, not its workers'"
    assert not peers.accepts("w1", "worker:w-new"), "another worker's credential"
    assert not peers.accepts("w1", "gateway:e1")
    assert peers.accepts("w-new", "worker:w-new")  # not routed yet: its hello and heartbeats come first
    assert peers.refused == 3


def test_a_withdrawn_credential_or_a_revoked_agent_is_no_longer_heard() -> None:
    peers = WorkerPeers()
    peers.agents_changed({"e1": "KEY1"}, {"w1": "WKEY1", "w2": "WKEY2"})
    peers.routes_changed(table(w1="e1", w2="e1"))
    assert peers.accepts("w1", "worker:w1") and peers.accepts("w2", "worker:w2")
    peers.agents_changed({"e1": "KEY1"}, {"w1": "WKEY1"})  # w2's process is gone
    assert not peers.accepts("w2", "worker:w2")
    assert peers.authorized.name_of("WKEY2") is None  # and its next handshake is refused
    peers.agents_changed({}, {"w1": "WKEY1"})  # e1 revoked (the controller withdraws w1's next)
    assert not peers.accepts("w1", "worker:w1")


def test_without_keys_everything_is_heard_as_before() -> None:
    assert WorkerPeers().accepts("w1", None)
