"""The gateway's log of bandit decisions, joined with the reward that arrives for each.

Pure and synchronous (``now`` is passed in). A decision waits for its request's answer, then for
explicit feedback until ``feedback_wait_s`` after that answer; then it is closed with an implicit
reward from its outcome (deadline met -> the variant's accuracy, missed -> 0). The wait counts from
the answer, so a request with a long deadline is rated like a quick one. A closed event is
remembered for ``retain_s`` so that repeated or late feedback is answered precisely, then forgotten.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from protocol.types import CandidateInfo, DecisionRecord


class FeedbackResult(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # feedback for this event was already taken; this one is ignored
    EXPIRED = "expired"  # the wait passed and the event was closed with its implicit reward
    UNKNOWN = "unknown"  # never logged here, or forgotten


@dataclass(slots=True)
class Event:
    event_id: str
    family: str
    context: dict[str, str | int | float | bool]
    budget_ms: float
    load: float
    candidates: tuple[CandidateInfo, ...]
    chosen: int
    probability: float
    created: float
    met: bool | None = None  # None until the request has its outcome
    answered: float = 0.0  # when it had its outcome: the feedback wait counts from here
    closed: str = ""  # "" while open; else "feedback" or "implicit"


class EventLog:
    """Open and recently closed decisions by event id. Not thread-safe; one owner.

    Bounded whether or not anyone drains it: at most ``max_open`` open events (the oldest is closed
    early), ``max_open`` remembered closed ids (the oldest forgotten early) and ``max_ready``
    records waiting to ship (the oldest dropped and counted in ``dropped`` while the controller
    link is down).
    """

    def __init__(self, *, feedback_wait_s: float = 30.0, retain_s: float = 300.0, max_open: int = 100_000,
                 max_ready: int = 50_000) -> None:
        self.feedback_wait_s = feedback_wait_s
        self.retain_s = retain_s
        self.max_open = max_open
        self.max_ready = max_ready
        self.dropped = 0
        self._flight: OrderedDict[str, Event] = OrderedDict()  # no outcome yet, oldest first
        self._open: OrderedDict[str, Event] = OrderedDict()  # answered, waiting for feedback, oldest answer first
        self._closed: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id -> (how, closed at)
        self._ready: list[DecisionRecord] = []

    def __len__(self) -> int:
        return len(self._flight) + len(self._open)

    def record(self, event: Event) -> None:
        self._flight[event.event_id] = event
        while len(self) > self.max_open:  # bounded memory: close the oldest answered one early
            if self._open:
                self._close_implicit(next(iter(self._open.values())), event.created)
            else:
                self._flight.popitem(last=False)

    def outcome(self, event_id: str, *, met: bool | None, now: float | None = None) -> None:
        """The request's result at ``now`` (its creation when not given): met or missed its
        deadline; None drops the event (it failed for a reason that says nothing about the
        variant, e.g. its worker died)."""
        event = self._flight.pop(event_id, None)
        if event is None or met is None:
            return
        event.met = met
        event.answered = event.created if now is None else now
        self._open[event_id] = event

    def feedback(self, event_id: str, reward: float, now: float) -> FeedbackResult:
        closed = self._closed.get(event_id)
        if closed is not None:
            return FeedbackResult.DUPLICATE if closed[0] == "feedback" else FeedbackResult.EXPIRED
        event = self._open.get(event_id)
        if event is None:  # never logged, forgotten, or not answered yet (nothing to rate)
            return FeedbackResult.UNKNOWN
        self._close(event, reward, "feedback", now)
        return FeedbackResult.ACCEPTED

    def due(self, now: float) -> list[DecisionRecord]:
        """Joined records ready to ship: explicit ones at once, implicit ones after the wait."""
        while self._open:
            oldest = next(iter(self._open.values()))
            if now - oldest.answered < self.feedback_wait_s:
                break
            self._close_implicit(oldest, now)
        while self._flight:  # every request is answered by its deadline; one never answered is let go
            oldest = next(iter(self._flight.values()))
            if now - oldest.created < oldest.budget_ms / 1e3 + self.feedback_wait_s:
                break
            del self._flight[oldest.event_id]
        while self._closed:
            event_id, (_, closed_at) = next(iter(self._closed.items()))
            if now - closed_at < self.retain_s:
                break
            del self._closed[event_id]
        ready, self._ready = self._ready, []
        return ready

    def requeue(self, records: list[DecisionRecord]) -> None:
        """Records a full link could not take: shipped first next time, within the same bound
        (the oldest dropped and counted when over it)."""
        self._ready[:0] = records
        self._bound_ready()

    def _bound_ready(self) -> None:
        if (over := len(self._ready) - self.max_ready) > 0:
            del self._ready[:over]
            self.dropped += over

    def _close_implicit(self, event: Event, now: float) -> None:
        accuracy = event.candidates[event.chosen].accuracy
        self._close(event, accuracy if event.met else 0.0, "implicit", now)

    def _close(self, event: Event, reward: float, source: str, now: float) -> None:
        del self._open[event.event_id]
        self._closed[event.event_id] = (source, now)
        while len(self._closed) > self.max_open:
            self._closed.popitem(last=False)
        self._ready.append(
            DecisionRecord(
                event_id=event.event_id,
                family=event.family,
                context=event.context,
                budget_ms=event.budget_ms,
                load=event.load,
                candidates=event.candidates,
                chosen=event.chosen,
                probability=event.probability,
                reward=reward,
                source=source,
                met=bool(event.met),
            )
        )
        self._bound_ready()
