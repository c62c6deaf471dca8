"""Value bounds on decision records and demand counts: every defect is named, nothing raises."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.bounds import context_defect, counts_defect, record_defect
from protocol.types import CandidateInfo, DecisionRecord

ARM = CandidateInfo(variant="small", accuracy=0.9, predicted_latency_ms=1.0, p_deadline=1.0, energy_j=0.01)
GOOD = DecisionRecord(event_id="e1", family="f", context={"app": "a", "n": 3, "x": 0.5, "b": True}, budget_ms=50.0,
                      load=0.2, candidates=(ARM, ARM), chosen=1, probability=0.5, reward=0.7, source="feedback")
NAN, INF = float("nan"), float("inf")


def test_a_sound_record_has_no_defect() -> None:
    assert record_defect(GOOD) == ""


@pytest.mark.parametrize("change, defect", [
    ({"budget_ms": NAN}, "budget_ms"), ({"budget_ms": INF}, "budget_ms"), ({"budget_ms": 0.0}, "budget_ms"),
    ({"load": NAN}, "load"), ({"load": -1.0}, "load"),
    ({"probability": NAN}, "probability"), ({"probability": 0.0}, "probability"), ({"probability": 1.5}, "probability"),
    ({"reward": NAN}, "reward"), ({"reward": 2.0}, "reward"),
    ({"chosen": 2}, "chosen"), ({"chosen": -1}, "chosen"), ({"candidates": ()}, "candidates"),
    ({"candidates": (ARM,) * 65}, "candidates"),
    ({"candidates": (dataclasses.replace(ARM, accuracy=NAN),)}, "candidate"),
    ({"candidates": (dataclasses.replace(ARM, predicted_latency_ms=INF),)}, "candidate"),
    ({"event_id": ""}, "event_id"), ({"event_id": "e" * 129}, "event_id"), ({"source": "made-up"}, "source"),
    ({"context": {"u": 10**30}}, "context"), ({"context": {"u": NAN}}, "context"),
    ({"context": {f"k{i}": i for i in range(33)}}, "context"), ({"context": {"u": "x" * 257}}, "context"),
])
def test_each_defect_is_named(change, defect) -> None:
    assert defect in record_defect(dataclasses.replace(GOOD, **change))


@given(st.dictionaries(st.text(max_size=80), st.one_of(st.integers(), st.floats(), st.text(max_size=300),
                                                       st.booleans(), st.none()), max_size=40))
def test_context_defects_never_raise_and_name_no_value(context) -> None:
    defect = context_defect(context)
    assert isinstance(defect, str)
    for key in context:
        if len(key) > 3:
            assert repr(key) not in defect  # a fixed phrase: counting by defect stays bounded


@pytest.mark.parametrize("counts, ok", [
    ({"v": 3}, True), ({}, True), ({"v": -1}, False), ({"v": 1 << 41}, False), ({"": 1}, False),
    ({"v" * 257: 1}, False),
])
def test_counts(counts, ok) -> None:
    assert (counts_defect(counts) == "") is ok
