"""DeadlineBatcher: table tests of each rule, then properties over simulated arrival streams."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.batching import BatchDecision, DeadlineBatcher, Queued
from mesh.clock import FakeClock


def linear(b: int) -> float:
    """10 ms fixed cost plus 2 ms per request."""
    return 0.010 + 0.002 * b


def item(request_id: int, deadline: float, arrived: float = 0.0) -> Queued:
    return Queued(request_id=request_id, deadline=deadline, arrived=arrived)


def ids(items: tuple[Queued, ...]) -> list[int]:
    return [q.request_id for q in items]


# --- table tests ----------------------------------------------------------------------------


def test_empty_queue_decides_nothing() -> None:
    batcher = DeadlineBatcher(max_batch=4, latency_s=linear)
    assert batcher.poll(5.0) == BatchDecision(batch=(), late=(), wake_at=None)
    assert batcher.head_deadline() is None
    assert len(batcher) == 0


def test_single_request_dispatches_at_once() -> None:
    batcher = DeadlineBatcher(max_batch=4, latency_s=linear)
    assert batcher.push(item(7, deadline=1.0))
    decision = batcher.poll(0.0)
    assert ids(decision.batch) == [7]
    assert decision.late == ()
    assert decision.wake_at is None
    assert len(batcher) == 0


def test_burst_larger_than_max_batch_splits_in_deadline_order() -> None:
    batcher = DeadlineBatcher(max_batch=4, latency_s=linear)
    deadlines = [1.0 + 0.01 * i for i in range(10)]
    order = list(range(10))
    random.Random(3).shuffle(order)
    for i in order:
        assert batcher.push(item(i, deadline=deadlines[i]))
    assert batcher.head_deadline() == 1.0

    batches = [ids(batcher.poll(0.0).batch) for _ in range(3)]

    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(batcher) == 0


def test_equal_deadlines_keep_arrival_order() -> None:
    batcher = DeadlineBatcher(max_batch=2, latency_s=linear)
    for i in (5, 3, 9, 1):
        batcher.push(item(i, deadline=1.0))
    assert ids(batcher.poll(0.0).batch) == [5, 3]
    assert ids(batcher.poll(0.0).batch) == [9, 1]


def test_hopeless_requests_go_late_without_being_batched() -> None:
    batcher = DeadlineBatcher(max_batch=8, latency_s=linear)
    now = 10.0
    batcher.push(item(1, deadline=now + 0.005))  # alone needs 12 ms
    batcher.push(item(2, deadline=now - 1.0))  # already past
    batcher.push(item(3, deadline=now + 1.0))
    batcher.push(item(4, deadline=now + 0.011))  # 1 ms short of running alone

    decision = batcher.poll(now)

    assert sorted(ids(decision.late)) == [1, 2, 4]
    assert ids(decision.batch) == [3]
    assert len(batcher) == 0


def test_only_late_requests_leave_an_empty_queue_and_no_wake() -> None:
    batcher = DeadlineBatcher(max_batch=8, latency_s=linear, max_wait_s=0.5)
    batcher.push(item(1, deadline=0.001))
    decision = batcher.poll(0.0)
    assert ids(decision.late) == [1]
    assert decision.batch == ()
    assert decision.wake_at is None


def test_batch_shrinks_so_the_tightest_deadline_still_fits() -> None:
    batcher = DeadlineBatcher(max_batch=8, latency_s=linear)
    now = 2.0
    # 0.017 s left for the head: batches of 1..3 take 12..16 ms, a batch of 4 takes 18 ms.
    batcher.push(item(0, deadline=now + 0.017))
    for i in range(1, 6):
        batcher.push(item(i, deadline=now + 1.0))

    decision = batcher.poll(now)

    assert ids(decision.batch) == [0, 1, 2]
    assert decision.late == ()
    assert len(batcher) == 3
    # The tight head is gone; the rest now fit together.
    assert ids(batcher.poll(now + linear(3)).batch) == [3, 4, 5]


def rows_item(request_id: int, rows: int, deadline: float) -> Queued:
    return Queued(request_id=request_id, deadline=deadline, arrived=0.0, rows=rows)


def test_a_batch_holds_at_most_max_batch_rows_however_many_requests_bring_them() -> None:
    batcher = DeadlineBatcher(max_batch=8, latency_s=linear)
    for i in range(4):
        batcher.push(rows_item(i, rows=3, deadline=10.0))
    batcher.push(item(4, deadline=10.0))

    assert ids(batcher.poll(0.0).batch) == [0, 1]  # 6 rows: a third request of 3 would make 9
    assert ids(batcher.poll(0.0).batch) == [2, 3, 4]  # 3 + 3 + 1 rows


def test_the_deadline_fit_counts_rows_not_requests() -> None:
    batcher = DeadlineBatcher(max_batch=32, latency_s=linear)
    # 0.030 s left: 8 rows take 26 ms, 16 rows take 42 ms.
    batcher.push(rows_item(0, rows=8, deadline=0.030))
    batcher.push(rows_item(1, rows=8, deadline=1.0))

    decision = batcher.poll(0.0)

    assert ids(decision.batch) == [0] and decision.late == ()
    assert ids(batcher.poll(linear(8)).batch) == [1]


def test_a_request_too_big_to_finish_alone_is_late_by_its_own_rows() -> None:
    batcher = DeadlineBatcher(max_batch=32, latency_s=linear)
    # 0.020 s left for both: one row takes 12 ms, 32 rows take 74 ms.
    batcher.push(rows_item(0, rows=32, deadline=0.020))
    batcher.push(item(1, deadline=0.020))

    decision = batcher.poll(0.0)

    assert ids(decision.late) == [0] and ids(decision.batch) == [1]


def test_a_request_of_more_rows_than_max_batch_runs_alone() -> None:
    batcher = DeadlineBatcher(max_batch=4, latency_s=linear, max_wait_s=0.5)
    batcher.push(rows_item(0, rows=6, deadline=1.0))
    batcher.push(item(1, deadline=1.0))

    assert ids(batcher.poll(0.0).batch) == [0]  # full on its own: no wait for company
    assert batcher.poll(0.0).batch == ()  # the one-row request alone may wait for more


def test_max_wait_holds_a_partial_batch_then_dispatches_at_wake_at() -> None:
    clock = FakeClock(start=100.0)
    batcher = DeadlineBatcher(max_batch=4, latency_s=linear, max_wait_s=0.005)
    batcher.push(item(1, deadline=clock.monotonic() + 1.0, arrived=clock.monotonic()))

    first = batcher.poll(clock.monotonic())
    assert first.batch == ()
    assert first.wake_at == pytest.approx(100.005)

    clock.advance(0.003)
    batcher.push(item(2, deadline=clock.monotonic() + 1.0, arrived=clock.monotonic()))
    second = batcher.poll(clock.monotonic())
    assert second.batch == ()
    assert second.wake_at == first.wake_at  # the oldest arrival sets the wait, not the newest

    # Polling exactly at wake_at dispatches (a caller's timer may fire at that very instant).
    third = batcher.poll(second.wake_at)
    assert ids(third.batch) == [1, 2]
    assert third.wake_at is None


def test_max_wait_never_waits_past_the_last_moment_the_head_fits() -> None:
    batcher = DeadlineBatcher(max_batch=4, latency_s=linear, max_wait_s=10.0)
    batcher.push(item(1, deadline=0.020))
    batcher.push(item(2, deadline=5.0))

    decision = batcher.poll(0.0)

    # A batch of 2 takes 14 ms, so it must start by 6 ms to meet the 20 ms deadline.
    assert decision.batch == ()
    assert decision.wake_at == pytest.approx(0.020 - linear(2))
    assert ids(batcher.poll(decision.wake_at).batch) == [1, 2]


def test_full_batch_dispatches_at_once_despite_max_wait() -> None:
    batcher = DeadlineBatcher(max_batch=3, latency_s=linear, max_wait_s=1.0)
    for i in range(3):
        batcher.push(item(i, deadline=5.0))
    assert ids(batcher.poll(0.0).batch) == [0, 1, 2]


def test_deadline_limited_batch_dispatches_at_once_despite_max_wait() -> None:
    batcher = DeadlineBatcher(max_batch=8, latency_s=linear, max_wait_s=1.0)
    batcher.push(item(0, deadline=0.015))  # fits a batch of at most 2 (14 ms)
    for i in range(1, 4):
        batcher.push(item(i, deadline=5.0))
    # Waiting cannot grow a batch the head's deadline already caps.
    assert ids(batcher.poll(0.0).batch) == [0, 1]


def test_queue_full_refuses_the_push() -> None:
    batcher = DeadlineBatcher(max_batch=4, latency_s=linear, max_queue=2)
    assert batcher.push(item(1, deadline=1.0))
    assert batcher.push(item(2, deadline=1.0))
    assert not batcher.push(item(3, deadline=0.5))
    assert len(batcher) == 2
    assert batcher.head_deadline() == 1.0
    assert ids(batcher.poll(0.0).batch) == [1, 2]
    assert batcher.push(item(3, deadline=0.5))


def test_head_deadline_is_the_earliest_waiting() -> None:
    batcher = DeadlineBatcher(max_batch=1, latency_s=linear)
    for i, deadline in enumerate((3.0, 1.0, 2.0)):
        batcher.push(item(i, deadline=deadline))
    assert batcher.head_deadline() == 1.0
    batcher.poll(0.0)
    assert batcher.head_deadline() == 2.0


def test_non_monotonic_latency_still_picks_the_largest_batch_that_fits() -> None:
    table = {1: 0.010, 2: 0.050, 3: 0.012, 4: 0.060}
    batcher = DeadlineBatcher(max_batch=4, latency_s=table.__getitem__)
    for i in range(4):
        batcher.push(item(i, deadline=0.020))
    assert ids(batcher.poll(0.0).batch) == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_batch=0), dict(max_batch=2, max_wait_s=-0.1), dict(max_batch=2, max_queue=0)],
)
def test_rejects_nonsense_configuration(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DeadlineBatcher(latency_s=linear, **kwargs)


# --- properties -----------------------------------------------------------------------------


@st.composite
def latency_models(draw: st.DrawFn) -> tuple[int, dict[int, float]]:
    """A max_batch and a latency table: usually growing with the batch, sometimes arbitrary."""
    max_batch = draw(st.integers(min_value=1, max_value=8))
    step = st.floats(min_value=0.0, max_value=0.02, allow_nan=False)
    if draw(st.booleans()):
        increments = draw(st.lists(step, min_size=max_batch, max_size=max_batch))
        table, total = {}, 0.0
        for b, inc in enumerate(increments, start=1):
            total += inc
            table[b] = total
    else:
        values = draw(st.lists(step, min_size=max_batch, max_size=max_batch))
        table = {b: v for b, v in enumerate(values, start=1)}
    return max_batch, table


arrivals = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=0.02, allow_nan=False),  # gap since the previous arrival
        st.floats(min_value=-0.01, max_value=0.2, allow_nan=False),  # budget until the deadline
    ),
    max_size=60,
)


def simulate(batcher: DeadlineBatcher, latency: dict[int, float], max_batch: int,
             stream: list[tuple[float, float]]) -> tuple[list[tuple[float, BatchDecision]], int]:
    """A worker that polls whenever it is idle, sleeps until wake_at or the next arrival, and
    is busy for the predicted latency of every batch it runs. Checks each decision's invariants."""
    pending: list[Queued] = []
    t = 0.0
    for i, (gap, budget) in enumerate(stream):
        t += gap
        pending.append(Queued(request_id=i, deadline=t + budget, arrived=t))
    now, steps, decisions = 0.0, 0, []
    queued: set[int] = set()
    waited_on: set[int] = set()  # queued when the batcher last chose to wait
    wait_until: float | None = None
    while pending or len(batcher):
        steps += 1
        assert steps < 10 * len(stream) + 10, "the batcher stopped making progress"
        while pending and pending[0].arrived <= now:
            queued.add(pending[0].request_id)
            assert batcher.push(pending.pop(0))
        decision = batcher.poll(now)
        decisions.append((now, decision))
        queued -= {q.request_id for q in decision.batch + decision.late}

        if wait_until is not None and now <= wait_until:
            # Waiting is never what makes a request late.
            assert not waited_on & {q.request_id for q in decision.late}
        waited_on, wait_until = set(queued), decision.wake_at

        assert len(decision.batch) <= max_batch
        for q in decision.batch:
            assert now <= q.deadline - latency[len(decision.batch)]
        for q in decision.late:
            assert now > q.deadline - latency[1]
        deadlines = [q.deadline for q in decision.batch]
        assert deadlines == sorted(deadlines)
        head = batcher.head_deadline()
        if decision.batch and head is not None:
            assert deadlines[-1] <= head  # the batch is the earliest-deadline prefix
        if decision.batch or not len(batcher):
            assert decision.wake_at is None
        else:
            assert decision.wake_at is not None and decision.wake_at > now

        if decision.batch:
            now += latency[len(decision.batch)]
        else:
            candidates = [x for x in (decision.wake_at, pending[0].arrived if pending else None) if x is not None]
            if candidates:
                now = max(now, min(candidates))
    return decisions, len(stream)


@settings(max_examples=300, deadline=None)
@given(model=latency_models(), stream=arrivals, max_wait_s=st.sampled_from([0.0, 0.001, 0.005, 0.05]))
def test_every_request_leaves_exactly_once_and_every_batch_fits(
    model: tuple[int, dict[int, float]], stream: list[tuple[float, float]], max_wait_s: float
) -> None:
    max_batch, latency = model
    batcher = DeadlineBatcher(max_batch=max_batch, latency_s=latency.__getitem__, max_wait_s=max_wait_s)

    decisions, total = simulate(batcher, latency, max_batch, stream)

    out = [q.request_id for _, d in decisions for q in d.batch + d.late]
    assert sorted(out) == list(range(total))
    assert len(batcher) == 0


@settings(max_examples=200, deadline=None)
@given(model=latency_models(), stream=arrivals)
def test_without_max_wait_an_idle_worker_never_sits_on_feasible_work(
    model: tuple[int, dict[int, float]], stream: list[tuple[float, float]]
) -> None:
    max_batch, latency = model
    batcher = DeadlineBatcher(max_batch=max_batch, latency_s=latency.__getitem__, max_wait_s=0.0)

    decisions, _ = simulate(batcher, latency, max_batch, stream)

    for _, decision in decisions:
        assert decision.wake_at is None


def test_feedback_leaves_edf_decisions_unchanged() -> None:
    batcher = DeadlineBatcher(max_batch=4, latency_s=linear)
    for i in range(6):
        batcher.push(item(i, deadline=1.0))
    for _ in range(3):
        batcher.feedback(4, finished_late=True)
    assert ids(batcher.poll(0.0).batch) == [0, 1, 2, 3]
