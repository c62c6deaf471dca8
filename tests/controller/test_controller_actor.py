"""The controller actor over real ZeroMQ: fake peers are plain DEALER sockets speaking the codec."""

from __future__ import annotations

import asyncio
import hashlib
import shutil

import pytest
import torch
from torch import nn

from agents.model_runner import trial_run
from controller.artifact_serving import ArtifactFiles, artifact_chunk
from controller.model_import import NewVariant, add_model, parse_tensor
from controller.repository import load_repository
from letmesh.zoo import quiet_jit
from mesh.clock import FakeClock
from protocol.codec import ARTIFACT_CHUNK_BYTES
from protocol.message import (
    ArtifactChunkReply,
    ErrorReply,
    FetchArtifact,
    GatewayListChanged,
    GetStatus,
    Heartbeat,
    RegisterAgent,
    RegisterAgentReply,
    RegisterGateway,
    RegisterGatewayReply,
    RoutingTable,
    StartWorker,
    WorkerReady,
)
from protocol.types import DeviceInfo, RunningWorker

from tests.controller.conftest import BOUND_S, Peer, Scale, add_variant
GATEWAY_1 = "tcp://127.0.0.1:17001"
GATEWAY_2 = "tcp://127.0.0.1:17002"


def cpu(cores: int) -> DeviceInfo:
    return DeviceInfo(device_id="cpu0", kind="cpu", name="test cpu", cores=cores, memory_bytes=1 << 30)


async def register_agent(agent: Peer, cores: int = 2) -> tuple[RegisterAgentReply, list[StartWorker]]:
    """Register and return the reply plus every StartWorker the registration produced."""
    await agent.send(RegisterAgent(agent_id="a1", hostname="host-1", devices=(cpu(cores),), pid=1))
    reply = await agent.expect(RegisterAgentReply)
    await agent.sync()
    return reply, agent.take(StartWorker)


async def register_gateway(gateway: Peer, endpoint: str = GATEWAY_1) -> RoutingTable:
    """Register and return the first routing table that lists the models."""
    await gateway.send(RegisterGateway(gateway_id="g", data_endpoint=endpoint, http_url="http://127.0.0.1:8000"))
    await gateway.expect(RegisterGatewayReply)
    return await gateway.expect(RoutingTable, lambda t: len(t.models) > 0)


async def register_agent_running(agent: Peer, starts: list[StartWorker]) -> None:
    """Register again (after a controller restart) still running the workers ``starts`` began."""
    await agent.send(RegisterAgent(agent_id="a1", hostname="host-1", devices=(cpu(2),), pid=1,
                                   workers=tuple(RunningWorker(worker_id=s.worker_id, pid=4242,
                                                               variants=tuple(v.name for v in s.variants))
                                                 for s in starts)))
    await agent.expect(RegisterAgentReply)


def worker_ready(start: StartWorker, pid: int = 4242) -> WorkerReady:
    names = tuple(v.name for v in start.variants)
    return WorkerReady(worker_id=start.worker_id, agent_id="a1", variants=names, pid=pid,
                       batch_latency_ms={n: (1.0, 2.0) for n in names})


def routed(table: RoutingTable) -> dict[str, tuple[str, ...]]:
    return {w.worker_id: w.variants for w in table.workers}


async def test_agent_registers_and_gets_workers_covering_every_variant(start_controller, peer, repo) -> None:
    controller = await start_controller()
    agent = peer(controller.address, b"agent:a1")
    await agent.send(RegisterAgent(agent_id="body-is-ignored", hostname="host-1", devices=(cpu(2),)))

    reply = await agent.expect(RegisterAgentReply)
    starts = [await agent.expect(StartWorker) for _ in range(2)]

    assert reply.agent_id == "a1"  # the routing identity names the agent
    assert reply.controller_epoch == 1 and reply.heartbeat_interval_s == 1.0
    variants = load_repository(repo)
    served = [v for s in starts for v in s.variants]
    assert sorted(v.name for v in served) == sorted(variants)
    assert all(v == variants[v.name].spec() for v in served)
    assert sorted(s.partition.cores for s in starts) == [(0,), (1,)]
    assert all(s.controller == controller.address and s.gateways == () for s in starts)
    status = await controller.ask(GetStatus(), BOUND_S)
    assert {(w.worker_id, w.state) for w in status.workers} == {(s.worker_id, "starting") for s in starts}
    assert [(a.agent_id, a.hostname, a.alive) for a in status.agents] == [("a1", "host-1", True)]


async def test_start_commands_carry_the_advertised_address_and_known_gateways(start_controller, peer) -> None:
    controller = await start_controller(advertise="tcp://controller.example:5555")
    await register_gateway(peer(controller.address, b"gateway:g1"))
    _, starts = await register_agent(peer(controller.address, b"agent:a1"))

    assert starts
    assert {(s.controller, s.gateways) for s in starts} == {("tcp://controller.example:5555", (GATEWAY_1,))}


async def test_gateway_registers_and_gets_the_routing_table(start_controller, peer, repo) -> None:
    controller = await start_controller()
    gateway = peer(controller.address, b"gateway:g1")
    await gateway.send(RegisterGateway(gateway_id="x", data_endpoint=GATEWAY_1, http_url="http://127.0.0.1:8000"))

    reply = await gateway.expect(RegisterGatewayReply)
    table = await gateway.expect(RoutingTable, lambda t: len(t.models) > 0)

    assert reply.gateway_id == "g1" and reply.controller_epoch == 1
    assert [m.name for m in table.models] == sorted(load_repository(repo))
    assert table.workers == ()
    assert (await gateway.sync()).gateways == (GATEWAY_1,)


async def test_first_routing_table_a_gateway_gets_lists_the_models(start_controller, peer) -> None:
    controller = await start_controller()
    gateway = peer(controller.address, b"gateway:g1")
    await gateway.send(RegisterGateway(gateway_id="g1", data_endpoint=GATEWAY_1, http_url="http://127.0.0.1:8000"))
    first = await gateway.expect(RoutingTable)
    assert first.models and first.version >= 1


async def test_ready_worker_is_pushed_to_the_gateway(start_controller, peer) -> None:
    controller = await start_controller()
    agent = peer(controller.address, b"agent:a1")
    gateway = peer(controller.address, b"gateway:g1")
    _, starts = await register_agent(agent)
    before = await register_gateway(gateway)
    chosen = starts[0]
    worker = peer(controller.address, f"worker:{chosen.worker_id}".encode())

    await worker.send(worker_ready(chosen))
    table = await gateway.expect(RoutingTable, lambda t: len(t.workers) > 0)

    assert table.version > before.version
    assert routed(table) == {chosen.worker_id: tuple(v.name for v in chosen.variants)}
    assert (await worker.expect(GatewayListChanged)).gateways == (GATEWAY_1,)
    status = await worker.sync()
    states = {w.worker_id: (w.state, w.pid) for w in status.workers}
    assert states[chosen.worker_id] == ("ready", 4242)
    ready_models = {m.name for m in status.models if m.state == "READY"}
    assert ready_models == {v.name for v in chosen.variants}

    # A second gateway is announced to the ready worker.
    gateway2 = peer(controller.address, b"gateway:g2")
    await register_gateway(gateway2, GATEWAY_2)
    announced = await worker.expect(GatewayListChanged, lambda m: len(m.gateways) == 2)
    assert announced.gateways == (GATEWAY_1, GATEWAY_2)


async def test_worker_outside_the_plan_is_not_routed(start_controller, peer) -> None:
    controller = await start_controller()
    stranger = peer(controller.address, b"worker:nobody.w0")
    await stranger.send(WorkerReady(worker_id="nobody.w0", agent_id="x", variants=("identity",), pid=1,
                                    batch_latency_ms={}))
    status = await stranger.sync()
    assert status.workers == () and status.routing_version == (status.controller_epoch << 32) + 1
    assert all(m.state == "UNAVAILABLE" for m in status.models)


async def test_silent_worker_drops_out_of_the_gateway_table(start_controller, peer) -> None:
    clock = FakeClock()
    # Ticks every 50 ms of real time; peers are lost after 0.1 s of fake time without a beat.
    controller = await start_controller(clock=clock, heartbeat_interval_s=0.05, missed_heartbeats=2)
    agent = peer(controller.address, b"agent:a1")
    gateway = peer(controller.address, b"gateway:g1")
    _, starts = await register_agent(agent)
    await register_gateway(gateway)
    worker = peer(controller.address, f"worker:{starts[0].worker_id}".encode())
    await worker.send(worker_ready(starts[0]))
    listed = await gateway.expect(RoutingTable, lambda t: len(t.workers) == 1)

    # The agent and gateway keep beating; the worker falls silent. Small steps, and as many as it
    # takes: a step longer than a tick interval between two ticks reads as the controller's own
    # stall, which it forgives.
    for _ in range(100):
        clock.advance(0.03)
        for p, role in ((agent, "agent"), (gateway, "gateway")):
            await p.send(Heartbeat(sender=role, role=role, seq=1))
            await p.sync()
        if any(isinstance(m, RoutingTable) and m.version > listed.version for m in gateway.pending):
            break

    dropped = await gateway.expect(RoutingTable, lambda t: t.version > listed.version)
    assert dropped.workers == ()
    status = await gateway.sync()
    assert {w.worker_id: w.state for w in status.workers}[starts[0].worker_id] == "lost"
    assert all(a.alive for a in status.agents)


async def test_artifact_chunks_hash_to_the_manifest_sha(start_controller, peer, repo) -> None:
    controller = await start_controller()
    fetcher = peer(controller.address, b"worker:fetcher")
    wide = load_repository(repo)["wide"]

    data = bytearray()
    chunks = 0
    while True:
        await fetcher.send(FetchArtifact(sha256=wide.sha256, offset=len(data), length=ARTIFACT_CHUNK_BYTES))
        chunk = await fetcher.expect(ArtifactChunkReply)
        assert chunk.sha256 == wide.sha256 and chunk.offset == len(data)
        assert chunk.total_size == wide.size_bytes
        assert 0 < len(chunk.data) <= ARTIFACT_CHUNK_BYTES
        data += chunk.data
        chunks += 1
        if len(data) >= chunk.total_size:
            break

    assert chunks >= 2
    assert hashlib.sha256(data).hexdigest() == wide.sha256


async def test_a_replaced_artifact_is_served_as_it_was_read_under_its_digest(start_controller, peer, repo,
                                                                             tmp_path) -> None:
    """``letmesh repo add --replace`` beside a running controller: until it restarts, its plans name
    the old digest, and a worker fetching it gets the old bytes (it got the new ones under the old
    digest, failed its check, and the variant was set aside mesh-wide)."""
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    controller = await start_controller(repository=copy)
    wide = load_repository(copy)["wide"]
    replacement = tmp_path / "new.pt"
    with quiet_jit():
        torch.jit.save(torch.jit.script(nn.Linear(384, 384).eval()), str(replacement))
    new = add_model(copy, replacement, NewVariant(name="wide", family="wide", accuracy=0.9,
                                                  inputs=(parse_tensor("x:FP32:-1,384"),)),
                    trial=trial_run, replace=True)
    assert new.sha256 != wide.sha256 and not any(p.name.startswith(".wide") for p in copy.iterdir())

    fetcher = peer(controller.address, b"worker:fetcher")
    data = bytearray()
    while True:
        await fetcher.send(FetchArtifact(sha256=wide.sha256, offset=len(data), length=ARTIFACT_CHUNK_BYTES))
        chunk = await fetcher.expect(ArtifactChunkReply)
        data += chunk.data
        if len(data) >= chunk.total_size:
            break
    assert hashlib.sha256(data).hexdigest() == wide.sha256


@pytest.mark.parametrize(
    ("known", "offset", "length", "code"),
    [(False, 0, 1024, "unknown_artifact"), (True, 0, 0, "bad_range"), (True, -1, 1024, "bad_range"),
     (True, 2 ** 63, 1024, "bad_range"), (True, 2 ** 40, 1024, "bad_range")],
    ids=["unknown-sha", "empty-length", "negative-offset", "offset-past-any-file", "offset-past-the-file"],
)
async def test_bad_artifact_request_gets_an_error(start_controller, peer, repo, known: bool, offset: int,
                                                  length: int, code: str) -> None:
    controller = await start_controller()
    fetcher = peer(controller.address, b"worker:fetcher")
    sha = load_repository(repo)["identity"].sha256 if known else "0" * 64
    await fetcher.send(FetchArtifact(sha256=sha, offset=offset, length=length))
    error = await fetcher.expect(ErrorReply)
    assert error.code == code


async def test_an_artifact_moved_away_after_the_start_is_still_served_and_one_unreadable_is_an_error(
        start_controller, peer, repo) -> None:
    controller = await start_controller()
    fetcher = peer(controller.address, b"worker:fetcher")
    identity = load_repository(repo)["identity"]
    moved = identity.artifact.with_name("moved-away")
    identity.artifact.rename(moved)
    try:
        # The controller holds what it read: the digest its plans name still fetches.
        await fetcher.send(FetchArtifact(sha256=identity.sha256, offset=0, length=ARTIFACT_CHUNK_BYTES))
        chunk = await fetcher.expect(ArtifactChunkReply)
        assert hashlib.sha256(chunk.data).hexdigest() == identity.sha256 and len(chunk.data) == chunk.total_size
        # One it does not hold (changed on disk while the repository was read): an error reply,
        # never silence, and not one to retry.
        gone = artifact_chunk(identity, identity.sha256, 0, 1024, ArtifactFiles(()))
        assert isinstance(gone, ErrorReply) and gone.code == "unknown_artifact" and not gone.retryable
    finally:
        moved.rename(identity.artifact)


@pytest.mark.parametrize("identity", [b"agent:ghost", b"gateway:ghost", b"worker:ghost.w0", b"cli:x"])
async def test_heartbeat_from_unregistered_peer_asks_it_to_register(start_controller, peer, identity) -> None:
    controller = await start_controller()
    ghost = peer(controller.address, identity)
    await ghost.send(Heartbeat(sender="ghost", role="agent", seq=1))
    error = await ghost.expect(ErrorReply)
    assert error.code == "unknown_peer" and error.retryable


async def test_heartbeat_from_registered_agent_needs_no_answer(start_controller, peer) -> None:
    controller = await start_controller()
    agent = peer(controller.address, b"agent:a1")
    await register_agent(agent)
    await agent.send(Heartbeat(sender="a1", role="agent", seq=1))
    await agent.sync()  # an ErrorReply would fail here
    assert not agent.take(ErrorReply)


@pytest.mark.parametrize(
    ("identity", "msg"),
    [
        (b"gateway:g1", RegisterAgent(agent_id="a1", hostname="h", devices=())),
        (b"agent:a1", RegisterGateway(gateway_id="g1", data_endpoint=GATEWAY_1, http_url="")),
        (b"agent:a1", WorkerReady(worker_id="a1.w0", agent_id="a1", variants=(), pid=1, batch_latency_ms={})),
        (b"worker:a1.w0", RegisterAgentReply(agent_id="a1", heartbeat_interval_s=1.0, controller_epoch=1)),
    ],
    ids=["agent-msg-from-gateway", "gateway-msg-from-agent", "worker-msg-from-agent", "reply-to-controller"],
)
async def test_message_from_the_wrong_role_is_refused(start_controller, peer, identity, msg) -> None:
    controller = await start_controller()
    sender = peer(controller.address, identity)
    await sender.send(msg)
    error = await sender.expect(ErrorReply)
    assert error.code == "unexpected"
    status = await sender.sync()
    assert status.agents == () and status.gateways == ()


async def test_operator_gets_status(start_controller, peer, repo) -> None:
    controller = await start_controller()
    cli = peer(controller.address, b"cli:x")
    status = await cli.sync()
    assert status.controller_epoch == 1
    assert [(m.name, m.state) for m in status.models] == [(n, "UNAVAILABLE") for n in sorted(load_repository(repo))]
    assert status.agents == () and status.workers == () and status.gateways == ()


async def test_restart_bumps_epoch_and_keeps_the_placement(start_controller, peer, tmp_path) -> None:
    state = tmp_path / "kept-state"
    first = await start_controller(state_dir=state)
    agent = peer(first.address, b"agent:a1")
    reply1, starts1 = await register_agent(agent)
    agent.close()
    await asyncio.wait_for(first.stop(), BOUND_S)

    second = await start_controller(state_dir=state)
    status = await second.ask(GetStatus(), BOUND_S)
    assert {w.worker_id for w in status.workers} == {s.worker_id for s in starts1}  # known before the agent is back
    agent = peer(second.address, b"agent:a1")
    reply2, starts2 = await register_agent(agent)

    assert (reply1.controller_epoch, reply2.controller_epoch) == (1, 2)

    def plans(starts: list[StartWorker]) -> set:
        return {(s.worker_id, s.partition, s.variants) for s in starts}

    assert plans(starts2) == plans(starts1)
    assert all(s.controller == second.address for s in starts2)


async def test_variant_added_before_a_restart_is_placed(start_controller, peer, repo, tmp_path) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(repo, repository)
    state = tmp_path / "state-added"
    first = await start_controller(state_dir=state, repository=repository)
    agent = peer(first.address, b"agent:a1")
    await register_agent(agent)
    agent.close()
    await asyncio.wait_for(first.stop(), BOUND_S)

    add_variant(repository, "added", Scale(5.0), 16)
    second = await start_controller(state_dir=state, repository=repository)
    agent = peer(second.address, b"agent:a1")
    _, starts = await register_agent(agent)

    assert "added" in {v.name for s in starts for v in s.variants}


async def test_routing_versions_keep_growing_across_a_restart(start_controller, peer, tmp_path) -> None:
    state = tmp_path / "state-versions"
    first = await start_controller(state_dir=state)
    agent, gateway = peer(first.address, b"agent:a1"), peer(first.address, b"gateway:g1")
    _, starts = await register_agent(agent)
    await register_gateway(gateway)
    worker = peer(first.address, f"worker:{starts[0].worker_id}".encode())
    await worker.send(worker_ready(starts[0]))
    old = await gateway.expect(RoutingTable, lambda t: len(t.workers) == 1)
    for p in (agent, gateway, worker):
        p.close()
    await asyncio.wait_for(first.stop(), BOUND_S)

    second = await start_controller(state_dir=state)
    gateway = peer(second.address, b"gateway:g1")
    await gateway.send(RegisterGateway(gateway_id="g", data_endpoint=GATEWAY_1, http_url="http://127.0.0.1:8000"))
    await gateway.expect(RegisterGatewayReply)
    await gateway.sync()
    assert gateway.take(RoutingTable) == [], "held: the gateway keeps the table it has until the plan's workers report"
    agent = peer(second.address, b"agent:a1")
    await register_agent_running(agent, starts)
    for start in starts:  # every worker of the restored plan reports: the hold ends before hold_s
        worker = peer(second.address, f"worker:{start.worker_id}".encode())
        await worker.send(worker_ready(start))
    new = await gateway.expect(RoutingTable, lambda t: len(t.workers) == len(starts))

    assert new.version > old.version
    assert set(routed(old)) <= set(routed(new)), "the restarted controller routes to the workers that kept serving"


async def test_a_restarted_controller_lists_every_known_gateway_to_workers(start_controller, peer, tmp_path) -> None:
    """Gateways come back one by one after a controller restart: a worker told the list of those
    back so far would drop its links to the others, which are serving all along."""
    state = tmp_path / "state-gateways"
    first = await start_controller(state_dir=state)
    agent = peer(first.address, b"agent:a1")
    gateways = [peer(first.address, b"gateway:g1"), peer(first.address, b"gateway:g2")]
    _, starts = await register_agent(agent)
    await register_gateway(gateways[0], GATEWAY_1)
    await register_gateway(gateways[1], GATEWAY_2)
    for p in (agent, *gateways):
        p.close()
    await asyncio.wait_for(first.stop(), BOUND_S)

    second = await start_controller(state_dir=state)
    agent = peer(second.address, b"agent:a1")
    await register_agent_running(agent, starts)
    workers = [peer(second.address, f"worker:{s.worker_id}".encode()) for s in starts]
    for worker, start in zip(workers, starts):
        await worker.send(worker_ready(start))
    await register_gateway(peer(second.address, b"gateway:g1"), GATEWAY_1)
    await register_gateway(peer(second.address, b"gateway:g3"), "tcp://127.0.0.1:17003")  # a new one: announced

    announced = await workers[0].expect(GatewayListChanged, lambda m: "tcp://127.0.0.1:17003" in m.gateways)
    assert announced.gateways == (GATEWAY_1, GATEWAY_2, "tcp://127.0.0.1:17003")
    await workers[0].sync()
    assert all(GATEWAY_2 in m.gateways for m in workers[0].take(GatewayListChanged)), \
        "no list without the gateway that has not registered again yet"


def test_an_artifact_swapped_while_the_repository_was_read_is_not_served_under_the_old_digest(repo, tmp_path) -> None:
    import shutil
    import time

    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    read_ns = time.time_ns()
    variants = load_repository(copy)  # the digests, of the bytes there now
    identity = variants["identity"]
    swapped = copy / "identity" / "swapped.pt"
    swapped.write_bytes(b"other bytes")  # replaced between the scan and holding the files open
    swapped.replace(identity.artifact)
    files = ArtifactFiles(variants.values(), read_ns)
    try:
        reply = artifact_chunk(identity, identity.sha256, 0, 1024, files)
        assert isinstance(reply, ErrorReply) and reply.code == "unknown_artifact"
        wide = variants["wide"]  # untouched since: held and served
        chunk = artifact_chunk(wide, wide.sha256, 0, 1024, files)
        assert isinstance(chunk, ArtifactChunkReply) and len(chunk.data) == 1024
    finally:
        files.close()
