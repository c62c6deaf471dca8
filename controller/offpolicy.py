"""Offline evaluation of a variant-selection policy from logged decisions (IPS and doubly robust).

Each logged decision carries the probability the deciding policy gave its choice, so the value a
different policy would have earned on the same requests can be estimated without deploying it.
Also answers "which variant does the policy prefer in each context" for ``letmesh bandit report``.
A pure, synchronous core: imports ``mesh.bandit`` and the standard library; no asyncio, no zmq.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.bandit import BanditPolicy, Candidate

# Pseudo-counts pulling a thin (context, variant) cell towards its variant's mean, and a variant
# towards the overall mean: few records must not give a confident reward model.
_CELL_PRIOR = 5.0
_VARIANT_PRIOR = 5.0
_PREFERENCE_RECORDS = 200  # most recent records per context asked of the policy


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One request: its context and candidates, what was chosen with which probability, and the reward."""

    context: dict[str, Any]
    budget_ms: float
    load: float
    candidates: tuple[Candidate, ...]
    chosen: int
    probability: float
    reward: float


@dataclass(frozen=True, slots=True)
class PolicyValue:
    """Mean reward per decision: as logged, and estimated for the target policy.

    ``ips`` is inverse propensity scoring (unbiased, high variance); ``snips`` its self-normalised
    form; ``dr`` doubly robust (IPS on the residuals of a reward model, lower variance). With no
    records every value is NaN and ``n`` is 0.
    """

    logged: float
    ips: float
    dr: float
    n: int
    ips_stderr: float
    dr_stderr: float = math.nan
    snips: float = math.nan


Target = Callable[[LoggedDecision], Sequence[float]]


def _context_key(context: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), repr(v)) for k, v in context.items()))


def _cell(record: LoggedDecision) -> tuple[Any, ...]:
    # The budget enters by octave, like the policy's own budget bucket feature.
    return (_context_key(record.context), round(math.log2(max(record.budget_ms, 1e-3))))


class _RewardModel:
    """Mean reward per (context, budget octave, variant), shrunk to the variant's mean, then the overall mean."""

    def __init__(self, records: Sequence[LoggedDecision]) -> None:
        cell_sum: dict[tuple[Any, str], float] = defaultdict(float)
        cell_n: dict[tuple[Any, str], int] = defaultdict(int)
        var_sum: dict[str, float] = defaultdict(float)
        var_n: dict[str, int] = defaultdict(int)
        for r in records:
            v = r.candidates[r.chosen].variant
            cell_sum[(_cell(r), v)] += r.reward
            cell_n[(_cell(r), v)] += 1
            var_sum[v] += r.reward
            var_n[v] += 1
        self._overall = sum(var_sum.values()) / len(records) if records else 0.5
        self._variant = {v: (var_sum[v] + _VARIANT_PRIOR * self._overall) / (var_n[v] + _VARIANT_PRIOR)
                         for v in var_n}
        self._cell_sum, self._cell_n = cell_sum, cell_n

    def predict(self, record: LoggedDecision, variant: str) -> float:
        base = self._variant.get(variant, self._overall)
        key = (_cell(record), variant)
        n = self._cell_n.get(key, 0)
        return (self._cell_sum.get(key, 0.0) + _CELL_PRIOR * base) / (n + _CELL_PRIOR)


def _checked_pmf(record: LoggedDecision, pmf: Sequence[float]) -> list[float]:
    probs = [float(p) for p in pmf]
    if len(probs) != len(record.candidates):
        raise ValueError(f"target gave {len(probs)} probabilities for {len(record.candidates)} candidates")
    if any(not (p >= 0.0) or not math.isfinite(p) for p in probs):
        raise ValueError(f"target probabilities must be finite and non-negative: {probs}")
    total = sum(probs)
    if not total > 0:
        raise ValueError("target probabilities sum to 0")
    return [p / total for p in probs]


def _check(record: LoggedDecision) -> None:
    if not record.candidates:
        raise ValueError("a logged decision without candidates")
    if not 0 <= record.chosen < len(record.candidates):
        raise ValueError(f"logged choice {record.chosen} outside 0..{len(record.candidates) - 1}")
    if not 0.0 < record.probability <= 1.0:
        raise ValueError(f"logged probability must be in (0, 1], got {record.probability}")


def _mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((x - mean) ** 2 for x in values) / (n - 1)
    return mean, math.sqrt(var / n)


def evaluate(records: Sequence[LoggedDecision], target: Target) -> PolicyValue:
    """Estimate the mean reward ``target`` would have earned on the logged requests.

    The reward model behind the doubly-robust estimate is cross-fitted: records at even positions
    are scored with a model fitted on the odd ones and vice versa, so no record judges itself.
    """
    if not records:
        nan = math.nan
        return PolicyValue(logged=nan, ips=nan, dr=nan, n=0, ips_stderr=nan, dr_stderr=nan, snips=nan)
    for r in records:
        _check(r)
    folds = (list(records[0::2]), list(records[1::2]))
    models = (_RewardModel(folds[1] or folds[0]), _RewardModel(folds[0]))
    ips_terms: list[float] = []
    dr_terms: list[float] = []
    weights: list[float] = []
    for i, r in enumerate(records):
        pmf = _checked_pmf(r, target(r))
        model = models[i % 2]
        w = pmf[r.chosen] / r.probability
        predicted = [model.predict(r, c.variant) for c in r.candidates]
        direct = math.fsum(p * q for p, q in zip(pmf, predicted))
        ips_terms.append(w * r.reward)
        dr_terms.append(direct + w * (r.reward - predicted[r.chosen]))
        weights.append(w)
    ips, ips_se = _mean_stderr(ips_terms)
    dr, dr_se = _mean_stderr(dr_terms)
    total_w = math.fsum(weights)
    snips = math.fsum(ips_terms) / total_w if total_w > 0 else math.nan
    logged = math.fsum(r.reward for r in records) / len(records)
    return PolicyValue(logged=logged, ips=ips, dr=dr, n=len(records), ips_stderr=ips_se, dr_stderr=dr_se,
                       snips=snips)


def policy_target(policy: BanditPolicy, *, greedy: bool = False) -> Target:
    """The policy's pmf over a record's candidates (``greedy``: all mass on its favourite) as a target."""

    def target(r: LoggedDecision) -> Sequence[float]:
        pmf = policy.pmf(r.context, r.budget_ms, r.load, r.candidates)
        if not greedy:
            return pmf
        best = max(range(len(pmf)), key=lambda i: (pmf[i], -i))
        return [1.0 if i == best else 0.0 for i in range(len(pmf))]

    return target


def preferences(records: Sequence[LoggedDecision], policy: BanditPolicy) -> list[tuple[dict[str, Any], str, float]]:
    """Per distinct context: the variant ``policy`` favours and its mean probability there.

    The probability of a variant is averaged over the context's most recent records (0 where it
    was not a candidate). Sorted by context.
    """
    groups: dict[tuple[tuple[str, str], ...], list[LoggedDecision]] = {}
    for r in records:
        groups.setdefault(_context_key(r.context), []).append(r)
    out = []
    for key in sorted(groups):
        recent = groups[key][-_PREFERENCE_RECORDS:]
        mass: dict[str, float] = defaultdict(float)
        for r in recent:
            for c, p in zip(r.candidates, policy.pmf(r.context, r.budget_ms, r.load, r.candidates)):
                mass[c.variant] += p
        variant = max(sorted(mass), key=lambda v: mass[v])
        out.append((dict(recent[-1].context), variant, mass[variant] / len(recent)))
    return out
