"""What one inference request does, whatever protocol carried it: choose, dispatch, account.

The HTTP handlers parse and validate a request, hand it here, and translate the outcome or
the error back into their protocol; nothing here knows about HTTP. For a family, the variant is
chosen among the candidates that meet the request's bounds (``gateway.selection``) and the
decision is logged for the bandit; the request is dispatched with its deadline; demand and
missed deadlines are counted for the controller, and the outcome is recorded once in the
plane's :class:`~gateway.telemetry.Telemetry`. Errors leave as the exceptions of
``gateway.dispatcher``, ``gateway.selection`` and ``mesh.bandit``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gateway.dispatch_error import (
    DeadlineExceeded,
    DispatchError,
    NoWorkerReady,
    Overloaded,
    WorkerFailed,
    WorkerLost,
)
from gateway.dispatcher import Dispatcher, Result
from gateway.event_log import Event, EventLog
from gateway.policy_store import PolicyReplicas
from gateway.preference import PreferenceTally
from gateway.redact import public_reason
from gateway.selection import RequestBounds, Selection, Shed, check_variant, select
from gateway.telemetry import Outcome, Telemetry
from mesh.bandit import NoCandidate
from mesh.deadline import Deadline
from mesh.shares import ShareTracker
from protocol.types import CandidateInfo, ModelInfo


class ModelNotFound(Exception):
    pass


class ModelUnavailable(Exception):
    """The model is in the repository but set aside (its artifact failed its checks or to load)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name!r} is unavailable: {public_reason(reason)}")


@dataclass(frozen=True, slots=True)
class Served:
    """A request answered by a worker: its result and how it went against the deadline."""

    model: ModelInfo
    result: Result
    met: bool
    elapsed_s: float
    event_id: str


class DataPlane:
    """The gateway's request path between protocol and dispatcher. One event loop; not thread-safe."""

    def __init__(self, dispatcher: Dispatcher, *, events: EventLog, policies: PolicyReplicas,
                 shares: ShareTracker, selection: str, telemetry: Telemetry | None = None) -> None:
        self.dispatcher = dispatcher
        self.events = events
        self.policies = policies
        self.shares = shares
        self.selection = selection
        self.preferences = PreferenceTally()  # what selection prefers per context, for the dashboard
        # Every request this plane answers is recorded here once (see refused() for the rest).
        self.telemetry = telemetry if telemetry is not None else Telemetry()

    def resolve(self, name: str) -> tuple[list[ModelInfo], bool]:
        """(variants the name may run on, most accurate first; whether it names a family).

        Before the first routing table arrives the gateway cannot tell an unknown model from one
        it has not heard of yet: that is NoWorkerReady (come back shortly), not ModelNotFound.
        """
        d = self.dispatcher
        if name in d.models:
            return [d.models[name]], False
        if name in d.families:
            return d.families[name], True
        if not d.view.received:
            raise NoWorkerReady("the gateway has no routing table from the controller yet")
        if name in d.view.unavailable:
            raise ModelUnavailable(name, d.view.unavailable[name])
        raise ModelNotFound(name)

    async def infer(self, name: str, variants: list[ModelInfo], is_family: bool,
                    inputs: Mapping[str, np.ndarray], bounds: RequestBounds, received: float) -> Served:
        """Run the request accepted at ``received``; raises NoCandidate, Shed or a DispatchError.

        Whatever the outcome, it is recorded in ``telemetry`` exactly once before this returns."""
        d = self.dispatcher
        head = variants[0]
        if not is_family:
            d.demand.naming(head.name)
        event_id = ""
        explored: bool | None = None
        try:
            if is_family:
                chosen = select(name, variants, bounds, d, self.policies, self.shares, received, mode=self.selection)
                if chosen is None:
                    raise NoWorkerReady(f"no variant of {name} has a reachable worker")
                model = chosen.model
                event_id = self._log_decision(name, bounds, chosen, received)
                if self.selection == "bandit":
                    explored = chosen.decision.probability < max(chosen.decision.pmf, default=0.0)
            else:
                model = head
                check_variant(model, bounds)
        except NoCandidate as exc:
            d.demand.request(head.name)  # turned away, but still demand the plan must see
            if exc.bound == "deadline":
                d.demand.miss(head.name)  # and a sign the plan carries less than it thinks
            self._failed(name, head, "" if is_family else head.name, exc, received)
            raise
        except Exception as exc:
            d.demand.request(head.name)
            self._failed(name, head, "" if is_family else head.name, exc, received)
            raise

        deadline = Deadline.after(bounds.budget_s, received)
        try:
            if deadline.passed(time.monotonic()):
                d.demand.request(model.name)
                raise DeadlineExceeded("the deadline passed before the request could be sent")
            result = await d.infer(model.name, dict(inputs), deadline)
        except DispatchError as exc:
            if isinstance(exc, (DeadlineExceeded, Overloaded)):
                d.demand.miss(model.name)
            if event_id:
                self.events.outcome(event_id, met=False if isinstance(exc, DeadlineExceeded) else None,
                                    now=time.monotonic())
            self._failed(name, model, model.name, exc, received, selected=is_family, explored=explored)
            raise
        except Exception as exc:
            self._failed(name, model, model.name, exc, received, selected=is_family, explored=explored)
            raise

        finished = time.monotonic()
        met = not deadline.passed(finished)
        if not met:
            d.demand.miss(model.name)
        if event_id:
            self.events.outcome(event_id, met=met, now=finished)
        reply = result.reply
        first = next(iter(inputs.values()), None)
        self.telemetry.answered(
            model=name, family=model.family, variant=model.name, met=met, latency_s=finished - received,
            accuracy=model.accuracy, queue_us=reply.queue_us, compute_us=reply.compute_us,
            rows=first.shape[0] if first is not None and first.ndim else 1, batch_size=reply.batch_size,
            selected=is_family, explored=explored)
        return Served(model, result, met, finished - received, event_id)

    def refused(self, name: str, outcome: Outcome, reason: str, received: float) -> None:
        """Record a request the HTTP layer answered before it reached :meth:`infer` (unknown
        model, unreadable body, bad input, no routing table yet, a client over its rate)."""
        d = self.dispatcher
        model = family = variant = ""
        if name in d.models:
            model, family, variant = name, d.models[name].family, name
        elif name in d.families:
            model, family = name, name
        self.telemetry.failed(model=model, family=family, variant=variant, outcome=outcome, reason=reason,
                              latency_s=time.monotonic() - received)

    def _failed(self, name: str, model: ModelInfo, variant: str, exc: BaseException, received: float, *,
                selected: bool = False, explored: bool | None = None) -> None:
        outcome, reason = outcome_of(exc)
        self.telemetry.failed(model=name, family=model.family, variant=variant, outcome=outcome, reason=reason,
                              latency_s=time.monotonic() - received, selected=selected, explored=explored)

    def _log_decision(self, family: str, bounds: RequestBounds, chosen: Selection, now: float) -> str:
        event_id = uuid.uuid4().hex
        self.preferences.record(family, bounds.context, [c.variant for c in chosen.candidates], chosen.decision.pmf)
        self.events.record(
            Event(
                event_id=event_id,
                family=family,
                context=bounds.context,
                budget_ms=bounds.budget_s * 1e3,
                load=chosen.load,
                candidates=tuple(
                    CandidateInfo(variant=c.variant, accuracy=c.accuracy, predicted_latency_ms=c.predicted_latency_ms,
                                  p_deadline=c.p_deadline, energy_j=c.energy_j)
                    for c in chosen.candidates
                ),
                chosen=chosen.decision.chosen,
                probability=chosen.decision.probability,
                created=now,
            )
        )
        return event_id


def outcome_of(exc: BaseException) -> tuple[Outcome, str]:
    """How a failure of the request path counts: its outcome and a reason from a fixed set. Must
    agree with the statuses ``gateway.http_app`` answers them with (504, 503, 400, 500)."""
    match exc:
        case DeadlineExceeded():
            return Outcome.DEADLINE_MISSED, "deadline"
        case Shed():
            return Outcome.SHED, "shed"
        case Overloaded():
            return Outcome.SHED, "overloaded"
        case NoWorkerReady():
            return Outcome.SHED, "no_worker"
        case WorkerLost():
            return Outcome.SHED, "worker_lost"
        case NoCandidate(bound="deadline"):
            return Outcome.SHED, "bound_deadline"
        case NoCandidate(bound="accuracy"):
            return Outcome.INVALID, "bound_accuracy"
        case NoCandidate(bound="energy"):
            return Outcome.INVALID, "bound_energy"
        case NoCandidate():
            return Outcome.INVALID, "bound_other"
        case WorkerFailed():
            return Outcome.ERROR, "backend"
    return Outcome.ERROR, "other"
