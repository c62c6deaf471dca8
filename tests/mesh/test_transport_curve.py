"""CURVE links over real TCP sockets: who gets in, under which name, and who is refused."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from mesh import keys, transport
from mesh.transport import Endpoint
from protocol.codec import encode
from protocol.message import Heartbeat


@pytest.fixture
def ring(tmp_path: Path) -> keys.Keyring:
    root = tmp_path / "keys"
    keys.init_keyring(root)
    keys.add_peer(root, "agent", "e1")
    keys.add_peer(root, "agent", "e2")
    return keys.Keyring(root)


async def _wait_event(sock: zmq.asyncio.Socket, wanted: int, timeout_s: float = 10.0) -> dict:
    monitor = sock.get_monitor_socket()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                event = recv_monitor_message(await _sync(monitor))
                if event["event"] == wanted:
                    return event
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


async def _sync(monitor):
    frames = await monitor.recv_multipart()
    return _Frames(frames)


class _Frames:
    """recv_monitor_message wants a socket; hand it the frames already read."""

    def __init__(self, frames):
        self._frames = frames

    def recv_multipart(self, flags=0):
        return self._frames


def _raw_client(ctx, identity: bytes, client: keys.ClientKeys | None, public=None, secret=None):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, identity)
    if client is not None:
        sock.curve_publickey = public or client.public_key
        sock.curve_secretkey = secret or client.secret_key
        sock.curve_serverkey = client.server_key
    return sock


async def test_an_authorised_client_speaks_under_its_keys_name(ctx, ring: keys.Keyring) -> None:
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", security=ring.server_keys(), refresh=ring.refresh)
    dealer = Endpoint.dealer(ctx, router.address, "agent:e1", security=keys.client_keys(ring.root, "agent", "e1"))
    try:
        await dealer.send(Heartbeat(sender="e1", role="agent"))
        got = await asyncio.wait_for(router.recv(), 10)
        assert (got.peer, got.peer_name) == (b"agent:e1", "agent:e1")
        router.send_nowait(Heartbeat(sender="c", role="controller"), to=got.peer)
        assert (await asyncio.wait_for(dealer.recv(), 10)).msg.sender == "c"
    finally:
        dealer.close()
        router.close()


async def test_an_unknown_key_and_a_plaintext_client_never_get_a_message_in(ctx, ring: keys.Keyring, tmp_path,
                                                                            caplog) -> None:
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", security=ring.server_keys(), refresh=ring.refresh)
    stranger_public, stranger_secret = zmq.curve_keypair()
    real = keys.client_keys(ring.root, "agent", "e1")
    stranger = _raw_client(ctx, b"agent:e1", real, stranger_public, stranger_secret)
    plain = _raw_client(ctx, b"agent:e2", None)
    dealer = None
    try:
        refused = asyncio.create_task(_wait_event(stranger, zmq.EVENT_HANDSHAKE_FAILED_AUTH))
        await asyncio.sleep(0)
        stranger.connect(router.address)
        stranger.send_multipart(encode(Heartbeat(sender="stranger", role="agent")))
        event = await refused
        assert event["value"] == 400
        # The operator is told where the refused key came from.
        assert any(r.getMessage() == "refused a connection from 127.0.0.1: key not authorised" for r in caplog.records)
        failed = asyncio.create_task(_wait_event(plain, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL))
        await asyncio.sleep(0)
        plain.connect(router.address)
        plain.send_multipart(encode(Heartbeat(sender="plain", role="agent")))
        await failed
        dealer = Endpoint.dealer(ctx, router.address, "agent:e1", security=real)
        await dealer.send(Heartbeat(sender="e1", role="agent"))
        got = await asyncio.wait_for(router.recv(), 10)
        assert got.msg.sender == "e1"  # the first and only message that got in
    finally:
        stranger.close(linger=0)
        plain.close(linger=0)
        if dealer is not None:
            dealer.close()
        router.close()


async def test_a_revoked_key_is_refused_at_its_next_handshake(ctx, ring: keys.Keyring) -> None:
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", security=ring.server_keys(), refresh=ring.refresh)
    e2 = keys.client_keys(ring.root, "agent", "e2")
    first = Endpoint.dealer(ctx, router.address, "agent:e2", security=e2)
    again = _raw_client(ctx, b"agent:e2-again", e2)
    try:
        await first.send(Heartbeat(sender="e2", role="agent"))
        assert (await asyncio.wait_for(router.recv(), 10)).peer_name == "agent:e2"
        keys.revoke_peer(ring.root, "e2")
        refused = asyncio.create_task(_wait_event(again, zmq.EVENT_HANDSHAKE_FAILED_AUTH))
        await asyncio.sleep(0)
        again.connect(router.address)
        assert (await refused)["value"] == 400
        assert not ring.authorized.allowed("agent:e2")  # what the application checks on the old link
    finally:
        again.close(linger=0)
        first.close()
        router.close()


@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "curve"])
async def test_a_second_connection_claiming_a_live_identity_is_refused_not_handed_over(ctx, ring, secure) -> None:
    server = ring.server_keys() if secure else None
    e1 = keys.client_keys(ring.root, "agent", "e1") if secure else None
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", security=server, refresh=ring.refresh if secure else None)
    real = Endpoint.dealer(ctx, router.address, "worker:w1", security=e1)
    imposter = Endpoint.dealer(ctx, "tcp://127.0.0.1:1", "worker:w1", security=e1)
    try:
        await real.send(Heartbeat(sender="real", role="worker"))
        assert (await asyncio.wait_for(router.recv(), 10)).msg.sender == "real"
        if secure:  # the endpoint's own monitor sees its handshakes (a socket has one monitor)
            imposter.connect(router.address)
            async with asyncio.timeout(10):
                while imposter.handshakes == 0:
                    await asyncio.sleep(0.02)
        else:
            connected = asyncio.create_task(_wait_event(imposter._sock, zmq.EVENT_HANDSHAKE_SUCCEEDED))
            await asyncio.sleep(0)
            imposter.connect(router.address)
            await connected
        imposter.send_nowait(Heartbeat(sender="imposter", role="worker"))
        for seq in range(3):  # the router has seen the newcomer by now: it still talks to the real one
            await real.send(Heartbeat(sender="real", role="worker", seq=seq))
            got = await asyncio.wait_for(router.recv(), 10)
            assert got.msg.sender == "real"
            router.send_nowait(Heartbeat(sender="gw", role="gateway", seq=seq), to=b"worker:w1")
            assert (await asyncio.wait_for(real.recv(), 10)).msg.seq == seq
    finally:
        imposter.close()
        real.close()
        router.close()


async def test_a_key_refused_before_the_server_knew_it_is_dialled_again_and_gets_in(ctx, ring: keys.Keyring) -> None:
    """libzmq never redials a refused handshake; a worker whose credential reaches the server a
    moment after its first dial (a restarted gateway, a credential on its way) would be deaf
    for good. The endpoint dials again itself, backing off, until the key is let in."""
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", security=ring.server_keys(), refresh=ring.refresh)
    public, secret = zmq.curve_keypair()
    server = keys.client_keys(ring.root, "agent", "e1").server_key
    dealer = Endpoint.dealer(ctx, router.address, "worker:w9", security=keys.ClientKeys(public, secret, server))
    try:
        async with asyncio.timeout(10):
            while dealer.refused_handshakes == 0:
                await asyncio.sleep(0.02)
        ring.authorized.issue("worker:w9", public.decode())
        async with asyncio.timeout(15):
            while True:
                try:
                    dealer.send_nowait(Heartbeat(sender="w9", role="worker"))
                except zmq.Again:
                    pass
                try:
                    got = await asyncio.wait_for(router.recv(), 0.5)
                    break
                except TimeoutError:
                    continue
        assert got.peer_name == "worker:w9"
    finally:
        dealer.close()
        router.close()


async def test_a_key_holder_squatting_on_an_absent_peers_name_gives_it_up_when_that_peer_dials(ctx, ring) -> None:
    """An authorised key dials under another peer's name while that peer is away. Its messages
    reach the application (which refuses them by key), but the moment the peer dials under its
    own key it has its name back: its messages are heard and sends to the name reach it."""
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", security=ring.server_keys(), refresh=ring.refresh)
    squatter = Endpoint.dealer(ctx, router.address, "agent:e1", security=keys.client_keys(ring.root, "agent", "e2"))
    owner = None
    try:
        await squatter.send(Heartbeat(sender="squatter", role="agent"))
        got = await asyncio.wait_for(router.recv(), 10)
        assert (got.peer, got.peer_name) == (b"agent:e1", "agent:e2")
        owner = Endpoint.dealer(ctx, router.address, "agent:e1", security=keys.client_keys(ring.root, "agent", "e1"))
        await owner.send(Heartbeat(sender="owner", role="agent"))
        got = await asyncio.wait_for(router.recv(), 10)
        assert (got.peer, got.peer_name, got.msg.sender) == (b"agent:e1", "agent:e1", "owner")
        router.send_nowait(Heartbeat(sender="controller", role="controller"), to=b"agent:e1")
        assert (await asyncio.wait_for(owner.recv(), 10)).msg.sender == "controller"
        await squatter.send(Heartbeat(sender="squatter", role="agent", seq=1))
        await owner.send(Heartbeat(sender="owner", role="agent", seq=1))
        assert (await asyncio.wait_for(router.recv(), 10)).msg.sender == "owner"  # the squatter's was dropped
    finally:
        squatter.close()
        if owner is not None:
            owner.close()
        router.close()


@pytest.mark.parametrize(("name", "owner_key"), [("profiler:e1:7.1", ("agent", "e1")), ("cli:ops-1", ("operator", "local"))])
async def test_a_name_an_agent_or_operator_key_may_use_is_taken_back_from_another_key(ctx, ring, name,
                                                                                       owner_key) -> None:
    """A profiler dials as profiler:<agent>:... with its agent's key, a command line as cli:... with an
    operator's: another key that dialled first under such a name gives it up to them."""
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", security=ring.server_keys(), refresh=ring.refresh)
    squatter = Endpoint.dealer(ctx, router.address, name, security=keys.client_keys(ring.root, "agent", "e2"))
    owner = None
    try:
        await squatter.send(Heartbeat(sender="squatter", role="agent"))
        assert (await asyncio.wait_for(router.recv(), 10)).peer_name == "agent:e2"
        owner = Endpoint.dealer(ctx, router.address, name, security=keys.client_keys(ring.root, *owner_key))
        await owner.send(Heartbeat(sender="owner", role="agent"))
        got = await asyncio.wait_for(router.recv(), 10)
        assert (got.peer, got.msg.sender) == (name.encode(), "owner")
        router.send_nowait(Heartbeat(sender="controller", role="controller"), to=name.encode())
        assert (await asyncio.wait_for(owner.recv(), 10)).msg.sender == "controller"
    finally:
        squatter.close()
        if owner is not None:
            owner.close()
        router.close()


async def test_strangers_dialling_without_end_do_not_flood_the_log(ctx, ring: keys.Keyring, caplog) -> None:
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", security=ring.server_keys(), refresh=ring.refresh)
    server_key = keys.client_keys(ring.root, "agent", "e1").server_key
    strangers = []
    try:
        with caplog.at_level(logging.WARNING, logger="mesh.zap"):
            for _ in range(50):  # each with a key of its own, none authorised
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
                sock.curve_serverkey = server_key
                sock.connect(router.address)
                strangers.append(sock)
            await _until(lambda: transport._ZAP[ctx][0].refused >= 50)
        said = [r for r in caplog.records if "key not authorised" in r.getMessage()]
        assert len(said) == 1  # once a minute, not once a dial
    finally:
        for sock in strangers:
            sock.close(linger=0)
        router.close()


async def _until(predicate, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


def _warnings(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mesh.transport" and needle in r.getMessage()]


async def test_a_dialler_given_another_keyrings_folder_says_so_once(ctx, ring: keys.Keyring, tmp_path,
                                                                                  caplog, monkeypatch) -> None:
    from mesh import handshakes

    monkeypatch.setattr(handshakes, "_refusals_said", {})
    other = tmp_path / "other"
    keys.init_keyring(other)
    keys.add_peer(other, "agent", "e1")
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", security=ring.server_keys(), refresh=ring.refresh)
    dealer = Endpoint.dealer(ctx, router.address, "agent:e1", security=keys.client_keys(other, "agent", "e1"),
                             control=True)
    try:
        await _until(lambda: _warnings(caplog, "another keyring"))
        seen = dealer.refused_handshakes
        await _until(lambda: dealer.refused_handshakes >= seen + 2)  # libzmq keeps redialling it
        said = _warnings(caplog, "another keyring")
        assert len(said) == 1, said
        assert said[0].startswith(f"no handshake with {router.address}, twice in a row and without a reason: the "
                                  f"server's public key this process was given is not that server's")
        assert "hosts/agent-e1/" in said[0] and "dialling again" not in said[0]
    finally:
        dealer.close()
        router.close()


async def test_a_dialler_with_keys_facing_a_server_without_says_so(ctx, ring: keys.Keyring, caplog, monkeypatch) -> None:
    from mesh import handshakes

    monkeypatch.setattr(handshakes, "_refusals_said", {})
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    dealer = Endpoint.dealer(ctx, router.address, "agent:e1", security=keys.client_keys(ring.root, "agent", "e1"))
    try:
        await _until(lambda: _warnings(caplog, "runs without keys"))
        (said,) = _warnings(caplog, "runs without keys")
        assert said.startswith(f"no handshake with {router.address}: it runs without keys while this process has them")
    finally:
        dealer.close()
        router.close()


async def test_a_key_the_server_refuses_is_said_with_the_way_back_once_a_minute(ctx, ring: keys.Keyring, caplog,
                                                                                 monkeypatch) -> None:
    from mesh import handshakes

    monkeypatch.setattr(handshakes, "_refusals_said", {})
    e2 = keys.client_keys(ring.root, "agent", "e2")
    keys.revoke_peer(ring.root, "e2")
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", security=ring.server_keys(), refresh=ring.refresh)
    dealers = []
    try:
        for _ in range(2):  # an agent dials afresh at each registration: still said once
            dealers.append(Endpoint.dealer(ctx, router.address, "agent:e2", security=e2, control=True))
            await _until(lambda: dealers[-1].refused_handshakes >= 1)
        said = _warnings(caplog, "refused this key")
        assert len(said) == 1, said
        assert said[0].startswith(f"{router.address} refused this key: agent 'e2' is not authorised there")
        assert "letmesh keys add agent e2" in said[0]
    finally:
        for dealer in dealers:
            dealer.close()
        router.close()
