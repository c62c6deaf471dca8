"""The HTTP layer on a real aiohttp TestServer, a real Dispatcher and workers played over ZeroMQ."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import time

import pytest
from aiohttp.test_utils import TestClient

from protocol.types import ModelInfo, TensorSpec
from tests.gateway.fake_worker import gateway_with_fake_workers

SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
MODEL = ModelInfo(name="echo", family="echoes", version="1", platform="pytorch_torchscript", accuracy=0.9,
                  inputs=SPEC, outputs=SPEC, max_batch=4, default_slo_ms=500.0)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
MAX_BODY = 64 * 1024


@pytest.fixture
async def gateway(ctx):
    async with gateway_with_fake_workers(ctx, MODEL, max_body_bytes=MAX_BODY, body_timeout_s=0.5) as client:
        yield client


async def ready(client: TestClient) -> None:
    until = time.monotonic() + 10
    while (await client.get("/v2/health/ready")).status != 200:
        assert time.monotonic() < until, "gateway never became ready"
        await asyncio.sleep(0.02)


async def raw(client: TestClient, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (a lying or slow client) and read the status line and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response.split(b"\r\n\r\n", 1)[1]


async def test_a_v2_json_request_is_answered_with_outputs_and_the_mesh_parameters(gateway):
    gateway.serve()
    await ready(gateway)
    resp = await gateway.post("/v2/models/echo/infer", json=BODY)
    assert resp.status == 200
    body = await resp.json()
    assert body["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
    assert body["parameters"]["letmesh_variant"] == "echo"
    assert body["parameters"]["letmesh_slo_status"] == "met"


async def test_a_family_request_is_answered_by_one_of_its_variants(gateway):
    gateway.serve()
    await ready(gateway)
    resp = await gateway.post("/v2/models/echoes/infer", json=BODY)
    assert resp.status == 200
    assert (await resp.json())["parameters"]["letmesh_variant"] == "echo"


async def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(gateway):
    gateway.serve()
    head = (f"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {17 * 1024 * 1024}\r\n\r\n").encode()
    status, body = await raw(gateway, head)  # no body sent at all: the answer cannot wait for it
    assert status == 413 and b"error" in body


async def test_a_client_that_sends_less_than_it_declared_gets_408_not_silence(gateway):
    gateway.serve()
    head = (b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(head + b'{"inputs": [')
        await writer.drain()
        response = await asyncio.wait_for(reader.read(65536), 30)
        assert response.startswith(b"HTTP/1.1 408") and b"not received" in response
        assert b"Connection: close" in response.split(b"\r\n\r\n", 1)[0]
        # The rest of the body, sent late, is not read as another request: the connection is closed.
        writer.write(b"1" * 988)
        assert await asyncio.wait_for(reader.read(65536), 10) == b""
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/v2/models/echo/infer", "/v1/feedback", "/v2/repository/index"])
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
async def test_a_body_its_content_encoding_does_not_decode_is_a_400_naming_it_and_the_connection_closes(
        gateway, path, coding):
    gateway.serve()
    await ready(gateway)
    body = json.dumps(BODY).encode()  # plain JSON, declared compressed (br: a coding this gateway lacks)
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: {coding}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(head + body)
        response = await asyncio.wait_for(reader.read(65536), 10)
        head_out, _, payload = response.partition(b"\r\n\r\n")
        assert head_out.startswith(b"HTTP/1.1 400"), response[:300]
        assert f"Content-Encoding: {coding}".encode() in payload and b"error" in payload
        assert b"Connection: close" in head_out
    finally:
        writer.close()
    # Nothing was dispatched; a well-encoded body on a new connection is served.
    resp = await gateway.post("/v2/models/echo/infer", data=gzip.compress(body),
                              headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert resp.status == 200


async def test_a_family_answers_as_the_version_it_lists_and_a_variant_as_its_own(ctx):
    variant = dataclasses.replace(MODEL, version="3")
    async with gateway_with_fake_workers(ctx, variant, max_body_bytes=MAX_BODY) as client:
        client.serve()
        await ready(client)
        family = await (await client.get("/v2/models/echoes")).json()
        resp = await client.post(f"/v2/models/echoes/versions/{family['versions'][0]}/infer", json=BODY)
        assert resp.status == 200
        answer = await resp.json()
        assert answer["model_version"] in family["versions"]  # so a client may ask for it again by version
        again = await client.post(f"/v2/models/echoes/versions/{answer['model_version']}/infer", json=BODY)
        assert again.status == 200
        resp = await client.post("/v2/models/echo/infer", json=BODY)
        assert (await resp.json())["model_version"] == "3"


@pytest.mark.parametrize("value", ["\u0663", "\u00b2", "-1", "99999999999999999999"])
async def test_a_bad_binary_header_length_is_a_400_with_a_json_error(gateway, value):
    gateway.serve()
    await ready(gateway)
    resp = await gateway.post("/v2/models/echo/infer", data=b'{"inputs": []}',
                              headers={"Inference-Header-Content-Length": value})
    assert resp.status == 400
    assert "Inference-Header-Content-Length" in (await resp.json())["error"]


async def test_an_unknown_model_is_a_404_with_a_json_error(gateway):
    gateway.serve()  # a routing table has arrived, and it does not name the model
    resp = await gateway.post("/v2/models/nope/infer", json=BODY)
    assert resp.status == 404 and "nope" in (await resp.json())["error"]


async def test_requests_a_busy_worker_cannot_finish_in_time_get_503_with_retry_after_at_once(gateway):
    gateway.serve(answer=False)  # holds every request: its queue only grows
    await ready(gateway)
    patient = {**BODY, "parameters": {"letmesh_slo_ms": 3000}}
    held = [asyncio.create_task(gateway.post("/v2/models/echo/infer", json=patient)) for _ in range(3)]
    while gateway.dispatcher.outstanding() < 3:
        await asyncio.sleep(0.01)
    # Behind 3 queued requests the worker's curve says ~160 ms; even half of that misses 60 ms.
    resp = await gateway.post("/v2/models/echo/infer", json={**BODY, "parameters": {"letmesh_slo_ms": 60}})
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    assert "cannot finish within the deadline" in (await resp.json())["error"]
    assert not any(t.done() for t in held)  # answered at once, not after waiting in the queue
    statuses = sorted([(await t).status for t in held])
    assert statuses == [504, 504, 504]  # the held ones end at their deadline, each once


async def test_before_the_first_routing_table_a_model_is_503_not_404(gateway):
    resp = await gateway.post("/v2/models/echo/infer", json=BODY)
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    assert "routing table" in (await resp.json())["error"]
    assert (await gateway.get("/v2/models/echo")).status == 503


async def test_before_the_first_routing_table_the_repository_index_is_503_not_an_empty_list(gateway):
    resp = await gateway.post("/v2/repository/index")
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    gateway.serve()
    resp = await gateway.post("/v2/repository/index")
    assert resp.status == 200 and {e["name"] for e in await resp.json()} == {"echo", "echoes"}


async def test_a_model_set_aside_is_listed_and_answered_503_with_its_reason_not_404(gateway):
    from protocol.message import RoutingTable

    gateway.serve()
    reason = "sha256 of model.pt is 9f..., manifest says 00..."
    gateway.dispatcher.apply_routing(RoutingTable(version=2, models=(MODEL,), workers=(),
                                                  unavailable={"broken": reason}))
    resp = await gateway.post("/v2/models/broken/infer", json=BODY)
    assert resp.status == 503 and "Retry-After" not in resp.headers
    assert (await resp.json())["error"] == f"model 'broken' is unavailable: {reason}"
    for path in ("/v2/models/broken", "/v2/models/broken/ready"):
        assert (await gateway.get(path)).status == 503
    index = {e["name"]: e for e in await (await gateway.post("/v2/repository/index")).json()}
    assert index["broken"]["state"] == "UNAVAILABLE" and index["broken"]["reason"] == reason
    assert index["echoes"]["version"] == "1"  # what the family's metadata lists
    assert (await gateway.post("/v2/models/typo/infer", json=BODY)).status == 404


async def test_a_set_aside_reason_reaches_clients_without_the_hosts_paths(gateway):
    from protocol.message import RoutingTable

    gateway.serve()
    reason = "/srv/models/repo/broken/manifest.json: sha256 of model.pt is 9f..., manifest says 00..."
    gateway.dispatcher.apply_routing(RoutingTable(version=2, models=(MODEL,), workers=(),
                                                  unavailable={"broken": reason}))
    error = (await (await gateway.post("/v2/models/broken/infer", json=BODY)).json())["error"]
    assert error == "model 'broken' is unavailable: broken/manifest.json: sha256 of model.pt is 9f..., manifest says 00..."
    index = {e["name"]: e for e in await (await gateway.post("/v2/repository/index")).json()}
    assert index["broken"]["reason"].startswith("broken/manifest.json: sha256") and "/srv" not in index["broken"]["reason"]


async def test_the_repository_index_asked_for_ready_models_lists_only_those(gateway):
    from protocol.message import RoutingTable

    gateway.serve()
    await ready(gateway)
    view = gateway.dispatcher.view
    gateway.dispatcher.apply_routing(RoutingTable(version=view.version + 1, models=tuple(view.models.values()),
                                                  workers=tuple(view.workers.values()), unavailable={"broken": "bad"}))
    everything = await (await gateway.post("/v2/repository/index")).json()
    assert "broken" in {e["name"] for e in everything}
    resp = await gateway.post("/v2/repository/index", json={"ready": True})
    assert resp.status == 200
    listed = await resp.json()
    assert listed and {e["state"] for e in listed} == {"READY"} and "broken" not in {e["name"] for e in listed}
    for body in (b"[1]", b'{"ready": "yes"}', b"{"):
        resp = await gateway.post("/v2/repository/index", data=body)
        assert resp.status == 400 and "index request body" in (await resp.json())["error"]


async def test_a_family_deadline_shorter_than_any_variant_takes_alone_is_504_without_retry_after(gateway):
    gateway.serve()  # "echo" is profiled at 40 ms alone
    await ready(gateway)
    body = {**BODY, "parameters": {"letmesh_slo_ms": 5}}
    resp = await gateway.post("/v2/models/echoes/infer", json=body)
    assert resp.status == 504 and "Retry-After" not in resp.headers
    error = (await resp.json())["error"]
    assert "the 5 ms deadline is shorter than echoes takes on an idle worker (40 ms for echo alone)" in error
    assert (await gateway.post("/v2/models/echoes/infer", json=BODY)).status == 200  # a deadline it can meet


async def test_the_unmeetable_deadline_is_judged_on_the_fastest_worker_and_the_variants_the_other_bounds_allow(gateway):
    from protocol.message import RoutingTable
    from protocol.types import WorkerRoute

    gateway.serve()  # w1 runs "echo" at 40 ms alone
    await ready(gateway)
    fast = WorkerRoute(worker_id="w2", variants=("echo",), latency_ms={"echo": (12.0, 24.0, 48.0)})
    routes = (*gateway.dispatcher.view.workers.values(), fast)
    gateway.dispatcher.apply_routing(RoutingTable(version=2, models=(MODEL,), workers=routes))
    # 20 ms: w1 cannot, w2 (routed, not reachable right now) could: a 503 to retry, not a 504
    resp = await gateway.post("/v2/models/echoes/infer", json={**BODY, "parameters": {"letmesh_slo_ms": 20}})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    resp = await gateway.post("/v2/models/echoes/infer", json={**BODY, "parameters": {"letmesh_slo_ms": 5}})
    assert resp.status == 504 and "(12 ms for echo alone)" in (await resp.json())["error"]
