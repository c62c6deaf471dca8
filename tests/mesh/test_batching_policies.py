"""The batching policies (proteus, nexus, aimd, edf) on a fake clock: table tests of each rule,
bursts and hopeless requests, then properties every policy keeps under a simulated worker."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.batching import (
    POLICIES,
    AIMDBatcher,
    BatchDecision,
    Batcher,
    DeadlineBatcher,
    NexusBatcher,
    ProteusBatcher,
    Queued,
    make_batcher,
    power_of_two_sizes,
)
from tests.mesh.test_batching import ids, item, latency_models, linear


def build(policy: str, max_batch: int = 4, latency=linear) -> Batcher:
    return make_batcher(policy, max_batch=max_batch, latency_s=latency)


def drain(batcher: Batcher, now: float, latency=linear) -> tuple[list[tuple[float, list[int]]], list[int]]:
    """Serve what is queued with no more arrivals, as an idle worker would: poll, run each batch
    for its latency (reporting how it went), sleep to ``wake_at``. Returns (start, ids) per batch
    and the late ids in the order they were answered."""
    batches, late = [], []
    for _ in range(1000):
        if not len(batcher):
            return batches, late
        decision = batcher.poll(now)
        late += ids(decision.late)
        if decision.batch:
            batches.append((now, ids(decision.batch)))
            now += latency(len(decision.batch))
            batcher.feedback(len(decision.batch), any(q.deadline < now for q in decision.batch))
        elif decision.wake_at is not None:
            now = decision.wake_at
    raise AssertionError("the batcher stopped making progress")


def burst(batcher: Batcher, deadlines: list[float], seed: int = 3) -> None:
    """Push one request per deadline (id = index), all arriving at 0, in shuffled order."""
    order = list(range(len(deadlines)))
    random.Random(seed).shuffle(order)
    for i in order:
        assert batcher.push(item(i, deadline=deadlines[i]))


# A burst of 3 × max_batch arriving at once whose later requests get tight: after two batches of
# 4 (18 ms each) the head (id 8) still fits a batch of 3 (16 ms) but not of 4 (18 ms).
TIGHT = [0.0525 + 0.0001 * i for i in range(12)]
ROOMY = [1.0 + 0.001 * i for i in range(12)]


# --- the factory ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "kind"),
    [("edf", DeadlineBatcher), ("proteus", ProteusBatcher), ("aimd", AIMDBatcher), ("nexus", NexusBatcher)],
)
def test_make_batcher_builds_each_policy(policy: str, kind: type) -> None:
    batcher = build(policy)
    assert isinstance(batcher, kind)
    assert batcher.push(item(1, deadline=1.0))
    assert len(batcher) == 1 and batcher.head_deadline() == 1.0


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        make_batcher("fifo", max_batch=4, latency_s=linear)
    assert "fifo" in str(err.value)
    for policy in POLICIES:
        assert policy in str(err.value)


def test_max_wait_belongs_to_edf_only() -> None:
    edf = make_batcher("edf", max_batch=4, latency_s=linear, max_wait_s=0.005)
    edf.push(item(1, deadline=1.0, arrived=0.0))
    assert edf.poll(0.0).wake_at == pytest.approx(0.005)
    with pytest.raises(ValueError, match="edf"):
        make_batcher("proteus", max_batch=4, latency_s=linear, max_wait_s=0.005)


def test_queue_bound_applies_to_every_policy() -> None:
    for policy in POLICIES:
        batcher = make_batcher(policy, max_batch=4, latency_s=linear, max_queue=2)
        assert batcher.push(item(1, deadline=1.0)) and batcher.push(item(2, deadline=1.0))
        assert not batcher.push(item(3, deadline=0.5)), policy
        assert len(batcher) == 2


@pytest.mark.parametrize(
    ("max_batch", "sizes"), [(1, (1,)), (4, (1, 2, 4)), (8, (1, 2, 4, 8)), (6, (1, 2, 4, 6)), (5, (1, 2, 4, 5))]
)
def test_allowed_sizes_are_powers_of_two_and_the_max(max_batch: int, sizes: tuple[int, ...]) -> None:
    assert power_of_two_sizes(max_batch) == sizes


@pytest.mark.parametrize("sizes", [(), (2, 4), (1, 2), (1, 2, 8)])
def test_allowed_sizes_must_run_from_one_to_max_batch(sizes: tuple[int, ...]) -> None:
    for kind in (ProteusBatcher, AIMDBatcher):
        with pytest.raises(ValueError):
            kind(max_batch=4, latency_s=linear, sizes=sizes)


# --- hopeless requests ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["edf", "proteus", "nexus"])
def test_hopeless_requests_are_late_and_never_batched(policy: str) -> None:
    batcher = build(policy, max_batch=8)
    now = 10.0
    batcher.push(item(1, deadline=now + 0.005))  # alone needs 12 ms
    batcher.push(item(2, deadline=now - 1.0))  # already past
    batcher.push(item(3, deadline=now + 0.011))  # 1 ms short of running alone
    batcher.push(item(4, deadline=now + 1.0))

    decision = batcher.poll(now)

    assert ids(decision.late) == [2, 1, 3]  # answered in deadline order
    batches, late = drain(batcher, now)
    assert late == []
    assert ids(decision.batch) + [i for _, b in batches for i in b] == [4]


@pytest.mark.parametrize("policy", ["proteus", "aimd"])
def test_a_request_queued_for_twice_its_budget_is_dropped(policy: str) -> None:
    batcher = build(policy)
    batcher.push(item(1, deadline=0.1, arrived=0.0))
    decision = batcher.poll(0.25)
    assert ids(decision.late) == [1] and decision.batch == ()
    assert len(batcher) == 0


# --- proteus --------------------------------------------------------------------------------


def test_proteus_holds_a_lone_request_until_its_last_start() -> None:
    proteus, edf = build("proteus"), build("edf")
    for batcher in (proteus, edf):
        batcher.push(item(1, deadline=0.100, arrived=0.0))

    assert ids(edf.poll(0.0).batch) == [1]  # work-conserving: runs at once

    waiting = proteus.poll(0.0)
    assert waiting.batch == () and waiting.late == ()
    assert waiting.wake_at == pytest.approx(0.100 - linear(1))
    assert proteus.poll(waiting.wake_at - 1e-6).batch == ()
    assert ids(proteus.poll(waiting.wake_at).batch) == [1]


@pytest.mark.parametrize("policy", ["proteus", "nexus", "edf"])
def test_wake_slack_wakes_early_enough_for_a_late_timer(policy: str) -> None:
    batcher = make_batcher(policy, max_batch=4, latency_s=linear, wake_slack_s=0.002,
                           **({"max_wait_s": 1.0} if policy == "edf" else {}))
    batcher.push(item(1, deadline=0.100, arrived=0.0))
    decision = batcher.poll(0.0)
    assert decision.wake_at == pytest.approx(0.100 - linear(1) - 0.002)
    # The timer fires almost 2 ms late: just before the last instant the request fits alone.
    assert ids(batcher.poll(decision.wake_at + 0.0019).batch) == [1]


def test_proteus_waits_for_the_batch_the_queue_fills() -> None:
    batcher = build("proteus", max_batch=8)
    for i in range(3):
        batcher.push(item(i, deadline=0.100 + 0.001 * i, arrived=0.0))

    decision = batcher.poll(0.0)

    # Three waiting fill a batch of 2 (allowed sizes 1, 2, 4, 8), so the head waits for 2's latency.
    assert decision.batch == ()
    assert decision.wake_at == pytest.approx(0.100 - linear(2))
    assert ids(batcher.poll(decision.wake_at).batch) == [0, 1]
    assert len(batcher) == 1


def test_proteus_arrival_that_would_make_the_head_late_runs_the_batch_without_it() -> None:
    batcher = build("proteus", max_batch=8)
    batcher.push(item(0, deadline=0.100, arrived=0.0))
    first = batcher.poll(0.0)
    assert first.wake_at == pytest.approx(0.100 - linear(1))

    # At 87 ms the head can still start alone (last start 88 ms) but not as a pair (86 ms).
    now = 0.087
    batcher.push(item(1, deadline=now + 0.100, arrived=now))
    decision = batcher.poll(now)

    assert ids(decision.batch) == [0]
    assert decision.late == ()
    assert len(batcher) == 1


def test_proteus_runs_a_full_max_batch_at_once() -> None:
    batcher = build("proteus", max_batch=4)
    for i in range(5):
        batcher.push(item(i, deadline=1.0, arrived=0.0))
    assert ids(batcher.poll(0.0).batch) == [0, 1, 2, 3]
    assert batcher.poll(linear(4)).wake_at == pytest.approx(1.0 - linear(1))


def test_proteus_burst_runs_full_batches_in_deadline_order() -> None:
    batcher = build("proteus")
    burst(batcher, ROOMY)
    batches, late = drain(batcher, 0.0)
    assert batches == [(0.0, [0, 1, 2, 3]), (linear(4), [4, 5, 6, 7]), (2 * linear(4), [8, 9, 10, 11])]
    assert late == []


def test_proteus_burst_shrinks_to_an_allowed_size_where_edf_shrinks_to_fit() -> None:
    proteus, edf = build("proteus"), build("edf")
    burst(proteus, TIGHT)
    burst(edf, TIGHT)

    p_batches, p_late = drain(proteus, 0.0)
    e_batches, e_late = drain(edf, 0.0)

    # The head of the third batch fits 3 but not 4: proteus takes 2 (an allowed size), edf 3.
    assert [b for _, b in p_batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert p_late == [10, 11]
    assert [b for _, b in e_batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert e_late == [11]


# --- nexus ----------------------------------------------------------------------------------


def test_nexus_waits_for_the_batch_expiring_timer() -> None:
    batcher = build("nexus", max_batch=4)
    batcher.push(item(0, deadline=0.100, arrived=0.0))
    first = batcher.poll(0.0)
    assert first.batch == () and first.wake_at == pytest.approx(0.100 - linear(1))

    batcher.push(item(1, deadline=0.110, arrived=0.01))
    second = batcher.poll(0.01)
    # The timer follows the batch it has: two now, so it fires 2 ms earlier.
    assert second.batch == () and second.wake_at == pytest.approx(0.100 - linear(2))
    assert ids(batcher.poll(second.wake_at).batch) == [0, 1]


def test_nexus_runs_at_max_batch_without_waiting() -> None:
    batcher = build("nexus", max_batch=4)
    for i in range(3):
        batcher.push(item(i, deadline=1.0, arrived=0.0))
    assert batcher.poll(0.0).batch == ()
    batcher.push(item(3, deadline=1.0, arrived=0.001))
    assert ids(batcher.poll(0.001).batch) == [0, 1, 2, 3]


def test_nexus_unlike_proteus_times_the_batch_it_has_not_an_allowed_size() -> None:
    nexus, proteus = build("nexus", max_batch=8), build("proteus", max_batch=8)
    for batcher in (nexus, proteus):
        for i in range(3):
            batcher.push(item(i, deadline=0.100, arrived=0.0))
    nexus_wait, proteus_wait = nexus.poll(0.0).wake_at, proteus.poll(0.0).wake_at
    assert nexus_wait == pytest.approx(0.100 - linear(3))
    assert proteus_wait == pytest.approx(0.100 - linear(2))
    assert ids(nexus.poll(nexus_wait).batch) == [0, 1, 2]
    assert ids(proteus.poll(proteus_wait).batch) == [0, 1]


def test_nexus_drops_a_head_the_full_batch_cannot_carry_instead_of_shrinking() -> None:
    nexus, edf = build("nexus", max_batch=4), build("edf", max_batch=4)
    for batcher in (nexus, edf):
        batcher.push(item(0, deadline=0.017))  # fits a batch of 3 (16 ms), not of 4 (18 ms)
        for i in range(1, 5):
            batcher.push(item(i, deadline=1.0))

    n, e = nexus.poll(0.0), edf.poll(0.0)

    assert ids(n.late) == [0] and ids(n.batch) == [1, 2, 3, 4]
    assert e.late == () and ids(e.batch) == [0, 1, 2]


def test_nexus_burst_drops_heads_then_waits_for_the_smaller_batch_timer() -> None:
    batcher = build("nexus")
    burst(batcher, TIGHT)
    batches, late = drain(batcher, 0.0)
    # Id 8 cannot make a batch of 4 at 36 ms and is dropped; 9..11 then wait for their timer.
    assert [b for _, b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [9, 10, 11]]
    assert late == [8]
    assert batches[2][0] == pytest.approx(TIGHT[9] - linear(3))


def test_nexus_burst_with_room_runs_full_batches_back_to_back() -> None:
    batcher = build("nexus")
    burst(batcher, ROOMY)
    batches, late = drain(batcher, 0.0)
    assert [b for _, b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert [t for t, _ in batches] == pytest.approx([0.0, linear(4), 2 * linear(4)])
    assert late == []


# --- aimd -----------------------------------------------------------------------------------


def test_aimd_cap_climbs_after_full_on_time_batches_and_falls_after_late_ones() -> None:
    batcher = AIMDBatcher(max_batch=8, latency_s=linear)
    assert batcher.cap == 1
    batcher.feedback(1, finished_late=False)
    assert batcher.cap == 2
    batcher.feedback(1, finished_late=False)  # smaller than the cap: no evidence either way
    assert batcher.cap == 2
    for expected in (4, 8, 8):
        batcher.feedback(batcher.cap, finished_late=False)
        assert batcher.cap == expected
    for expected in (4, 2, 1, 1):
        batcher.feedback(batcher.cap, finished_late=True)
        assert batcher.cap == expected


def test_aimd_dispatches_at_once_up_to_its_cap() -> None:
    batcher = build("aimd")
    for i in range(3):
        batcher.push(item(i, deadline=1.0, arrived=0.0))
    decision = batcher.poll(0.0)
    assert ids(decision.batch) == [0] and decision.wake_at is None
    batcher.feedback(1, finished_late=False)
    assert ids(batcher.poll(0.0).batch) == [1, 2]


def test_aimd_burst_ramps_the_batch_up() -> None:
    batcher = build("aimd")
    burst(batcher, ROOMY)
    batches, late = drain(batcher, 0.0)
    assert [b for _, b in batches] == [[0], [1, 2], [3, 4, 5, 6], [7, 8, 9, 10], [11]]
    assert late == []


def test_aimd_drops_lazily_and_backs_off_after_late_batches() -> None:
    batcher = build("aimd")
    for _ in range(2):
        batcher.feedback(batcher.cap, finished_late=False)
    assert batcher.cap == 4
    # Every deadline is 15 ms out: a batch of 4 (18 ms) finishes late, yet nothing is dropped
    # until it is past its deadline.
    for i in range(6):
        batcher.push(item(i, deadline=0.015 + 0.0001 * i))
    batches, late = drain(batcher, 0.0)
    assert batches[0] == (0.0, [0, 1, 2, 3])
    assert late == [4, 5]  # past their deadline by the time the first batch is done
    assert batcher.cap == 2


def test_aimd_batches_a_request_the_deadline_aware_policies_call_hopeless() -> None:
    batcher = build("aimd")
    batcher.push(item(1, deadline=0.005))  # alone needs 12 ms: it will finish late
    batcher.push(item(2, deadline=-0.001))  # already past
    decision = batcher.poll(0.0)
    assert ids(decision.late) == [2]
    assert ids(decision.batch) == [1]


# --- properties -----------------------------------------------------------------------------


arrivals = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=0.02, allow_nan=False),  # gap since the previous arrival
        st.floats(min_value=-0.01, max_value=0.2, allow_nan=False),  # budget until the deadline
        st.integers(min_value=1, max_value=4),  # how many arrive together (bursts)
        st.sampled_from([1, 1, 1, 2, 3]),  # rows each of them brings (at most max_batch)
    ),
    max_size=30,
)


def simulate(policy: str, batcher: Batcher, latency: dict[int, float], max_batch: int,
             stream: list[tuple[float, float, int, int]], wake_late_s: float = 0.0) -> tuple[list[int], int]:
    """A worker that polls whenever it is idle, sleeps until wake_at (waking ``wake_late_s``
    late) or the next arrival, is busy for the predicted latency of every batch and reports
    each batch back. Checks every decision against the invariants of ``policy``; returns the
    ids that left and how many were pushed."""
    pending: list[Queued] = []
    t = 0.0
    for gap, budget, count, rows in stream:
        t += gap
        pending += [Queued(request_id=len(pending) + k, deadline=t + budget, arrived=t, rows=min(rows, max_batch))
                    for k in range(count)]
    total = len(pending)
    single_rows = all(q.rows == 1 for q in pending)
    slowest = max(latency.values())
    sizes = set(power_of_two_sizes(max_batch))
    now, steps, out = 0.0, 0, []
    queued: set[int] = set()
    waited_on: set[int] = set()
    wait_until: float | None = None
    while pending or len(batcher):
        steps += 1
        assert steps < 10 * total + 10, "the batcher stopped making progress"
        while pending and pending[0].arrived <= now:
            queued.add(pending[0].request_id)
            assert batcher.push(pending.pop(0))
        cap = batcher.cap if isinstance(batcher, AIMDBatcher) else max_batch
        decision: BatchDecision = batcher.poll(now)
        left = decision.batch + decision.late
        out += [q.request_id for q in left]
        queued -= {q.request_id for q in left}

        rows = sum(q.rows for q in decision.batch)
        assert cap <= max_batch and (rows <= cap or len(decision.batch) == 1)
        deadlines = [q.deadline for q in decision.batch]
        assert deadlines == sorted(deadlines)
        head = batcher.head_deadline()
        if decision.batch and head is not None:
            assert deadlines[-1] <= head  # the batch is the earliest-deadline prefix
        if decision.batch or not len(batcher):
            assert decision.wake_at is None
        elif policy != "aimd":
            assert decision.wake_at is not None and decision.wake_at > now

        if policy == "aimd":
            assert decision.wake_at is None
            for q in decision.late:
                assert now > q.deadline
        else:
            # Deadline-aware: nothing batched is hopeless, everything batched finishes in time.
            for q in decision.batch:
                assert now <= q.deadline - latency[rows]
            for q in decision.late:
                assert now > q.deadline - (slowest if policy == "nexus" else latency[q.rows])
        if policy == "proteus" and decision.batch and single_rows:
            assert len(decision.batch) in sizes
        if policy in ("edf", "proteus") and wait_until is not None and now <= wait_until + wake_late_s:
            assert not waited_on & {q.request_id for q in decision.late}, "waiting made a request late"
        waited_on, wait_until = set(queued), decision.wake_at

        if decision.batch:
            now += latency[rows]
            batcher.feedback(rows, any(q.deadline < now for q in decision.batch))
        else:
            wake = None if decision.wake_at is None else decision.wake_at + wake_late_s
            candidates = [x for x in (wake, pending[0].arrived if pending else None) if x is not None]
            if candidates:
                now = max(now, min(candidates))
    return out, total


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=150, deadline=None)
@given(
    model=latency_models(),
    stream=arrivals,
    slack_s=st.sampled_from([0.0, 0.001, 0.005]),
    lateness=st.floats(min_value=0.0, max_value=0.99),  # the boundary itself is at rounding's mercy
)
def test_every_policy_serves_each_request_exactly_once_within_its_invariants(
    policy: str, model: tuple[int, dict[int, float]], stream: list[tuple[float, float, int, int]],
    slack_s: float, lateness: float,
) -> None:
    max_batch, latency = model
    batcher = make_batcher(policy, max_batch=max_batch, latency_s=latency.__getitem__, wake_slack_s=slack_s)

    # Timers that fire late, but within the slack, never cost a request its deadline.
    out, total = simulate(policy, batcher, latency, max_batch, stream, wake_late_s=lateness * slack_s)

    assert sorted(out) == list(range(total))
    assert len(batcher) == 0
