"""A real mesh with keys (what ``letmesh up`` runs): who gets in, who is refused, and what a
refused peer cannot do to the mesh's clients."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from letmesh.status import StatusUnavailable, ask_controller, fetch_status
from mesh import keys
from protocol.codec import decode, encode
from protocol.message import (
    ErrorReply,
    FetchArtifact,
    GetStatus,
    Heartbeat,
    RegisterAgent,
    StatusReply,
    WorkerHello,
)
from protocol.types import DeviceInfo
from tests.integration.conftest import wait_until
from tests.integration.test_serving import identity_body, post

DEVICES = (DeviceInfo(device_id="cpu", kind="cpu", name="x", cores=1, memory_bytes=1 << 30),)


class Peer:
    """A raw DEALER speaking our messages, with whatever key (or none) a test gives it."""

    def __init__(self, address: str, identity: str, client: keys.ClientKeys | None, server_key: bytes | None = None,
                 public: bytes | None = None, secret: bytes | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, identity.encode())
        if client is not None:
            self.sock.curve_publickey = public or client.public_key
            self.sock.curve_secretkey = secret or client.secret_key
            self.sock.curve_serverkey = server_key or client.server_key
        self.monitor = self.sock.get_monitor_socket()
        self.sock.connect(address)

    def handshake(self, timeout_s: float = 10.0) -> int:
        """The first handshake outcome: EVENT_HANDSHAKE_SUCCEEDED or a failure event."""
        deadline = time.monotonic() + timeout_s
        while self.monitor.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            event = recv_monitor_message(self.monitor)["event"]
            if event in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                         zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                return event
            if time.monotonic() > deadline:
                break
        raise AssertionError("no handshake outcome in time")

    def send(self, msg: object) -> None:
        self.sock.send_multipart(encode(msg), flags=zmq.NOBLOCK)

    def answer(self, timeout_s: float) -> object | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return decode(self.sock.recv_multipart())[0]

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def peers():
    opened: list[Peer] = []

    def open_peer(*args, **kwargs) -> Peer:
        peer = Peer(*args, **kwargs)
        opened.append(peer)
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


def test_a_mesh_with_keys_serves_requests_and_answers_its_operator(mesh) -> None:
    assert mesh.keys_dir is not None and (mesh.keys_dir / "controller.key_secret").is_file()
    status, _, raw = post(f"{mesh.http_url}/v2/models/identity/infer", identity_body([1.0] * 16))
    assert status == 200, raw
    assert json.loads(raw)["outputs"][0]["data"] == [1.0] * 16
    assert fetch_status(mesh.controller_address, keys_dir=mesh.keys_dir).workers


def test_a_host_without_an_authorised_key_can_neither_register_nor_fetch_nor_ask(mesh, peers, tmp_path) -> None:
    controller_key = keys.client_keys(mesh.keys_dir, "operator", "local").server_key
    public, secret = zmq.curve_keypair()
    stranger = peers(mesh.controller_address, "agent:intruder", keys.ClientKeys(public, secret, controller_key))
    assert stranger.handshake() == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    plain = peers(mesh.controller_address, "agent:plain", None)
    assert plain.handshake() != zmq.EVENT_HANDSHAKE_SUCCEEDED
    for peer in (stranger, plain):
        for msg in (RegisterAgent(agent_id=peer.sock.getsockopt(zmq.IDENTITY).decode()[6:], hostname="h",
                                  devices=DEVICES), FetchArtifact(sha256="0" * 64, offset=0, length=1024), GetStatus()):
            try:
                peer.send(msg)
            except zmq.Again:
                pass  # not even queued: nowhere to go
    assert stranger.answer(1.0) is None and plain.answer(0.1) is None
    assert "intruder" not in {a.agent_id for a in fetch_status(mesh.controller_address).agents}
    # The CLI without an operator key gets a clear refusal, not status.
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "controller.key").write_bytes((mesh.keys_dir / "controller.key").read_bytes())
    with pytest.raises(StatusUnavailable):
        ask_controller(mesh.controller_address, GetStatus(), StatusReply, timeout_s=1.0, keys_dir=stray)


def test_a_key_is_answered_only_what_its_role_allows(mesh, peers) -> None:
    agent = keys.client_keys(mesh.keys_dir, "agent", "local")
    as_cli = peers(mesh.controller_address, f"cli:{uuid.uuid4().hex[:8]}", agent)
    as_cli.send(GetStatus())
    reply = as_cli.answer(10)
    assert isinstance(reply, ErrorReply) and reply.code == "unauthorized", reply
    operator = keys.operator_keys(mesh.keys_dir)
    fetcher = peers(mesh.controller_address, f"cli:{uuid.uuid4().hex[:8]}", operator)
    fetcher.send(FetchArtifact(sha256="0" * 64, offset=0, length=1024))
    reply = fetcher.answer(10)
    assert isinstance(reply, ErrorReply) and reply.code == "unauthorized", reply
    # The agent's key under another agent's identity, or naming another agent in its body.
    other = peers(mesh.controller_address, "agent:someone-else", agent)
    other.send(RegisterAgent(agent_id="someone-else", hostname="h", devices=DEVICES))
    reply = other.answer(10)
    assert isinstance(reply, ErrorReply) and reply.code == "unauthorized", reply
    keys.add_peer(mesh.keys_dir, "agent", "liar")
    liar = peers(mesh.controller_address, "agent:liar", keys.client_keys(mesh.keys_dir, "agent", "liar"))
    liar.send(RegisterAgent(agent_id="local", hostname="h", devices=DEVICES))
    reply = liar.answer(10)
    assert isinstance(reply, ErrorReply) and reply.code == "unauthorized", reply
    keys.revoke_peer(mesh.keys_dir, "agent:liar")
    assert {a.agent_id for a in fetch_status(mesh.controller_address).agents} == {"local"}


def test_a_connection_claiming_a_live_workers_name_is_refused_and_the_worker_keeps_serving(mesh, peers) -> None:
    (worker,) = [w.worker_id for w in fetch_status(mesh.controller_address).workers if "identity" in w.variants]
    gateway_key = keys.client_keys(mesh.keys_dir, "gateway", "local").public_key
    agent = keys.client_keys(mesh.keys_dir, "agent", "local")  # even with the agent's own key
    imposter = peers(f"tcp://127.0.0.1:{mesh.data_port}", f"worker:{worker}", agent, server_key=gateway_key)
    assert imposter.handshake() == zmq.EVENT_HANDSHAKE_SUCCEEDED
    imposter.send(WorkerHello(worker_id=worker, variants=("identity",)))
    imposter.send(Heartbeat(sender=worker, role="worker"))
    for i in range(20):
        values = [float(i)] * 16
        status, _, raw = post(f"{mesh.http_url}/v2/models/identity/infer", identity_body(values))
        assert status == 200, raw
        assert json.loads(raw)["outputs"][0]["data"] == values
    assert imposter.answer(0.1) is None  # no request was handed to it


def test_a_revoked_key_is_refused_on_its_live_link_and_at_its_next_handshake(mesh, peers) -> None:
    keys.add_peer(mesh.keys_dir, "agent", "doomed")
    doomed = keys.client_keys(mesh.keys_dir, "agent", "doomed")
    link = peers(mesh.controller_address, "agent:doomed", doomed)
    link.send(Heartbeat(sender="doomed", role="agent"))
    reply = link.answer(10)
    assert isinstance(reply, ErrorReply) and reply.code == "unknown_peer", reply  # heard: it must register
    keys.revoke_peer(mesh.keys_dir, "agent:doomed")

    def refused() -> bool:
        link.send(Heartbeat(sender="doomed", role="agent"))
        answer = link.answer(0.2)
        return isinstance(answer, ErrorReply) and answer.code == "revoked"

    wait_until(refused, timeout_s=10)
    again = peers(mesh.controller_address, "agent:doomed-again", doomed)
    assert again.handshake() == zmq.EVENT_HANDSHAKE_FAILED_AUTH


def test_a_gateway_with_a_tokens_file_wants_a_token_and_holds_each_client_to_its_rate(mesh_factory, tmp_path) -> None:
    from gateway.access import issue_token

    tokens = tmp_path / "tokens.toml"
    fast = issue_token(tokens, "fast", ("inference",))
    slow = issue_token(tokens, "slow", ("inference",), rate_per_s=0.01, burst=2)
    guarded = mesh_factory(extra_env={"LETMESH_GATEWAY_TOKENS_FILE": str(tokens)})
    url = f"{guarded.http_url}/v2/models/identity/infer"
    body = identity_body([2.0] * 16)
    status, headers, _ = post(url, body)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert post(url, body, {"Authorization": "Bearer not-a-token"})[0] == 401
    assert [post(url, body, {"Authorization": f"Bearer {slow}"})[0] for _ in range(2)] == [200, 200]
    status, headers, _ = post(url, body, {"Authorization": f"Bearer {slow}"})
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert post(url, body, {"Authorization": f"Bearer {fast}"})[0] == 200


def test_each_worker_authenticates_with_its_own_credential_not_its_agents_key(mesh) -> None:
    """The agent makes a key pair per worker process; the worker is handed that one (0600, in a
    0700 folder) and the controller's public key, never the agent's own secret."""
    workers = [w for w in fetch_status(mesh.controller_address, keys_dir=mesh.keys_dir).workers if w.pid]
    assert workers
    agent_secret = str(keys.own_secret_file(mesh.keys_dir, "agent", "local").resolve())
    publics = set()
    for w in workers:
        env = dict(item.split("=", 1) for item in
                   Path(f"/proc/{w.pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
        secret = Path(env[keys.SECRET_FILE_ENV])
        assert str(secret.resolve()) != agent_secret, "the worker holds its agent's secret key"
        assert secret.stat().st_mode & 0o777 == 0o600 and secret.parent.stat().st_mode & 0o777 == 0o700
        own = keys.client_keys_from_env(env)
        assert own is not None
        publics.add(own.public_key)
    assert len(publics) == len(workers), "one key pair per worker process"


def test_a_gateway_whose_key_is_revoked_leaves_rotation_and_workers_stop_dialling_it(mesh_factory, tmp_path) -> None:
    from letmesh.launcher import http_status

    m = mesh_factory(log_dir=tmp_path / "logs")
    assert http_status(f"{m.http_url}/v2/health/ready") == 200
    assert fetch_status(m.controller_address, keys_dir=m.keys_dir).gateways
    keys.revoke_peer(m.keys_dir, "gateway:local")
    # Within a few heartbeats: the controller drops it from the list workers dial, and the
    # gateway, refused, answers readiness and liveness 503 (a load balancer and a service manager see it).
    wait_until(lambda: not fetch_status(m.controller_address, keys_dir=m.keys_dir).gateways, timeout_s=20)
    wait_until(lambda: http_status(f"{m.http_url}/v2/health/ready") == 503, timeout_s=20)
    assert http_status(f"{m.http_url}/v2/health/live") == 503
    # Its log says so once, with the way back (a revoked key is never taken again).
    log = tmp_path / "logs" / "gateway.log"
    wait_until(lambda: "refuses this gateway" in log.read_text(), timeout_s=10)  # copied from its stderr by a pump
    time.sleep(1.0)  # heartbeats go on being refused meanwhile
    log_text = log.read_text()
    assert log_text.count("refuses this gateway") == 1, log_text[-2000:]
    assert "letmesh keys add gateway local" in log_text and "hosts/gateway-local/" in log_text


def test_status_with_a_revoked_operator_key_says_the_key_was_refused_not_that_nothing_answered(mesh) -> None:
    import shutil

    copied = mesh.state_dir / "ghost-host"  # the folder an operator copied to their machine
    shutil.copytree(keys.add_peer(mesh.keys_dir, "operator", "ghost"), copied)
    keys.revoke_peer(mesh.keys_dir, "operator:ghost")
    with pytest.raises(StatusUnavailable, match="refused this key") as err:
        ask_controller(mesh.controller_address, GetStatus(), StatusReply, timeout_s=2.0, keys_dir=copied)
    assert "did not answer" not in str(err.value)
