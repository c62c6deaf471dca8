"""DeadlineBatcher with ``shed_margin``, as a worker runs it: a worker behind its arrivals keeps its
batches full, shedding the heads a full batch cannot wait for, where smaller batches cost more a row."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.batching import SHED_MARGIN, DeadlineBatcher, Queued, make_batcher
from tests.mesh.test_batching import ids, item, latency_models

# A ResNet-18 on one core (ONNX Runtime, one thread), seconds per batch: rows cost ~10 ms up to
# batches of 8 and 7.8 ms in batches of 16.
RESNET = {1: 0.0095, 2: 0.022, 4: 0.043, 8: 0.083, 16: 0.125}


def resnet(b: int) -> float:
    if b in RESNET:
        return RESNET[b]
    lo = max(k for k in RESNET if k <= b)
    hi = min(k for k in RESNET if k >= b)
    return RESNET[lo] + (RESNET[hi] - RESNET[lo]) * (b - lo) / (hi - lo)


def proportional(b: int) -> float:
    """Every row costs 10 ms whatever the batch: batching saves nothing."""
    return 0.010 * b


def tight_head_and_backlog(batcher: DeadlineBatcher, now: float, head_budget: float, behind: int) -> None:
    batcher.push(item(0, deadline=now + head_budget))
    for i in range(1, behind + 1):
        batcher.push(item(i, deadline=now + 1.0))


def test_a_worker_behind_runs_a_full_batch_and_sheds_the_head_that_cannot_wait_for_it() -> None:
    now = 5.0
    # The head affords a batch of 8 (83 ms) but not of 16 (125 ms); 39 requests wait behind it.
    shedding = DeadlineBatcher(max_batch=16, latency_s=resnet, shed_margin=SHED_MARGIN)
    tight_head_and_backlog(shedding, now, 0.1, 39)
    classic = DeadlineBatcher(max_batch=16, latency_s=resnet)
    tight_head_and_backlog(classic, now, 0.1, 39)

    shed, shrunk = shedding.poll(now), classic.poll(now)

    assert ids(shed.late) == [0]
    assert ids(shed.batch) == list(range(1, 17))
    # Without it the batch shrinks to what the head affords: 11 rows at 9.0 ms a row instead of 7.8.
    assert shrunk.late == () and len(shrunk.batch) == 11


def test_where_rows_cost_the_same_at_any_size_the_batch_still_shrinks_for_its_head() -> None:
    now = 1.0
    batcher = DeadlineBatcher(max_batch=8, latency_s=proportional, shed_margin=SHED_MARGIN)
    tight_head_and_backlog(batcher, now, 0.055, 19)  # two full batches behind; the head affords 5 rows of the 8

    decision = batcher.poll(now)

    assert decision.late == ()
    assert ids(decision.batch) == [0, 1, 2, 3, 4]


def test_a_worker_not_behind_shrinks_its_partial_batch_for_the_head() -> None:
    now = 1.0
    batcher = DeadlineBatcher(max_batch=16, latency_s=resnet, shed_margin=SHED_MARGIN)
    tight_head_and_backlog(batcher, now, 0.05, 9)  # 10 waiting: no full batch of 16 yet

    decision = batcher.poll(now)

    assert decision.late == ()
    assert ids(decision.batch)[0] == 0 and all(now <= q.deadline - resnet(len(decision.batch)) for q in decision.batch)


def test_shedding_is_an_edf_option_only() -> None:
    with pytest.raises(ValueError, match="edf"):
        make_batcher("proteus", max_batch=4, latency_s=resnet, shed_margin=SHED_MARGIN)
    with pytest.raises(ValueError, match="negative"):
        DeadlineBatcher(max_batch=4, latency_s=resnet, shed_margin=-0.1)


def served_in_time(batcher: DeadlineBatcher, latency, rate: float, count: int, slo_s: float, seed: int) -> float:
    """One worker polling whenever idle, busy for each batch's latency, under Poisson arrivals:
    the fraction of requests whose batch finished by their deadline."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in range(count):
        t += rng.expovariate(rate)
        arrivals.append(t)
    now, i, good = 0.0, 0, 0
    while i < count or len(batcher):
        while i < count and arrivals[i] <= now:
            batcher.push(Queued(request_id=i, deadline=arrivals[i] + slo_s, arrived=arrivals[i]))
            i += 1
        decision = batcher.poll(now)
        if decision.batch:
            now += latency(len(decision.batch))
            good += sum(1 for q in decision.batch if now <= q.deadline)
        elif i < count:
            now = max(now, arrivals[i])
    return good / count


def test_under_overload_shedding_keeps_the_rate_served_in_time_up() -> None:
    # 120 requests/s against a ResNet-18 that serves 128/s in batches of 16 and 96/s in batches
    # of 8, SLO 333 ms. Shrinking batches for tight heads sends the worker into a spiral.
    shed = served_in_time(DeadlineBatcher(max_batch=16, latency_s=resnet, shed_margin=SHED_MARGIN), resnet,
                          120, 6000, 0.333, seed=3)
    classic = served_in_time(DeadlineBatcher(max_batch=16, latency_s=resnet), resnet, 120, 6000, 0.333, seed=3)
    assert shed > classic + 0.08


@settings(max_examples=300, deadline=None)
@given(model=latency_models(),
       stream=st.lists(st.tuples(st.floats(0.0, 0.02), st.floats(-0.01, 0.2), st.integers(1, 3)), max_size=60),
       margin=st.sampled_from([0.0, SHED_MARGIN, 0.5]))
def test_with_shedding_every_request_leaves_once_and_only_a_request_that_could_not_fit_goes_late(
    model: tuple[int, dict[int, float]], stream: list[tuple[float, float, int]], margin: float
) -> None:
    max_batch, latency = model
    batcher = DeadlineBatcher(max_batch=max_batch, latency_s=latency.__getitem__, shed_margin=margin)
    pending, t = [], 0.0
    for i, (gap, budget, rows) in enumerate(stream):
        t += gap
        pending.append(Queued(request_id=i, deadline=t + budget, arrived=t, rows=min(rows, max_batch)))
    now, out, steps, waiting = 0.0, [], 0, {}
    slowest = max(latency.values())
    while pending or len(batcher):
        steps += 1
        assert steps < 10 * len(stream) + 10
        while pending and pending[0].arrived <= now:
            waiting[pending[0].request_id] = pending[0].rows
            assert batcher.push(pending.pop(0))
        decision = batcher.poll(now)
        for q in decision.batch + decision.late:
            out.append(q.request_id)
            del waiting[q.request_id]
        assert batcher.rows == sum(waiting.values())
        rows = sum(q.rows for q in decision.batch)
        assert rows <= max_batch
        for q in decision.batch:
            assert now <= q.deadline - latency[rows]
        for q in decision.late:  # hopeless alone, or shed: it could not wait for a full batch
            assert now > q.deadline - slowest
        if decision.batch:
            now += latency[rows]
        elif pending:
            now = max(now, pending[0].arrived)
    assert sorted(out) == list(range(len(stream)))
