"""Metadata endpoints: GET /v2, model metadata and Triton's model config, versions, on a real server."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from aiohttp.test_utils import TestClient, TestServer

from gateway.dispatcher import Dispatcher
from gateway.http_app import make_app
from gateway.metadata import model_config, model_metadata, server_metadata
from protocol.message import RoutingTable
from protocol.types import ModelInfo, TensorSpec, WorkerRoute
from tests.gateway.fake_worker import FakeWorker

X = TensorSpec(name="x", datatype="FP32", shape=(-1, 4))
ECHO = ModelInfo(name="echo", family="echoes", accuracy=0.9, max_batch=8, default_slo_ms=500.0,
                 inputs=(X,), outputs=(X,), version="3", platform="onnxruntime_onnx")
ECHO_SMALL = ModelInfo(name="echo-small", family="echoes", accuracy=0.8, max_batch=8, default_slo_ms=500.0,
                       inputs=(X,), outputs=(X,))
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}


def test_model_metadata_and_server_metadata_bodies():
    image = TensorSpec(name="image", datatype="FP32", shape=(-1, 2, 3))
    logits = TensorSpec(name="logits", datatype="FP32", shape=(-1, 4))
    assert model_metadata("resnet", ["1", "2"], "pytorch_torchscript", [image], [logits]) == {
        "name": "resnet", "versions": ["1", "2"], "platform": "pytorch_torchscript",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 2, 3]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}],
    }
    server = server_metadata(["binary_tensor_data"])
    assert server["name"] == "letmesh" and server["extensions"] == ["binary_tensor_data"]
    assert isinstance(server["version"], str) and server["version"]


def test_the_model_config_leaves_the_batch_dimension_out_of_dims_as_triton_does():
    config = model_config("echo", ECHO)
    assert config["name"] == "echo" and config["backend"] == "onnxruntime" and config["max_batch_size"] == 8
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["output"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["parameters"]["letmesh_accuracy"] == {"string_value": "0.9"}
    # A model without a batch dimension: max_batch_size 0 and the full shape, no batcher.
    fixed = ModelInfo(name="fixed", family="fixed", accuracy=1.0, max_batch=1, default_slo_ms=100.0,
                      inputs=(TensorSpec(name="t", datatype="INT64", shape=(2, 3)),), outputs=(X,))
    config = model_config("fixed", fixed)
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"] == [{"name": "t", "data_type": "TYPE_INT64", "dims": [2, 3]}]
    assert config["backend"] == "pytorch"
    openvino = ModelInfo(name="ov", family="echoes", accuracy=0.9, max_batch=4, default_slo_ms=100.0, inputs=(X,),
                         outputs=(X,), platform="openvino")
    assert model_config("ov", openvino)["backend"] == "openvino"


@pytest.fixture
async def gateway(ctx):
    dispatcher = Dispatcher(ctx, "tcp://127.0.0.1:*", gateway_id="test", heartbeat_interval_s=0.05,
                            missed_heartbeats=20)
    await dispatcher.start()
    client = TestClient(TestServer(make_app(dispatcher, max_body_bytes=65536, selection="accurate")))
    await client.start_server()
    client.dispatcher = dispatcher
    worker = None

    def serve() -> None:
        nonlocal worker
        worker = FakeWorker(ctx, dispatcher.address, "w1")
        dispatcher.apply_routing(RoutingTable(version=1, models=(ECHO, ECHO_SMALL), workers=(
            WorkerRoute(worker_id="w1", variants=("echo", "echo-small"), latency_ms={}),)))

    client.serve = serve
    yield client
    await client.close()
    if worker is not None:
        await worker.close()
    await dispatcher.stop()


async def served(client: TestClient) -> None:
    client.serve()
    until = time.monotonic() + 10
    while (await client.get("/v2/health/ready")).status != 200:
        assert time.monotonic() < until, "gateway never became ready"
        await asyncio.sleep(0.02)


async def test_every_model_endpoint_is_503_before_the_first_routing_table_then_404_for_unknown_names(gateway):
    for method, path in (("GET", "/v2/models/echo"), ("GET", "/v2/models/echo/ready"),
                         ("GET", "/v2/models/echo/config"), ("POST", "/v2/models/echo/infer"),
                         ("GET", "/v2/models/echo/versions/3/ready")):
        resp = await gateway.request(method, path, json=BODY if method == "POST" else None)
        assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1, path
        assert "routing table" in (await resp.json())["error"]
    await served(gateway)
    for method, path in (("GET", "/v2/models/nope"), ("GET", "/v2/models/nope/ready"),
                         ("GET", "/v2/models/nope/config"), ("POST", "/v2/models/nope/infer")):
        resp = await gateway.request(method, path, json=BODY if method == "POST" else None)
        assert resp.status == 404 and "nope" in (await resp.json())["error"], path


async def test_a_known_version_is_served_and_an_unknown_one_is_404(gateway):
    await served(gateway)
    # A variant answers to its manifest's version, a family to version 1.
    assert (await (await gateway.get("/v2/models/echo")).json())["versions"] == ["3"]
    assert (await (await gateway.get("/v2/models/echoes")).json())["versions"] == ["1"]
    assert (await gateway.get("/v2/models/echo/versions/3")).status == 200
    assert (await gateway.get("/v2/models/echo/versions/3/ready")).status == 200
    assert (await gateway.post("/v2/models/echo/versions/3/infer", json=BODY)).status == 200
    assert (await gateway.post("/v2/models/echoes/versions/1/infer", json=BODY)).status == 200
    for method, path in (("GET", "/v2/models/echo/versions/99"), ("GET", "/v2/models/echo/versions/99/ready"),
                         ("GET", "/v2/models/echo/versions/1/config"), ("POST", "/v2/models/echo/versions/99/infer"),
                         ("GET", "/v2/models/echoes/versions/3")):
        resp = await gateway.request(method, path, json=BODY if method == "POST" else None)
        assert resp.status == 404, path
        assert "has no version" in (await resp.json())["error"]
    assert gateway.dispatcher.outstanding() == 0


async def test_v2_lists_only_extensions_that_answer(gateway):
    await served(gateway)
    extensions = set((await (await gateway.get("/v2")).json())["extensions"])
    assert extensions == {"binary_tensor_data", "model_configuration", "statistics", "letmesh_bounds"}
    # binary_tensor_data: tritonclient's default binary request and response.
    client = httpclient.InferenceServerClient
    array = np.arange(4, dtype=np.float32).reshape(1, 4)
    item = httpclient.InferInput("x", [1, 4], "FP32").set_data_from_numpy(array, binary_data=True)
    body, header_length = client.generate_request_body([item], outputs=[httpclient.InferRequestedOutput("x")])
    resp = await gateway.post("/v2/models/echo/infer", data=body,
                              headers={"Inference-Header-Content-Length": str(header_length)})
    assert resp.status == 200
    length = int(resp.headers["Inference-Header-Content-Length"])
    result = client.parse_response_body(await resp.read(), header_length=length)
    assert np.array_equal(result.as_numpy("x"), array)
    # model_configuration: Triton's config JSON for a variant and a family.
    config = await (await gateway.get("/v2/models/echoes/config")).json()
    assert config["name"] == "echoes" and config["max_batch_size"] == 8
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["parameters"]["letmesh_variants"] == {"string_value": "echo,echo-small"}
    # statistics: Triton's per-model counters, which count the requests above.
    stats = (await (await gateway.get("/v2/models/echo/stats")).json())["model_stats"]
    assert stats[0]["name"] == "echo" and stats[0]["version"] == "3" and stats[0]["inference_count"] >= 1
    # letmesh_bounds: a minimum accuracy steers the family to a variant meeting it, or is refused.
    resp = await gateway.post("/v2/models/echoes/infer", json={**BODY, "parameters": {"letmesh_min_accuracy": 0.85}})
    assert (await resp.json())["parameters"]["letmesh_variant"] == "echo"
    resp = await gateway.post("/v2/models/echoes/infer", json={**BODY, "parameters": {"letmesh_min_accuracy": 0.95}})
    assert resp.status == 400 and "bound" in (await resp.json())["error"]
