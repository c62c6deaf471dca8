"""The learner takes only sound records of known families (the rest are dropped and counted) and starts on damaged metadata."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from controller.learner import Learner
from protocol.types import CandidateInfo, DecisionRecord

ARMS = (CandidateInfo(variant="small", accuracy=0.9, predicted_latency_ms=1.0, p_deadline=1.0, energy_j=0.01),
        CandidateInfo(variant="large", accuracy=0.99, predicted_latency_ms=9.0, p_deadline=0.9, energy_j=0.1))
GOOD = DecisionRecord(event_id="e", family="f", context={"app": "a"}, budget_ms=50.0, load=0.0, candidates=ARMS,
                      chosen=0, probability=0.5, reward=1.0, source="feedback")


def test_poisoned_and_unknown_records_are_dropped_counted_and_the_rest_learned(tmp_path: Path) -> None:
    learner = Learner(tmp_path)
    try:
        batch = [
            dataclasses.replace(GOOD, event_id="nan-budget", budget_ms=float("nan")),
            dataclasses.replace(GOOD, event_id="inf-load", load=float("inf")),
            dataclasses.replace(GOOD, event_id="elsewhere", family="invented"),
            dataclasses.replace(GOOD, event_id="huge-context", context={"u": 10**18}),
            GOOD,
        ]
        admitted = learner.admit(batch, {"f"})
        assert [r.event_id for r in admitted] == ["e"]
        assert sum(learner.rejected.values()) == 4
        unsound = [r for r in batch if r.family == "f"]
        assert learner.learn(unsound) == 1  # learn checks again: nothing unsound reaches VW
        assert learner.updates == {"f": 1}
    finally:
        learner.close()


def test_a_controller_starts_on_damaged_bandit_metadata_with_its_models(tmp_path) -> None:
    from tests.controller.test_controller_bandit import records

    learner = Learner(tmp_path)
    learner.learn(records(30, seed=1, prefix="e"))
    learner.publish()
    learner.close()
    (tmp_path / "bandit" / "meta.json").write_bytes(b'{"trivial": {"version": 1')  # cut short

    restarted = Learner(tmp_path)  # raised JSONDecodeError: the controller could not start
    try:
        assert "trivial" in restarted.policies  # the model itself is kept
    finally:
        restarted.close()
