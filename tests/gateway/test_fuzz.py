"""Fuzzing the gateway's HTTP front end: whatever the body, a deliberate answer (never a 500), and
nothing kept for a request that was refused. A real gateway (HTTP, data socket, controller link)."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.config import GatewayConfig
from gateway.service import GatewayService
from protocol.message import RoutingTable
from protocol.types import ModelInfo, TensorSpec

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
OUT = (TensorSpec(name="y", datatype="FP32", shape=(-1, 4)),)
MODELS = tuple(ModelInfo(name=n, family="fam", accuracy=a, max_batch=8, default_slo_ms=100.0, inputs=SPEC, outputs=OUT)
               for n, a in (("fam-small", 0.8), ("fam-large", 0.95)))
PARAMETERS = ("timeout", "letmesh_slo_ms", "letmesh_min_accuracy", "letmesh_max_energy_j", "letmesh_context",
              "priority", "binary_data_output")


class Gateway:
    """A gateway service running on an event loop in a background thread, reached over HTTP."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = GatewayConfig(controller="tcp://127.0.0.1:1", gateway_id="fuzz", http_port=0,
                               data_bind="tcp://127.0.0.1:*")
        self.service = GatewayService(config)
        self.call(self.service.start())
        self.call(self._route())
        host, port = self.service.http_url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)

    async def _route(self) -> None:
        self.service.dispatcher.apply_routing(RoutingTable(version=1, models=MODELS, workers=()))

    def call(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()
        self.call(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    g = Gateway()
    try:
        yield g
    finally:
        g.close()


scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=300),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**309, 1e17, 1e15, 0, -1, 0.5, 1.0, 1_000, 600_000, 600_001, float("nan")]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=70), inner, max_size=40)),
                      max_leaves=60)
parameters = st.dictionaries(st.one_of(st.sampled_from(PARAMETERS), st.text(max_size=10)), values, max_size=6)


def dumps(body: Any) -> bytes:
    # The standard json module writes NaN/Infinity and ints of any size: the server must refuse them.
    return json.dumps(body, allow_nan=True).encode()


def assert_deliberate(status: int, raw: bytes) -> None:
    assert status != 500 and status < 600, raw[:300]
    if status >= 400:
        assert "error" in json.loads(raw), raw[:300]


@FUZZ
@given(model=st.sampled_from(["fam", "fam-small"]), params=parameters)
@example(model="fam", params={"letmesh_context": {"u": 10**30}})
@example(model="fam", params={"letmesh_slo_ms": 1e17})
@example(model="fam-small", params={"letmesh_slo_ms": 10**309})
@example(model="fam", params={"letmesh_context": {"a": {"b": {"c": {"d": 1}}}}})
def test_inference_parameters_never_get_a_500(gateway: Gateway, model: str, params: dict) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
            "parameters": params}
    status, raw = gateway.post(f"/v2/models/{model}/infer", dumps(body))
    assert_deliberate(status, raw)
    # No worker serves here: a request is refused or turned away, and nothing stays in flight for it.
    assert gateway.service.dispatcher.outstanding() == 0
    assert len(gateway.service.events) == 0


feedback = st.one_of(
    values,
    st.fixed_dictionaries({"event_id": st.one_of(st.text(max_size=200), values)},
                          optional={"reward": values, "rating": values, "scale": values, "satisfied": values}),
)


@FUZZ
@given(body=feedback)
@example(body={"event_id": "e", "reward": 10**309})
@example(body={"event_id": "e", "rating": 10**309})
@example(body={"event_id": "e", "rating": 1, "scale": float("nan")})
def test_feedback_bodies_never_get_a_500(gateway: Gateway, body: Any) -> None:
    status, raw = gateway.post("/v1/feedback", dumps(body))
    assert_deliberate(status, raw)
    assert status in (400, 404, 413)  # no event was ever logged here: nothing can be accepted
    assert len(gateway.service.events) == 0


@FUZZ
@given(raw=st.binary(max_size=2000))
def test_arbitrary_bytes_never_get_a_500(gateway: Gateway, raw: bytes) -> None:
    for path in ("/v2/models/fam/infer", "/v1/feedback"):
        status, reply = gateway.post(path, raw)
        assert_deliberate(status, reply)


def test_the_fuzzed_gateway_is_still_ready_to_answer(gateway: Gateway) -> None:
    status, raw = gateway.post("/v2/repository/index", b"{}")
    assert status == 200 and {m["name"] for m in json.loads(raw)} >= {"fam", "fam-small", "fam-large"}
    assert gateway.service.health.in_flight == 0
