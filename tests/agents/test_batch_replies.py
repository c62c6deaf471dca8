"""A batch's answers: each request its own rows, grouped by the link it came on."""

from __future__ import annotations

import numpy as np

from agents import batch_replies
from mesh.batching import Queued
from protocol.types import ReplyStatus


def queued(request_id: int, link: str, rows: int, arrived: float = 1.0) -> Queued:
    return Queued(request_id=request_id, deadline=9.0, arrived=arrived, payload=(link, [np.zeros((rows, 2))]),
                  rows=rows)


def test_each_request_gets_its_own_rows_on_its_own_link() -> None:
    batch = (queued(1, "gw-a", 1), queued(2, "gw-b", 2), queued(3, "gw-a", 1))
    out = np.arange(8, dtype=np.float32).reshape(4, 2)
    replies = batch_replies.computed("v", batch, [out], ["y"], compute_us=700, started=1.5)
    assert sorted(replies) == ["gw-a", "gw-b"]
    (r1, p1), (r3, p3) = replies["gw-a"]
    ((r2, p2),) = replies["gw-b"]
    assert [r.request_id for r in (r1, r2, r3)] == [1, 2, 3]
    np.testing.assert_array_equal(p1[0], out[0:1])
    np.testing.assert_array_equal(p2[0], out[1:3])
    np.testing.assert_array_equal(p3[0], out[3:4])
    assert {r.batch_size for r in (r1, r2, r3)} == {4}
    assert r2.status is ReplyStatus.OK and r2.compute_us == 700 and r2.queue_us == 500_000
    assert r2.outputs[0].name == "y" and tuple(r2.outputs[0].shape) == (2, 2)


def test_a_failed_batch_and_hopeless_requests_are_answered_unrun() -> None:
    batch = (queued(1, "gw-a", 1), queued(2, "gw-b", 1))
    failed = batch_replies.failed("v", batch, "model failed: boom")
    assert [(r.request_id, r.status, r.error) for r, _ in failed["gw-a"] + failed["gw-b"]] == [
        (1, ReplyStatus.ERROR, "model failed: boom"), (2, ReplyStatus.ERROR, "model failed: boom")]
    late = batch_replies.late([("v", batch[0]), ("w", batch[1])], now=1.25)
    ((r, parts),) = late["gw-b"]
    assert (r.request_id, r.variant, r.status, r.queue_us, parts) == (2, "w", ReplyStatus.LATE, 250_000, ())
