"""The gateway's lifecycle: a stop flips readiness before it drains; a dead controller link shows in health."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import zmq
import zmq.asyncio
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.event_log import Event
from gateway.health import Health, install, watch
from gateway.service import GatewayService
from mesh.actor import Actor, ActorCrashed
from mesh.supervisor import Supervisor
from protocol.codec import decode
from protocol.message import DecisionRecords
from protocol.types import CandidateInfo

BOUND_S = 10.0


async def wait_for(predicate, timeout_s: float = BOUND_S) -> None:
    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        return resp.status


async def test_a_stop_answers_503_on_readiness_first_and_lets_the_request_in_flight_finish() -> None:
    config = GatewayConfig(controller="tcp://127.0.0.1:1", gateway_id="drain-test", http_port=0,
                           data_bind="tcp://127.0.0.1:*", shutdown_timeout_s=BOUND_S)
    service = GatewayService(config)
    await service.start()
    stopping = None
    try:
        host, port = service.http_url.removeprefix("http://").split(":")
        # A feedback request whose body is still arriving is in flight until the rest comes.
        body = b'{"event_id": "nobody", "reward": 0.5}'
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body[:5])
        await writer.drain()

        async def in_flight() -> bool:
            return service.health.in_flight == 1

        await wait_for(in_flight)
        stopping = asyncio.create_task(service.stop())
        async with aiohttp.ClientSession() as session:
            async def not_ready() -> bool:
                return await status_of(session, service.http_url + "/v2/health/ready") == 503

            await wait_for(not_ready)
            # Still live (only draining), and still taking requests until the drain is done.
            assert await status_of(session, service.http_url + "/v2/health/live") == 200
        assert not stopping.done()
        writer.write(body[5:])
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), BOUND_S)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 404"), reply[:80]  # answered: the event is unknown here
        await asyncio.wait_for(stopping, BOUND_S)
    finally:
        if stopping is None:
            await service.stop()


async def http_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """One request on an open connection; its answer's head and body."""
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await asyncio.wait_for(reader.readexactly(length), BOUND_S)


async def test_a_request_on_a_kept_alive_connection_as_the_gateway_stops_is_answered_not_dropped() -> None:
    config = GatewayConfig(controller="tcp://127.0.0.1:1", gateway_id="linger-test", http_port=0,
                           data_bind="tcp://127.0.0.1:*", shutdown_timeout_s=BOUND_S, drain_linger_s=BOUND_S)
    service = GatewayService(config)
    await service.start()
    stopping = None
    writer = None
    try:
        host, port = service.http_url.removeprefix("http://").split(":")
        live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        reader, writer = await asyncio.open_connection(host, int(port))
        first = await http_exchange(reader, writer, live)
        assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()  # kept alive

        stopping = asyncio.create_task(service.stop())

        async def refused() -> bool:  # past the drain: no new connection is taken
            try:
                _, probe = await asyncio.open_connection(host, int(port))
            except OSError:
                return True
            probe.close()
            await asyncio.sleep(0.05)
            return False

        await wait_for(refused)
        await asyncio.sleep(0.2)  # as a client whose connection sat idle in its pool would
        # The request sent on the kept-alive connection now is answered, and the answer closes it.
        second = await http_exchange(reader, writer, live)
        assert second.startswith(b"HTTP/1.1 200"), second[:80]
        assert b"connection: close" in second.lower()
        assert await asyncio.wait_for(reader.read(), BOUND_S) == b""  # then the gateway closes it
        # With no connection left open the stop ends; it does not wait out the linger.
        await asyncio.wait_for(stopping, BOUND_S / 2)
    finally:
        if writer is not None:
            writer.close()
        if stopping is None:
            await service.stop()
        elif not stopping.done():
            await stopping


class Doomed(Actor):
    """A child that crashes on every "boom"."""

    def __init__(self) -> None:
        super().__init__(name="doomed")

    async def handle(self, msg: Any) -> Any:
        raise ActorCrashed("boom")


async def test_a_supervisor_that_gives_up_turns_readiness_and_liveness_to_503() -> None:
    health = Health()
    app = web.Application()
    async def ok(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app.router.add_get("/v2/health/live", ok)
    app.router.add_get("/v2/health/ready", ok)
    install(app, health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    supervisor = Supervisor(name="link", max_restarts=2, within_s=60.0)
    supervisor.add("control", Doomed)
    await supervisor.start()
    watcher = asyncio.create_task(watch(supervisor, health))
    try:
        async with aiohttp.ClientSession() as session:
            assert await status_of(session, url + "/v2/health/ready") == 200
            while not watcher.done():
                try:
                    supervisor.child("control").tell("boom")
                except Exception:
                    pass  # between a crash and its restart
                await asyncio.wait({watcher}, timeout=0.05)
            assert "crashed more than 2 times" in health.control_link_failed
            async with session.get(url + "/v2/health/ready") as resp:
                assert resp.status == 503
                assert "controller link failed" in (await resp.json())["error"]
            assert await status_of(session, url + "/v2/health/live") == 503
    finally:
        await supervisor.stop()
        await asyncio.wait_for(watcher, BOUND_S)
        await runner.cleanup()


async def test_a_decision_record_the_codec_cannot_carry_is_dropped_and_the_link_carries_on() -> None:
    ctx = zmq.asyncio.Context()
    controller = ctx.socket(zmq.ROUTER)
    controller.setsockopt(zmq.LINGER, 0)
    port = controller.bind_to_random_port("tcp://127.0.0.1")
    config = GatewayConfig(controller=f"tcp://127.0.0.1:{port}", gateway_id="poison-test", http_port=0,
                           data_bind="tcp://127.0.0.1:*", heartbeat_interval_s=0.05)
    service = GatewayService(config)
    await service.start()
    try:
        arm = CandidateInfo(variant="v", accuracy=0.9, predicted_latency_ms=1.0, p_deadline=1.0, energy_j=0.0)
        # An event logged with a context past msgpack's integers (as a gateway without edge checks did).
        for event_id, context in (("poisoned", {"u": 10**30}), ("sound", {"u": 1})):
            service.events.record(Event(event_id=event_id, family="f", context=context, budget_ms=10.0, load=0.0,
                                        candidates=(arm,), chosen=0, probability=1.0, created=0.0))
            service.events.outcome(event_id, met=True)
            service.events.feedback(event_id, 1.0, 0.0)

        async def shipped() -> list[str]:
            while True:
                frames = await controller.recv_multipart()
                msg, _ = decode(frames[1:])
                if isinstance(msg, DecisionRecords):
                    return [r.event_id for r in msg.records]

        assert await asyncio.wait_for(shipped(), BOUND_S) == ["sound"]
        link = service._supervisor.child("control")
        assert link.unsendable_records == 1 and link.statistics().failed == 0 and link.running
    finally:
        await service.stop()
        controller.close(0)
        ctx.term()



async def test_decisions_made_while_the_controller_is_down_ship_newest_first_kept_when_it_is_back() -> None:
    ctx = zmq.asyncio.Context()
    probe = ctx.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(0)  # nothing listens there until the controller comes back
    config = GatewayConfig(controller=f"tcp://127.0.0.1:{port}", gateway_id="backlog-test", http_port=0,
                           data_bind="tcp://127.0.0.1:*", heartbeat_interval_s=0.05, decision_batch_max=4)
    service = GatewayService(config)
    await service.start()
    service.events.max_ready = 10  # the backlog kept while the link is down
    controller = ctx.socket(zmq.ROUTER)
    controller.setsockopt(zmq.LINGER, 0)
    try:
        arm = CandidateInfo(variant="v", accuracy=0.9, predicted_latency_ms=1.0, p_deadline=1.0, energy_j=0.0)
        for i in range(30):  # three rounds of ten decisions, each met by ticks that find the link down
            service.events.record(Event(event_id=f"e{i:02d}", family="f", context={}, budget_ms=10.0, load=0.0,
                                        candidates=(arm,), chosen=0, probability=1.0, created=0.0))
            service.events.outcome(f"e{i:02d}", met=True)
            service.events.feedback(f"e{i:02d}", 1.0, 0.0)
            if i % 10 == 9:
                await asyncio.sleep(0.3)
        controller.bind(f"tcp://127.0.0.1:{port}")

        async def shipped() -> list[str]:
            got: list[str] = []
            while len(got) < 10:
                frames = await controller.recv_multipart()
                msg, _ = decode(frames[1:])
                if isinstance(msg, DecisionRecords):
                    got += [r.event_id for r in msg.records]
            return got

        assert await asyncio.wait_for(shipped(), BOUND_S) == [f"e{i}" for i in range(20, 30)]  # the newest, in order
        await asyncio.sleep(0.3)
        assert service.events.dropped == 20 and service.events.due(0.0) == []
    finally:
        await service.stop()
        controller.close(0)
        ctx.term()

async def test_the_gateway_says_when_a_lost_controller_is_back(caplog) -> None:
    from protocol.codec import encode
    from protocol.message import Heartbeat

    ctx = zmq.asyncio.Context()
    controller = ctx.socket(zmq.ROUTER)
    controller.setsockopt(zmq.LINGER, 0)
    port = controller.bind_to_random_port("tcp://127.0.0.1")
    config = GatewayConfig(controller=f"tcp://127.0.0.1:{port}", gateway_id="back-test", http_port=0,
                           data_bind="tcp://127.0.0.1:*", heartbeat_interval_s=0.05, missed_heartbeats=2)
    service = GatewayService(config)
    caplog.set_level("INFO", logger="gateway.control_actor")
    await service.start()
    try:
        peer = (await asyncio.wait_for(controller.recv_multipart(), BOUND_S))[0]  # its registration
        await controller.send_multipart([peer, *encode(Heartbeat(sender="controller", role="controller", seq=1))])
        async def logged(text: str) -> bool:
            return text in caplog.text

        await wait_for(lambda: logged("controller lost"))  # then silence
        assert "controller back" not in caplog.text
        await controller.send_multipart([peer, *encode(Heartbeat(sender="controller", role="controller", seq=2))])
        await wait_for(lambda: logged("controller back after"))
    finally:
        await service.stop()
        controller.close(0)
        ctx.term()
