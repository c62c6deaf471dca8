"""Per-request bounds and variant selection for requests that name a model family.

Candidates are the family's variants with a reachable worker that satisfy the request's bounds
(accuracy floor, energy ceiling, and a likely-met deadline from the worker's measured latency and
live slowdown); the family's bandit policy picks among them and nothing else. Without a policy
("accurate"), the most accurate candidate sure to meet the deadline is taken, or, while the plan
scales accuracy, a draw by the plan's shares among those.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.dispatch_error import DeadlineExceeded
from gateway.dispatcher import Dispatcher
from gateway.edge import DEFAULT_LIMITS, EdgeLimits, bounded_context, bounded_number
from gateway.policy_store import PolicyReplicas
from mesh.bandit import (
    Bounds,
    Candidate,
    ContextValue,
    Decision,
    NoCandidate,
    candidate_from_profile,
    confident,
    filter_candidates,
)
from mesh.shares import ShareTracker, weighted_choice
from protocol.types import ModelInfo


@dataclass(frozen=True, slots=True)
class RequestBounds:
    budget_s: float
    min_accuracy: float | None
    max_energy_j: float | None
    context: dict[str, ContextValue]

    def bounds(self) -> Bounds:
        return Bounds(budget_ms=self.budget_s * 1e3, min_accuracy=self.min_accuracy, max_energy_j=self.max_energy_j)


@dataclass(frozen=True, slots=True)
class Selection:
    model: ModelInfo
    candidates: tuple[Candidate, ...]
    decision: Decision
    load: float


def parse_bounds(parameters: Mapping[str, Any], default_slo_ms: float,
                 limits: EdgeLimits = DEFAULT_LIMITS) -> RequestBounds:
    """Deadline (``timeout`` in µs, else ``letmesh_slo_ms``, else the default), bounds and context.

    Every value is checked before use (see :mod:`gateway.edge`): a deadline between
    ``limits.min_deadline_ms`` and ``limits.max_deadline_ms``, an accuracy floor in [0, 1], a
    finite non-negative energy ceiling and a bounded flat context; anything else raises
    ``InvalidParameter`` naming the parameter.
    """
    low, high = limits.min_deadline_ms, limits.max_deadline_ms
    if "timeout" in parameters:  # Triton: microseconds
        budget_s = bounded_number(parameters["timeout"], "timeout", low=low * 1e3, high=high * 1e3) * 1e-6
    elif "letmesh_slo_ms" in parameters:
        budget_s = bounded_number(parameters["letmesh_slo_ms"], "letmesh_slo_ms", low=low, high=high) * 1e-3
    else:
        budget_s = default_slo_ms * 1e-3
    min_accuracy = max_energy_j = None
    if "letmesh_min_accuracy" in parameters:
        min_accuracy = bounded_number(parameters["letmesh_min_accuracy"], "letmesh_min_accuracy", low=0.0, high=1.0)
    if "letmesh_max_energy_j" in parameters:
        max_energy_j = bounded_number(parameters["letmesh_max_energy_j"], "letmesh_max_energy_j", low=0.0,
                                      high=limits.context_max_abs)
    return RequestBounds(
        budget_s=budget_s,
        min_accuracy=min_accuracy,
        max_energy_j=max_energy_j,
        context=bounded_context(parameters.get("letmesh_context", {}), limits),
    )


def check_variant(model: ModelInfo, bounds: RequestBounds) -> None:
    """A request naming a concrete variant is not redirected, but its bounds still hold. (A deadline
    it cannot meet is the worker's to refuse: it answers "late", unrun, and the client a 504.)"""
    if bounds.min_accuracy is not None and model.accuracy < bounds.min_accuracy:
        raise NoCandidate("accuracy", f"{model.name} has accuracy {model.accuracy:.4g} < {bounds.min_accuracy:g}")
    if bounds.max_energy_j is not None and model.energy_j > bounds.max_energy_j:
        raise NoCandidate("energy", f"{model.name} uses {model.energy_j:.4g} J > {bounds.max_energy_j:g} J")


def _within_other_bounds(model: ModelInfo, bounds: RequestBounds) -> bool:
    try:
        check_variant(model, bounds)
    except NoCandidate:
        return False
    return True


def refuse_unmeetable(budget_ms: float, alone_ms: Sequence[tuple[str, float]], name: str) -> None:
    """Raise DeadlineExceeded (504) when the budget is shorter than every variant takes alone on an
    idle worker (its profiled batch-1 latency): no wait makes it possible, so no Retry-After
    invites the same request again. A budget that load alone puts out of reach stays a 503."""
    known = [(ms, v) for v, ms in alone_ms if ms > 0]
    if known and budget_ms < (fastest := min(known))[0]:
        raise DeadlineExceeded(f"the {budget_ms:g} ms deadline is shorter than {name} takes on an idle worker "
                               f"({fastest[0]:.3g} ms for {fastest[1]} alone): it cannot be met; dropped unrun")


class Shed(Exception):
    """The plan knowingly turns this share of the family's requests away: the fleet cannot carry them."""


SELECTION_MODES = ("bandit", "accurate")


def accurate_choice(candidates: Sequence[Candidate], fractions: Mapping[str, float], rng: random.Random) -> Decision:
    """Without a learned policy: the most accurate candidate, or, while the plan scales accuracy,
    a draw weighted by the plan's share of each variant (Proteus' weighted routing). The caller
    has kept the candidates confident to meet the deadline, where there are any (``confident``)."""
    chosen, pmf = weighted_choice(candidates, fractions, rng.random())
    return Decision(chosen=chosen, probability=pmf[chosen], pmf=pmf)


def select(
    family: str, variants: Sequence[ModelInfo], bounds: RequestBounds, dispatcher: Dispatcher, replicas: PolicyReplicas,
    shares: ShareTracker | None = None, now: float = 0.0, mode: str = "bandit",
) -> Selection | None:
    """The policy's choice among the candidates; None when no variant has a reachable worker.

    Raises NoCandidate naming the bound that no reachable variant can meet.
    """
    budget_ms = bounds.budget_s * 1e3
    options, models = [], {}
    for model in variants:
        estimate = dispatcher.estimate(model.name)
        if estimate is None:
            continue
        models[model.name] = model
        options.append(
            candidate_from_profile(
                variant=model.name,
                accuracy=model.accuracy,
                energy_j=model.energy_j,
                profiled_ms=estimate.profiled_ms,
                slowdown=estimate.slowdown,
                budget_ms=budget_ms,
                queue_ms=estimate.queue_ms,
            )
        )
    if not options:
        return None
    if shares is not None and shares.shed(dispatcher.shed.get(family, 0.0)):
        raise Shed(f"{family} is over the fleet's capacity; {dispatcher.shed[family]:.0%} of its requests are "
                   "turned away until demand falls")
    try:
        candidates = filter_candidates(options, bounds.bounds(), family=family)
    except NoCandidate as exc:
        if exc.bound == "deadline":  # every variant the other bounds allow, on its fastest worker
            refuse_unmeetable(budget_ms, [(name, dispatcher.fastest_alone_ms(name)) for name, model in models.items()
                                          if _within_other_bounds(model, bounds)], family)
        raise
    if mode == "accurate":
        candidates = confident(candidates)
    if shares is not None:
        candidates = shares.allowed(family, dispatcher.family_fractions.get(family, {}), candidates, now)
    candidates = tuple(candidates)
    load = dispatcher.load()
    if mode == "accurate":
        decision = accurate_choice(candidates, dispatcher.family_fractions.get(family, {}),
                                   shares.rng if shares is not None else random.Random())
    else:
        decision = replicas.decide(family, bounds.context, budget_ms, load, candidates)
    chosen = candidates[decision.chosen].variant
    if shares is not None:
        shares.record(family, chosen, now)
    return Selection(models[chosen], candidates, decision, load)
