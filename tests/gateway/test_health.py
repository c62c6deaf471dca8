"""Readiness: the pure rule over a routing table, and /v2/health/ready on a real server and dispatcher."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.dispatcher import Dispatcher
from gateway.health import ROUTING_VERSION_HEADER, UNSERVED_HEADER, unready_reason
from gateway.http_app import make_app
from gateway.routing import RoutingView
from protocol.message import RoutingTable
from protocol.types import ModelInfo, TensorSpec, WorkerRoute
from tests.gateway.fake_worker import FakeWorker

SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)


def variant(name: str, family: str, accuracy: float) -> ModelInfo:
    return ModelInfo(name=name, family=family, accuracy=accuracy, max_batch=4, default_slo_ms=500.0,
                     inputs=SPEC, outputs=SPEC)


BIG, SMALL, OTHER = variant("big", "fam", 0.9), variant("small", "fam", 0.8), variant("solo", "solo", 0.7)


def route(worker_id: str, *variants: str, draining: bool = False) -> WorkerRoute:
    return WorkerRoute(worker_id=worker_id, variants=variants, latency_ms={}, draining=draining)


def table(*routes: WorkerRoute, models=(BIG, SMALL, OTHER), unavailable=None) -> RoutingView:
    return RoutingView(RoutingTable(version=1, models=models, workers=routes, unavailable=unavailable or {}))


@pytest.mark.parametrize(("view", "serving", "default", "strict"), [
    # Before the first table nothing is known: not ready either way.
    (RoutingView(), set(), "no routing table", "no routing table"),
    (table(models=()), set(), "names no model", "names no model"),
    # Every variant has a live worker.
    (table(route("w1", "big", "small"), route("w2", "solo")), {"big", "small", "solo"}, "", ""),
    # A re-plan placed only the small variant of "fam": the family is served; strict says no.
    (table(route("w1", "small"), route("w2", "solo")), {"small", "solo"}, "", "variants without a live worker: big"),
    # A family with no live worker at all is not ready in either mode.
    (table(route("w1", "big", "small")), {"big", "small"}, "families without a live worker: solo",
     "variants without a live worker: solo"),
    # A routed variant whose worker went silent: clients naming it would get 503.
    (table(route("w1", "big"), route("w2", "small"), route("w3", "solo")), {"small", "solo"},
     "routed variants without a live worker: big", "variants without a live worker: big"),
    # A draining worker takes nothing new: its variant is not routed, so it does not count.
    (table(route("w1", "big", draining=True), route("w2", "small"), route("w3", "solo")), {"small", "solo"},
     "", "variants without a live worker: big"),
    # A variant set aside as unloadable: left out of the models, so only strict readiness minds.
    (table(route("w1", "big", "small"), models=(BIG, SMALL), unavailable={"solo": "sha256 mismatch"}),
     {"big", "small"}, "", "variants that failed to load: solo"),
])
def test_readiness_asks_that_every_family_and_routed_variant_be_served_and_strict_asks_every_variant(
        view, serving, default, strict):
    default_reason = unready_reason(view, serving.__contains__)
    strict_reason = unready_reason(view, serving.__contains__, strict=True)
    assert (default_reason == "") == (default == "") and default in default_reason
    assert (strict_reason == "") == (strict == "") and strict in strict_reason


def test_a_long_list_of_missing_families_is_cut_short():
    models = tuple(variant(f"v{i}", f"f{i:02}", 0.5) for i in range(12))
    reason = unready_reason(table(models=models), lambda v: False)
    assert "f00, f01, f02, f03, f04 and 7 more" in reason


# --- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["default", "strict"])
async def gateway(request, ctx):
    dispatcher = Dispatcher(ctx, "tcp://127.0.0.1:*", gateway_id="test", heartbeat_interval_s=0.05,
                            missed_heartbeats=10)
    await dispatcher.start()
    client = TestClient(TestServer(make_app(dispatcher, max_body_bytes=65536, strict_readiness=request.param)))
    await client.start_server()
    client.strict = request.param
    client.dispatcher = dispatcher
    client.workers = []
    yield client
    await client.close()
    for w in client.workers:
        await w.close()
    await dispatcher.stop()


async def status_becomes(client: TestClient, path: str, status: int, timeout_s: float = 10.0) -> None:
    until = time.monotonic() + timeout_s
    while (resp := await client.get(path)).status != status:
        assert time.monotonic() < until, f"{path} stayed {resp.status}, never {status}"
        await asyncio.sleep(0.02)


async def test_ready_follows_what_the_table_can_serve_in_each_mode(gateway, ctx):
    resp = await gateway.get("/v2/health/ready")
    assert resp.status == 503 and "no routing table" in (await resp.json())["error"]
    assert UNSERVED_HEADER not in resp.headers

    # The plan gives family "fam" one worker with its small variant only; "big" has none.
    gateway.workers.append(FakeWorker(ctx, gateway.dispatcher.address, "w1"))
    gateway.dispatcher.apply_routing(RoutingTable(version=1, models=(BIG, SMALL), workers=(route("w1", "small"),)))
    if gateway.strict:
        await status_becomes(gateway, "/v2/models/small/ready", 200)
        resp = await gateway.get("/v2/health/ready")
        assert resp.status == 503 and "big" in (await resp.json())["error"]
    else:
        await status_becomes(gateway, "/v2/health/ready", 200)
    assert (await gateway.get("/v2/models/fam/ready")).status == 200
    assert (await gateway.get("/v2/models/big/ready")).status == 400  # known, not ready (Triton's answer)
    # Either way the probe tells how many variants the table routes to lack a live worker, and
    # which table it serves on (a launcher waits for 0 on the controller's latest table): "big",
    # which the plan left unplaced, does not count.
    headers = (await gateway.get("/v2/health/ready")).headers
    assert headers[UNSERVED_HEADER] == "0" and headers[ROUTING_VERSION_HEADER] == "1"

    # Its worker goes silent: the family cannot be served, and readiness says so in both modes.
    await gateway.workers.pop().close()
    expected = "variants without a live worker: big, small" if gateway.strict else "families without a live worker: fam"
    until = time.monotonic() + 10
    while (resp := await gateway.get("/v2/health/ready")).status != 503 or expected not in (await resp.json())["error"]:
        assert time.monotonic() < until, f"readiness never said {expected!r}"
        await asyncio.sleep(0.02)
    assert (await gateway.get("/v2/models/fam/ready")).status == 400
    assert (await gateway.get("/v2/health/ready")).headers[UNSERVED_HEADER] == "1"  # "small", routed
