"""Choosing a family's variant without a learned policy: the most accurate one that is confident to
meet the deadline, measured on a real dispatcher with workers played by DEALER sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest

from gateway.dispatcher import Dispatcher
from gateway.selection import RequestBounds, select
from gateway.worker_speeds import WorkerSpeeds
from mesh.deadline import Deadline
from protocol.message import RoutingTable
from protocol.types import ModelInfo, TensorSpec, WorkerRoute
from tests.gateway.fake_worker import FakeWorker

SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
LARGE = ModelInfo(name="large", family="f", version="1", platform="pytorch_torchscript", accuracy=0.95,
                  inputs=SPEC, outputs=SPEC, max_batch=4, default_slo_ms=250.0)
SMALL = ModelInfo(name="small", family="f", version="1", platform="pytorch_torchscript", accuracy=0.80,
                  inputs=SPEC, outputs=SPEC, max_batch=4, default_slo_ms=250.0)
X = np.ones((1, 4), np.float32)
BOUNDS = RequestBounds(budget_s=0.25, min_accuracy=None, max_energy_j=None, context={})


@contextlib.asynccontextmanager
async def routed(ctx, large_ms: float, **large_options):
    """A dispatcher routing "large" (``large_ms`` a row as profiled, however batched) to worker L,
    played with ``large_options``, and "small" (1 ms) to worker S, both reachable."""
    d = Dispatcher(ctx, "tcp://127.0.0.1:*", gateway_id="test", heartbeat_interval_s=0.05, missed_heartbeats=20)
    await d.start()
    large = FakeWorker(ctx, d.address, "L", compute_us=int(large_ms * 1000), **large_options)
    small = FakeWorker(ctx, d.address, "S", compute_us=1000)
    try:
        d.apply_routing(RoutingTable(version=1, models=(LARGE, SMALL), workers=(
            WorkerRoute(worker_id="L", variants=("large",),
                        latency_ms={"large": (large_ms, 2 * large_ms, 4 * large_ms)}),
            WorkerRoute(worker_id="S", variants=("small",), latency_ms={"small": (1.0, 2.0, 4.0)}))))
        until = time.monotonic() + 10
        while not (d.ready_workers("large") and d.ready_workers("small")):
            assert time.monotonic() < until, "workers not reachable"
            await asyncio.sleep(0.01)
        yield d, large
    finally:
        await large.close()
        await small.close()
        await d.stop()


@pytest.fixture
async def family(ctx):
    """"large" at 20 ms a row on L and "small" on S; L has answered a few requests at its curve, so
    its speed is measured."""
    async with routed(ctx, 20.0) as (d, large):
        for _ in range(5):
            await d.infer("large", {"x": X}, Deadline.after(5.0, time.monotonic()))
        large.answer = False  # from here on, what is sent to L waits there
        yield d


async def held_on_large(d: Dispatcher, n: int) -> list[asyncio.Task]:
    """``n`` requests of "large" sent and waiting on L (their deadlines far off)."""
    held = [asyncio.create_task(d.infer("large", {"x": X}, Deadline.after(30.0, time.monotonic()))) for _ in range(n)]
    until = time.monotonic() + 10
    while d.outstanding() < n:
        assert not any(t.done() for t in held), [t.exception() for t in held if t.done()]
        assert time.monotonic() < until, f"{d.outstanding()} of {n} requests in flight"
        await asyncio.sleep(0.01)
    return held


async def released(held: list[asyncio.Task]) -> None:
    for t in held:
        t.cancel()
    await asyncio.gather(*held, return_exceptions=True)


def chosen(d: Dispatcher) -> tuple[str, dict[str, float]]:
    selection = select("f", [LARGE, SMALL], BOUNDS, d, None, mode="accurate")  # no policy: none is asked
    return selection.model.name, {c.variant: c.p_deadline for c in selection.candidates}


@pytest.mark.parametrize(("ahead", "expected"), [(0, "large"), (2, "large"), (7, "small")])
async def test_the_most_accurate_variant_is_chosen_while_it_is_confident_to_meet_the_deadline(family, ahead, expected):
    """With 7 rows waiting on L, a request of "large" is predicted to answer in 160 ms of its 250:
    likely (the deadline filter keeps it), but not sure at the speed L was measured at, whose
    jitter stretches the whole wait, the rows ahead as much as its own (P about 0.985 after five
    replies at its curve; counted on its own share alone, 1.0). "small" is sure, so it takes the
    request; with 2 rows ahead (60 ms) "large" is sure and keeps it. (That "large" is still
    likely there is shown by the next test, where it is the only variant.)"""
    held = await held_on_large(family, ahead)
    name, p = chosen(family)
    assert name == expected, p
    if ahead == 7:
        assert list(p) == ["small"] and p["small"] > 0.99, p  # the chooser was offered "small" alone
    await released(held)


async def test_the_best_bet_is_still_taken_when_no_variant_is_confident(family):
    """Only "large" left routed: 160 ms predicted of 250 is not sure, but it is the best bet, so
    the request still goes there rather than being refused."""
    family.apply_routing(RoutingTable(version=2, models=(LARGE,), workers=(
        WorkerRoute(worker_id="L", variants=("large",), latency_ms={"large": (20.0, 40.0, 80.0)}),)))
    held = await held_on_large(family, 7)
    name, p = chosen(family)
    assert name == "large" and 0.5 <= p["large"] < 0.99, p
    await released(held)


async def test_a_worker_draining_slower_than_its_curve_sends_the_family_to_the_cheaper_variant(ctx):
    """L computes "large" at its curve (5 ms a row, and says so) but answers one request every
    25 ms, as a worker does on a core it shares with its gateway. With 15 requests waiting on it, a
    request with 250 ms left would wait about 400 ms there at that pace, though the curve says 80:
    "small" takes it, where the curve alone would have kept "large" and the request been turned
    away or answered late. Once L's queue has drained, "large" is chosen again."""
    async with routed(ctx, 5.0, delay_s=0.025, serial=True) as (d, _):
        queued = [asyncio.create_task(d.infer("large", {"x": X}, Deadline.after(30.0, time.monotonic())))
                  for _ in range(40)]
        await asyncio.sleep(0)  # all sent
        while d.outstanding() > 15:  # 25 answered: L's pace is measured, 15 still wait
            await asyncio.sleep(0.002)
        name, p = chosen(d)
        assert name == "small" and list(p) == ["small"], p
        await asyncio.gather(*queued)
        name, p = chosen(d)
        assert name == "large", p


async def test_a_variant_avoided_after_a_slow_spell_is_chosen_again_once_that_spell_is_old(ctx):
    """L answers two requests ten times slower than its curve (a cold start, a neighbour passing):
    "large" is no longer sure to meet the deadline and "small" takes the family's requests, so L
    is sent nothing of "large" and answers nothing that could show it fast again. Once the slow
    spell is old, what it measured has returned to L's profile and "large" is chosen again; it
    would otherwise have been avoided for as long as L served (the mesh then serves the family
    below full accuracy with no load to justify it). Shorter times than the gateway's (1 s, then
    0.5 s, for 2 s and 5 s), so the test waits seconds instead of ten."""
    async with routed(ctx, 20.0) as (d, large):
        d.speeds = WorkerSpeeds(revert_after_s=1.0, revert_s=0.5)
        for _ in range(5):
            await d.infer("large", {"x": X}, Deadline.after(5.0, time.monotonic()))
        assert chosen(d)[0] == "large"
        large.compute_us = 200_000
        for _ in range(2):
            await d.infer("large", {"x": X}, Deadline.after(5.0, time.monotonic()))
        name, p = chosen(d)
        assert name == "small" and list(p) == ["small"], p  # the chooser was offered "small" alone
        await asyncio.sleep(0.1)
        assert chosen(d)[0] == "small", "a spell a moment old still counts"
        await asyncio.sleep(2.5)
        name, p = chosen(d)
        assert name == "large" and p["large"] > 0.99, p
