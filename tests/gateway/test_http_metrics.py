"""/metrics and Triton's /stats on a real aiohttp TestServer, a real Dispatcher and workers played over ZeroMQ."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.access import AccessPolicy, Client
from gateway.dispatcher import Dispatcher
from gateway.http_app import DISPATCHER, make_app
from protocol.message import RoutingTable
from protocol.types import ModelInfo, TensorSpec, WorkerRoute
from tests.gateway.fake_worker import FakeWorker, gateway_with_fake_workers

SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
MODEL = ModelInfo(name="echo", family="echoes", version="3", platform="pytorch_torchscript", accuracy=0.9,
                  inputs=SPEC, outputs=SPEC, max_batch=4, default_slo_ms=500.0)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
TOKEN = "t0ken"


async def start(ctx, access: AccessPolicy | None = None):
    dispatcher = Dispatcher(ctx, "tcp://127.0.0.1:*", gateway_id="test", heartbeat_interval_s=0.05,
                            missed_heartbeats=20)
    await dispatcher.start()
    client = TestClient(TestServer(make_app(dispatcher, max_body_bytes=64 * 1024, selection="accurate",
                                            access=access)))
    await client.start_server()
    return dispatcher, client


@pytest.fixture
async def gateway(ctx):
    async with gateway_with_fake_workers(ctx, MODEL) as client:
        yield client


async def ready(client: TestClient, headers: dict | None = None) -> None:
    until = time.monotonic() + 10
    while (await client.get("/v2/models/echo/ready", headers=headers)).status != 200:
        assert time.monotonic() < until, "gateway never became ready"
        await asyncio.sleep(0.02)


async def scrape(client: TestClient, headers: dict | None = None) -> dict[tuple[str, frozenset], float]:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200 and resp.content_type == "text/plain"
    out = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_answered_requests_move_the_triton_counters_by_exactly_their_number(gateway):
    gateway.serve()
    await ready(gateway)
    before = await scrape(gateway)
    for _ in range(3):
        assert (await gateway.post("/v2/models/echo/infer", json=BODY)).status == 200
    for _ in range(2):
        assert (await gateway.post("/v2/models/echoes/infer", json=BODY)).status == 200
    after = await scrape(gateway)
    direct, family = {"model": "echo", "variant": "echo"}, {"model": "echoes", "variant": "echo"}
    for name in ("letmesh_inference_request_success_total", "letmesh_inference_count_total",
                 "letmesh_inference_request_latency_seconds_count", "letmesh_inference_batch_size_count"):
        assert value(after, name, **direct) - value(before, name, **direct) == 3, name
        assert value(after, name, **family) - value(before, name, **family) == 2, name
    assert value(after, "letmesh_slo_requests_total", family="echoes", outcome="met") == 5
    assert value(after, "letmesh_variant_chosen_total", family="echoes", variant="echo") == 2
    assert value(after, "letmesh_inference_compute_infer_duration_us_total", **direct) == 3 * 1000  # the worker's
    assert value(after, "letmesh_gateway_inflight_requests") == 0


async def test_a_shed_and_a_missed_deadline_show_under_their_reasons(gateway):
    gateway.serve(answer=False)  # holds every request: its queue only grows
    await ready(gateway)
    # Held until their deadline: seconds, so that they still wait when the next one asks on a busy host.
    patient = {**BODY, "parameters": {"letmesh_slo_ms": 3000}}
    held = [asyncio.create_task(gateway.post("/v2/models/echo/infer", json=patient)) for _ in range(3)]
    while gateway.dispatcher.outstanding() < 3:
        await asyncio.sleep(0.01)
    shed = await gateway.post("/v2/models/echo/infer", json={**BODY, "parameters": {"letmesh_slo_ms": 60}})
    assert shed.status == 503
    assert sorted([(await t).status for t in held]) == [504, 504, 504]
    got = await scrape(gateway)
    labels = {"model": "echo", "variant": "echo"}
    assert value(got, "letmesh_inference_request_failure_total", reason="overloaded", **labels) == 1
    assert value(got, "letmesh_inference_request_failure_total", reason="deadline", **labels) == 3
    assert value(got, "letmesh_inference_request_success_total", **labels) == 0
    assert value(got, "letmesh_slo_requests_total", family="echoes", outcome="shed") == 1
    assert value(got, "letmesh_slo_requests_total", family="echoes", outcome="deadline_missed") == 3
    stats = (await (await gateway.get("/v2/models/echo/stats")).json())["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] == 4 and stats["inference_stats"]["success"]["count"] == 0


async def test_the_dashboard_draws_the_traffic_the_metrics_count(gateway):
    gateway.serve()
    await ready(gateway)
    for _ in range(3):
        assert (await gateway.post("/v2/models/echoes/infer", json=BODY)).status == 200
    assert (await gateway.post("/v2/models/echo/infer", json={**BODY, "parameters": {"timeout": 1}})).status == 504
    data = await (await gateway.get("/dashboard/data")).json()
    totals = data["traffic"]["totals"]
    assert (totals["requests"], totals["ok"] + totals["late"], totals["deadline_missed"]) == (4, 3, 1)
    (family,) = data["families"]
    assert family["family"] == "echoes" and family["requests"] == 4
    assert [(v["name"], v["requests"]) for v in family["variants"]] == [("echo", 3)]


async def test_bad_input_and_unknown_models_count_once_without_new_labels(gateway):
    gateway.serve()
    await ready(gateway)
    assert (await gateway.post("/v2/models/echo/infer", json={"inputs": []})).status == 400
    assert (await gateway.post("/v2/models/no-such/infer", json=BODY)).status == 404
    got = await scrape(gateway)
    assert value(got, "letmesh_inference_request_failure_total", model="echo", variant="echo", reason="invalid") == 1
    assert not any(dict(labels).get("model") == "no-such" for _, labels in got)  # no label from a client's typo
    # The client's own mistake: counted as invalid, not as an error of the server's.
    assert value(got, "letmesh_slo_requests_total", family="echoes", outcome="invalid") == 1
    assert value(got, "letmesh_slo_requests_total", family="echoes", outcome="error") == 0


async def test_triton_statistics_follow_real_traffic(gateway):
    gateway.serve()
    await ready(gateway)
    for _ in range(4):
        assert (await gateway.post("/v2/models/echo/infer", json=BODY)).status == 200
    resp = await gateway.get("/v2/models/echo/stats")
    assert resp.status == 200
    (entry,) = (await resp.json())["model_stats"]
    assert entry["name"] == "echo" and entry["version"] == "3"
    assert entry["inference_count"] == 4 and entry["execution_count"] == 4
    assert entry["inference_stats"]["success"]["count"] == 4 and entry["inference_stats"]["success"]["ns"] > 0
    assert entry["inference_stats"]["compute_infer"] == {"count": 4, "ns": 4 * 1000 * 1000}
    assert entry["last_inference"] > 0
    everything = (await (await gateway.get("/v2/models/stats")).json())["model_stats"]
    assert [(e["name"], e["inference_count"]) for e in everything] == [("echo", 4), ("echoes", 0)]
    missing = await gateway.get("/v2/models/nope/stats")
    assert missing.status == 404 and "nope" in (await missing.json())["error"]
    versioned = await gateway.get("/v2/models/echo/versions/3/stats")
    assert (await versioned.json())["model_stats"][0]["inference_count"] == 4
    assert (await gateway.get("/v2/models/echo/versions/99/stats")).status == 404


async def test_a_client_over_its_rate_counts_as_shed_rate_limited(ctx):
    def digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    policy = AccessPolicy([Client("app", digest(TOKEN), frozenset({"inference"}), rate_per_s=0.001, burst=1),
                           Client("prometheus", digest("scraper"), frozenset({"inference"}))])
    dispatcher, client = await start(ctx, access=policy)
    worker = FakeWorker(ctx, dispatcher.address, "w1")
    try:
        dispatcher.apply_routing(RoutingTable(version=1, models=(MODEL,), workers=(
            WorkerRoute(worker_id="w1", variants=("echo",)),)))
        await ready(client, headers={"Authorization": "Bearer scraper"})  # the worker is reachable first
        auth = {"Authorization": f"Bearer {TOKEN}"}
        statuses = [(await client.post("/v2/models/echo/infer", json=BODY, headers=auth)).status for _ in range(3)]
        assert statuses[1:] == [429, 429]
        # /metrics on the HTTP port needs a token, like the rest of the API
        got = await scrape(client, headers={"Authorization": "Bearer scraper"})
        assert value(got, "letmesh_inference_request_failure_total", model="echo", variant="echo",
                     reason="rate_limited") == 2
        assert value(got, "letmesh_slo_requests_total", family="echoes", outcome="shed") == 2
        assert (await client.get("/metrics")).status == 401
    finally:
        await client.close()
        await worker.close()
        await dispatcher.stop()


async def test_requests_that_name_a_variant_are_reported_apart_from_those_to_its_family(gateway):
    gateway.serve()
    await ready(gateway)
    dispatcher = gateway.server.app[DISPATCHER]
    dispatcher.demand.take()
    for path in ("/v2/models/echo/infer", "/v2/models/echo/infer", "/v2/models/echoes/infer"):
        assert (await gateway.post(path, json=BODY)).status == 200
    counts, missed, named = dispatcher.demand.take()
    assert counts == {"echo": 3} and missed == {}
    assert named == {"echo": 2}, "the controller keeps a named variant deployed while it scales"
