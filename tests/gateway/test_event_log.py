"""The gateway's decision log: explicit feedback, implicit rewards after the wait, repeats, expiry."""

from __future__ import annotations

import pytest

from gateway.event_log import Event, EventLog, FeedbackResult
from protocol.types import CandidateInfo

ARMS = (CandidateInfo(variant="small", accuracy=0.9, predicted_latency_ms=1.0, p_deadline=1.0, energy_j=0.0),
        CandidateInfo(variant="large", accuracy=0.99, predicted_latency_ms=5.0, p_deadline=0.9, energy_j=0.0))


def event(event_id: str, created: float, chosen: int = 1) -> Event:
    return Event(event_id=event_id, family="digits", context={"app": "a"}, budget_ms=50.0, load=0.5,
                 candidates=ARMS, chosen=chosen, probability=0.8, created=created)


@pytest.fixture
def log() -> EventLog:
    return EventLog(feedback_wait_s=10.0, retain_s=100.0)


def test_explicit_feedback_ships_at_once_and_a_repeat_is_ignored(log: EventLog) -> None:
    log.record(event("e1", 0.0))
    log.outcome("e1", met=True)
    assert log.feedback("e1", 0.7, now=1.0) is FeedbackResult.ACCEPTED
    assert log.feedback("e1", 0.1, now=2.0) is FeedbackResult.DUPLICATE
    (record,) = log.due(now=2.0)
    assert (record.event_id, record.reward, record.source, record.chosen, record.probability) == (
        "e1", 0.7, "feedback", 1, 0.8)
    assert log.due(now=3.0) == []


@pytest.mark.parametrize("met, reward", [(True, 0.99), (False, 0.0)])
def test_no_feedback_within_the_wait_gives_the_implicit_reward(log: EventLog, met: bool, reward: float) -> None:
    log.record(event("e1", 0.0))
    log.outcome("e1", met=met)
    assert log.due(now=9.9) == []
    (record,) = log.due(now=10.0)
    assert (record.reward, record.source, record.met) == (reward, "implicit", met)
    assert log.feedback("e1", 1.0, now=11.0) is FeedbackResult.EXPIRED


def test_closed_events_are_forgotten_after_the_retention(log: EventLog) -> None:
    log.record(event("e1", 0.0))
    log.outcome("e1", met=True)
    log.feedback("e1", 1.0, now=1.0)
    log.due(now=50.0)
    assert log.feedback("e1", 1.0, now=50.0) is FeedbackResult.DUPLICATE
    log.due(now=102.0)
    assert log.feedback("e1", 1.0, now=102.0) is FeedbackResult.UNKNOWN


def test_unknown_events_and_events_without_an_outcome(log: EventLog) -> None:
    assert log.feedback("nope", 1.0, now=0.0) is FeedbackResult.UNKNOWN
    log.record(event("in-flight", 0.0))
    assert log.feedback("in-flight", 1.0, now=0.1) is FeedbackResult.UNKNOWN  # no answer yet to rate
    log.record(event("failed", 0.0))
    log.outcome("failed", met=None)  # failed for a reason that says nothing of the variant
    assert log.feedback("failed", 1.0, now=0.2) is FeedbackResult.UNKNOWN
    assert log.due(now=20.0) == []


def test_memory_is_bounded_by_closing_the_oldest_early() -> None:
    log = EventLog(feedback_wait_s=10.0, retain_s=100.0, max_open=2)
    for i in range(3):
        log.record(event(f"e{i}", float(i)))
        log.outcome(f"e{i}", met=True)
    assert len(log) == 2
    assert [(r.event_id, r.source) for r in log.due(now=3.0)] == [("e0", "implicit")]
    log.record(event("e3", 3.0))  # e3 has no outcome yet; e1 is closed to make room
    assert [r.event_id for r in log.due(now=3.0)] == ["e1"]
    assert len(log) == 2


def test_the_log_stays_bounded_when_nothing_drains_it() -> None:
    log = EventLog(feedback_wait_s=10.0, retain_s=100.0, max_open=5, max_ready=3)
    for i in range(20):
        log.record(event(f"e{i}", float(i)))
        log.outcome(f"e{i}", met=True)
        assert log.feedback(f"e{i}", 0.5, now=float(i)) is FeedbackResult.ACCEPTED
    assert len(log) == 0 and len(log._closed) == 5 and log.dropped == 17
    assert [r.event_id for r in log.due(now=20.0)] == ["e17", "e18", "e19"]  # the newest were kept


def slow(event_id: str, created: float, budget_ms: float) -> Event:
    e = event(event_id, created)
    e.budget_ms = budget_ms
    return e


def test_the_feedback_wait_counts_from_the_answer_not_the_arrival(log: EventLog) -> None:
    # A request with a 60 s deadline, answered after 40 s: longer than the 10 s wait from its arrival.
    log.record(slow("e1", 0.0, budget_ms=60_000.0))
    assert log.due(now=35.0) == [] and len(log) == 1  # still in flight: kept, not dropped unrated
    log.outcome("e1", met=True, now=40.0)
    assert log.due(now=45.0) == []
    assert log.feedback("e1", 0.3, now=45.0) is FeedbackResult.ACCEPTED  # the client had its 10 s
    (record,) = log.due(now=45.0)
    assert (record.event_id, record.reward, record.source) == ("e1", 0.3, "feedback")


def test_a_slow_answer_without_feedback_gets_its_implicit_reward_a_wait_after_it(log: EventLog) -> None:
    log.record(slow("e1", 0.0, budget_ms=60_000.0))
    log.record(event("quick", 1.0))
    log.outcome("quick", met=True, now=1.0)
    log.outcome("e1", met=False, now=40.0)
    assert [r.event_id for r in log.due(now=20.0)] == ["quick"]
    assert log.due(now=49.9) == []
    (record,) = log.due(now=50.0)
    assert (record.event_id, record.reward, record.source, record.met) == ("e1", 0.0, "implicit", False)


def test_an_event_never_answered_is_let_go_a_wait_after_its_deadline(log: EventLog) -> None:
    log.record(slow("lost", 0.0, budget_ms=5_000.0))
    assert log.due(now=14.9) == [] and len(log) == 1
    assert log.due(now=15.0) == [] and len(log) == 0  # nothing to learn from: no record
    assert log.feedback("lost", 1.0, now=15.0) is FeedbackResult.UNKNOWN


def test_records_a_full_link_hands_back_ship_first_and_the_oldest_go_over_the_bound() -> None:
    log = EventLog(feedback_wait_s=10.0, retain_s=100.0, max_ready=3)
    for i in range(2):
        log.record(event(f"e{i}", 0.0))
        log.outcome(f"e{i}", met=True)
        log.feedback(f"e{i}", 0.5, now=0.0)
    unsent = log.due(now=0.0)
    log.record(event("e2", 0.0))
    log.outcome("e2", met=True)
    log.feedback("e2", 0.5, now=0.0)
    log.requeue(unsent)  # the link took none of them
    assert [r.event_id for r in log.due(now=0.0)] == ["e0", "e1", "e2"] and log.dropped == 0
    log.requeue([*unsent, *unsent])
    assert [r.event_id for r in log.due(now=0.0)] == ["e1", "e0", "e1"] and log.dropped == 1
