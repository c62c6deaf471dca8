"""Feedback bodies map onto a reward in [0, 1], or a clear error; a slow request can be rated after its answer."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq.asyncio

from gateway.event_log import EventLog
from gateway.feedback import BadFeedback, reward_of
from protocol.types import ModelInfo, TensorSpec
from tests.gateway.fake_worker import gateway_with_fake_workers


@pytest.mark.parametrize("body, reward", [
    ({"event_id": "e", "reward": 0.25}, 0.25),
    ({"event_id": "e", "reward": 1}, 1.0),
    ({"event_id": "e", "rating": 4, "scale": 5}, 0.8),
    ({"event_id": "e", "rating": 3}, 0.6),
    ({"event_id": "e", "satisfied": True}, 1.0),
    ({"event_id": "e", "satisfied": False}, 0.0),
])
def test_reward_forms(body, reward) -> None:
    assert reward_of(body) == ("e", pytest.approx(reward))


@pytest.mark.parametrize("body, fragment", [
    ([], "object"),
    ({"reward": 1}, "event_id"),
    ({"event_id": "", "reward": 1}, "event_id"),
    ({"event_id": "e"}, "reward"),
    ({"event_id": "e", "reward": 1.5}, "[0, 1]"),
    ({"event_id": "e", "reward": -0.1}, "[0, 1]"),
    ({"event_id": "e", "reward": True}, "number"),
    ({"event_id": "e", "reward": "high"}, "number"),
    ({"event_id": "e", "rating": 6, "scale": 5}, "rating"),
    ({"event_id": "e", "rating": 1, "scale": 0}, "scale"),
    ({"event_id": "e", "satisfied": "yes"}, "satisfied"),
    ({"event_id": "e", "reward": 1, "satisfied": False}, "one of 'reward', 'rating' or 'satisfied'"),
    ({"event_id": "e", "rating": 4, "satisfied": True}, "not 'rating' and 'satisfied'"),
    ({"event_id": "e", "reward": 0.5, "scale": 10}, "'scale' goes with 'rating'"),
    # A misspelt 'scale' would leave the default 5 in force: 4 of 10 taken as 0.8, unseen.
    ({"event_id": "e", "rating": 4, "scael": 10}, "unknown key 'scael'; feedback takes event_id, reward"),
    ({"event_id": "e", "reward": 1, "note": "ok", "x": 1}, "unknown keys 'note', 'x'"),
])
def test_malformed_feedback_says_what_is_wrong(body, fragment) -> None:
    with pytest.raises(BadFeedback) as err:
        reward_of(body)
    assert fragment in str(err.value)


@pytest.mark.parametrize("body, fragment", [
    ({"event_id": "e", "reward": 10**309}, "reward"),  # past float: must not reach float()
    ({"event_id": "e", "rating": 10**309}, "rating"),
    ({"event_id": "e", "rating": 1, "scale": 10**309}, "scale"),
    ({"event_id": "e", "rating": float("nan")}, "rating"),
    ({"event_id": "e", "rating": 1, "scale": float("inf")}, "scale"),
    ({"event_id": "e" * 129, "reward": 1}, "event_id"),
])
def test_numbers_past_their_range_are_refused(body, fragment) -> None:
    with pytest.raises(BadFeedback) as err:
        reward_of(body)
    assert fragment in str(err.value)


async def test_a_request_slower_than_the_feedback_wait_can_still_be_rated_after_its_answer() -> None:
    # Real HTTP app and dispatcher, a fake worker answering after 2 s; feedback waits 1 s. (A whole
    # second: the checks just after the answer hold through a stall of the test process that long.)
    spec = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
    model = ModelInfo(name="echo", family="echoes", version="1", platform="pytorch_torchscript", accuracy=0.9,
                      inputs=spec, outputs=spec, max_batch=4, default_slo_ms=500.0)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
            "parameters": {"letmesh_slo_ms": 6000}}
    events = EventLog(feedback_wait_s=1.0)
    ctx = zmq.asyncio.Context()
    try:
        async with gateway_with_fake_workers(ctx, model, selection="bandit", events=events) as client:
            client.serve(delay_s=2.0)
            until = time.monotonic() + 10
            while (await client.get("/v2/health/ready")).status != 200:
                assert time.monotonic() < until
                await asyncio.sleep(0.02)
            request = asyncio.create_task(client.post("/v2/models/echoes/infer", json=body))
            await asyncio.sleep(1.2)
            assert events.due(time.monotonic()) == []  # the control actor's tick while it is in flight
            answer = await asyncio.wait_for(request, 10)
            assert answer.status == 200
            event_id = (await answer.json())["parameters"]["letmesh_event_id"]
            assert events.due(time.monotonic()) == []  # a tick just after the answer: the wait starts now

            rated = await client.post("/v1/feedback", json={"event_id": event_id, "reward": 0.25})

            assert rated.status == 202 and (await rated.json())["status"] == "accepted"
            (record,) = events.due(time.monotonic())
            assert (record.event_id, record.reward, record.source) == (event_id, 0.25, "feedback")
    finally:
        ctx.term()
