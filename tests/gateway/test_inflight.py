"""The in-flight table: each request taken out once, by the worker it is on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.inflight import InFlight, InflightTable, TableFull
from mesh.deadline import Deadline


def entry(rid: int, worker: str = "w1") -> InFlight:
    return InFlight(rid, "v", worker, Deadline(1.0), 0.0, {}, rows=rid + 1)


def test_a_request_is_taken_once():
    table = InflightTable()
    table.add(entry(1))
    assert table.take(1) is not None
    assert table.take(1) is None
    assert len(table) == 0 and table.count("w1") == 0


def test_only_the_worker_a_request_is_on_may_answer_it():
    table = InflightTable()
    table.add(entry(1, "w1"))
    table.get(1).due = 5.0
    table.move(1, "w2")
    assert table.take(1, "w1") is None  # the first worker's late reply
    assert table.on_worker("w1") == [] and table.on_worker("w2") == [1]
    got = table.take(1, "w2")
    assert got is not None and got.retried
    assert got.due == 0.0  # admission's prediction was for w1: w2's answer is not timed against it


def test_the_table_is_bounded():
    table = InflightTable(capacity=2)
    table.add(entry(1))
    table.add(entry(2))
    with pytest.raises(TableFull):
        table.add(entry(3))


def test_ids_differ_between_runs_of_the_gateway():
    first, second = InflightTable(), InflightTable()
    assert abs(first.new_id() - second.new_id()) > 1_000_000


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["take", "take_w1", "take_w2", "move", "lose_w1"]),
                          st.integers(0, 5)), max_size=40))
def test_every_request_gets_at_most_one_outcome_and_the_counts_agree(ops):
    table = InflightTable()
    for rid in range(6):
        table.add(entry(rid, "w1"))
    outcomes: list[int] = []
    for op, rid in ops:
        if op == "take" and table.take(rid):
            outcomes.append(rid)
        elif op.startswith("take_w") and table.take(rid, op[-2:]):
            outcomes.append(rid)
        elif op == "move" and table.get(rid) is not None:
            table.move(rid, "w2")
        elif op == "lose_w1":
            for lost in table.on_worker("w1"):
                if table.take(lost, "w1"):
                    outcomes.append(lost)
    assert len(outcomes) == len(set(outcomes))
    assert sorted(outcomes + list(table.ids())) == list(range(6))
    assert table.count("w1") + table.count("w2") == len(table)
    # Each worker's rows are those of the requests it holds: a request of rid + 1 rows.
    for worker in ("w1", "w2"):
        assert table.rows(worker) == sum(rid + 1 for rid in table.on_worker(worker))
