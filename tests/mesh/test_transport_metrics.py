"""A ROUTER's transport counters as an operator scrapes them: real sockets, a real registry."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh.transport import Endpoint
from mesh.transport_metrics import EndpointCollector
from protocol.message import Heartbeat
from tests.mesh.test_transport import _drain as drain
from tests.mesh.test_transport import raw_dealer


def scrape(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(sample name, socket label) -> value, from the text a Prometheus server would read."""
    text = generate_latest(registry).decode()
    return {(s.name, s.labels.get("socket", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_a_second_peer_under_a_live_name_and_bad_frames_show_in_the_counters(ctx) -> None:
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    registry = CollectorRegistry()
    registry.register(EndpointCollector(lambda: {"control": router, "absent": None}))
    first = Endpoint.dealer(ctx, router.address, "agent:a1")
    second = Endpoint.dealer(ctx, router.address, "agent:a1")
    garbage = raw_dealer(ctx, router.address, b"agent:g1")
    try:
        quiet = scrape(registry)
        assert quiet[("letmesh_peer_claims_dropped_total", "control")] == 0
        assert quiet[("letmesh_transport_invalid_messages_total", "control")] == 0
        assert not any(label == "absent" for _, label in quiet)  # no endpoint (yet): no series

        await first.send(Heartbeat(sender="first", role="agent"))
        assert (await asyncio.wait_for(router.recv(), 5)).msg.sender == "first"
        for seq in range(30):
            second.send_nowait(Heartbeat(sender="second", role="agent", seq=seq))
        await garbage.send_multipart([b"\xc1garbage"])
        await first.send(Heartbeat(sender="first", role="agent", seq=1))
        got = await drain(router, 1.0)
        assert [g.msg.sender for g in got] == ["first"]
        seen = scrape(registry)
        assert seen[("letmesh_peer_claims_dropped_total", "control")] == 30
        assert seen[("letmesh_transport_invalid_messages_total", "control")] == 1
        assert seen[("letmesh_peer_takeovers_total", "control")] == 0
        assert seen[("letmesh_peer_names", "control")] == 2  # agent:a1 and the garbage sender

        first.close()  # the holder goes: the second connection takes the name over
        async with asyncio.timeout(10):
            while not await drain(router, 0.2):
                second.send_nowait(Heartbeat(sender="second", role="agent", seq=99))
        assert scrape(registry)[("letmesh_peer_takeovers_total", "control")] == 1
    finally:
        first.close()
        second.close()
        garbage.close()
        router.close()
