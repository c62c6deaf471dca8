"""An agent's registrations against a controller that goes away: one outstanding at a time, so
the controller's return does not replay a backlog; and a clean stop says goodbye."""

from __future__ import annotations

import asyncio
import logging

import zmq
import zmq.asyncio

from agents.agent_actor import AgentActor
from agents.config import AgentConfig
from protocol.codec import decode, encode
from protocol.message import DeregisterAgent, ErrorReply, Heartbeat, RegisterAgent, RegisterAgentReply

BOUND_S = 10.0


class EdgeController:
    """A ROUTER at a fixed address that answers registrations and records what arrives."""

    def __init__(self, ctx: zmq.asyncio.Context, address: str = "tcp://127.0.0.1:0") -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: list[object] = []
        self.changed = asyncio.Event()
        self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            peer, *frames = await self.sock.recv_multipart()
            msg, _ = decode(frames)
            self.received.append(msg)
            self.changed.set()
            if isinstance(msg, RegisterAgent):
                reply = RegisterAgentReply(agent_id=msg.agent_id, heartbeat_interval_s=0.1, controller_epoch=1)
                await self.sock.send_multipart([peer, *encode(reply)])

    async def until(self, predicate) -> None:
        async def wait() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), BOUND_S)

    def count(self, kind: type) -> int:
        return sum(isinstance(m, kind) for m in self.received)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close(linger=0)


async def eventually(predicate, timeout_s: float = BOUND_S) -> None:
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(wait(), timeout_s)


async def test_a_controller_back_after_a_while_gets_one_registration_not_a_backlog(ctx, tmp_path) -> None:
    edges = [EdgeController(ctx)]
    address = edges[0].address
    agent = AgentActor(AgentConfig(controller=address, agent_id="a1", state_dir=str(tmp_path), heartbeat_interval_s=0.1,
                                   missed_heartbeats=3, register_retry_s=0.1, register_retry_max_s=0.4), ctx=ctx)
    try:
        await asyncio.wait_for(agent.start(), BOUND_S)
        edge = edges[0]
        await edge.until(lambda: edge.count(Heartbeat) >= 3)
        first = next(m for m in edge.received if isinstance(m, RegisterAgent))
        assert first.instance == agent.instance and first.workers == ()
        await edge.close()  # the controller goes away
        sent = agent.registrations_sent
        await eventually(lambda: agent.registrations_sent >= sent + 5)  # five tries while nobody listens

        edge = EdgeController(ctx, address)  # back at the same address
        edges.append(edge)
        await edge.until(lambda: edge.count(Heartbeat) >= 1)  # registered again, heartbeating
        registrations = [m for m in edge.received if isinstance(m, RegisterAgent)]
        assert 1 <= len(registrations) <= 2, f"{len(registrations)} registrations replayed"
        assert {r.instance for r in registrations} == {agent.instance}

        await asyncio.wait_for(agent.stop(), BOUND_S)
        assert agent.failure is None
        await edge.until(lambda: edge.count(DeregisterAgent) == 1)  # a clean stop says goodbye
    finally:
        await asyncio.wait_for(agent.stop(), BOUND_S)
        for e in edges:
            await e.close()


class RevokingController(EdgeController):
    """Refuses the agent as revoked, and beats to it as a controller does to an agent it has not forgotten yet."""

    async def _serve(self) -> None:
        beats = asyncio.create_task(self._beat())
        try:
            while True:
                peer, *frames = await self.sock.recv_multipart()
                msg, _ = decode(frames)
                self.received.append(msg)
                self.peer = peer
                self.changed.set()
                refusal = ErrorReply(code="revoked", message="agent:a1 is no longer authorised")
                await self.sock.send_multipart([peer, *encode(refusal)])
        finally:
            beats.cancel()

    async def _beat(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(0.1)
            if getattr(self, "peer", None) is not None:
                seq += 1
                await self.sock.send_multipart([self.peer, *encode(Heartbeat(sender="controller", role="controller",
                                                                             seq=seq))])


async def test_a_revoked_agent_says_so_once_with_the_way_back_and_registers_only_now_and_then(ctx, tmp_path,
                                                                                          caplog) -> None:
    edge = RevokingController(ctx)
    agent = AgentActor(AgentConfig(controller=edge.address, agent_id="a1", state_dir=str(tmp_path),
                                   heartbeat_interval_s=0.1, register_retry_s=0.1, register_retry_max_s=0.5), ctx=ctx)
    try:
        with caplog.at_level(logging.ERROR, logger="agents.agent_actor"):
            await asyncio.wait_for(agent.start(), BOUND_S)
            await edge.until(lambda: edge.count(RegisterAgent) >= 1)
            await asyncio.sleep(0.5)  # the refusal arrives, the beats go on
            sent = agent.registrations_sent
            await asyncio.sleep(2.0)
        # Every 0.5 s at most (register_retry_max_s), not at each of the controller's 20 beats.
        assert agent.registrations_sent - sent <= 6, agent.registrations_sent - sent
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors  # said once, although it has no worker to stop
        assert "refuses this agent: agent:a1 is no longer authorised; 0 worker(s) stopped" in errors[0]
        assert "letmesh keys add agent a1" in errors[0] and "hosts/agent-a1/" in errors[0]
        assert not agent.is_registered
    finally:
        try:
            await asyncio.wait_for(agent.stop(), BOUND_S)
        finally:
            await edge.close()  # whatever the stop did: an open socket would hang the context's teardown


async def test_a_second_agent_under_a_live_agents_name_says_its_registrations_go_unheard(ctx, tmp_path, caplog) -> None:
    from mesh.transport import Endpoint

    router = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    first = Endpoint.dealer(ctx, router.address, "agent:a1")
    agent = None
    try:
        await first.send(Heartbeat(sender="a1", role="agent"))
        assert (await asyncio.wait_for(router.recv(), BOUND_S)).peer == b"agent:a1"  # the name is held
        agent = AgentActor(AgentConfig(controller=router.address, agent_id="a1", state_dir=str(tmp_path),
                                       heartbeat_interval_s=0.5, register_retry_s=0.1, register_retry_max_s=0.3),
                           ctx=ctx)

        def said() -> list[str]:
            return [r.getMessage() for r in caplog.records if "answered none" in r.getMessage()]

        with caplog.at_level(logging.WARNING, logger="agents.agent_actor"):
            await asyncio.wait_for(agent.start(), BOUND_S)
            await eventually(lambda: said(), timeout_s=20)
            sent = agent.registrations_sent
            await eventually(lambda: agent.registrations_sent >= sent + 3, timeout_s=20)
        assert len(said()) == 1, said()  # once a minute at most
        assert "took 3 registrations and answered none: either another agent is connected as 'a1'" in said()[0]
        assert not agent.is_registered
    finally:
        try:
            if agent is not None:
                await asyncio.wait_for(agent.stop(), BOUND_S)
        finally:
            first.close()  # whatever the stop did: an open socket would hang the context's teardown
            router.close()
