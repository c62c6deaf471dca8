"""What the open-loop client's summary counts: each outcome once, a hang apart from a dropped connection."""

from __future__ import annotations

from benchmarks.support.openloop import CLIENT_ERROR, DISCONNECTED, REFUSED, TIMEOUT, Outcome, summarise


def outcome(end: str = "http", status: int = 200, latency_s: float = 0.01, lag_s: float = 0.0,
            scheduled: float = 0.0, retry_after: bool = False) -> Outcome:
    return Outcome(stream="s", scheduled=scheduled, lag_s=lag_s, status=status if end == "http" else 0, end=end,
                   latency_s=latency_s, retry_after=retry_after)


def test_a_hang_and_a_dropped_connection_are_counted_apart() -> None:
    outcomes = [outcome(), outcome(TIMEOUT, latency_s=10.0), outcome(DISCONNECTED), outcome(DISCONNECTED),
                outcome(REFUSED), outcome(CLIENT_ERROR), outcome(status=503, retry_after=True)]

    s = summarise(outcomes, fault_at=None, deadline_ms=200.0)

    assert s["sent"] == 7
    assert sum(s["statuses"].values()) == 7
    assert s["unanswered"] == 1  # left waiting until the client gave up
    assert s["dropped"] == 2  # told at once that no answer would come
    assert s["refused"] == 1 and s["client_errors"] == 1
    assert s["ok"] == 1 and s["shed_without_retry_after"] == 0


def test_lateness_counts_from_the_schedule_and_from_the_send() -> None:
    # 200 ms deadline + 50 ms grace: the second answer is late from its schedule only, because the
    # client sent it 100 ms late; the third is late either way.
    outcomes = [outcome(latency_s=0.2), outcome(latency_s=0.3, lag_s=0.1), outcome(latency_s=0.4, lag_s=0.1),
                outcome(status=504, latency_s=0.26)]

    s = summarise(outcomes, fault_at=None, deadline_ms=200.0)

    assert s["late_200"] == 2
    assert s["late_answers"] == 3
    assert s["late_from_send"] == 2
