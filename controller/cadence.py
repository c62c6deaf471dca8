"""When to re-plan: the layout manager's one answer to "re-plan now?". Pure and synchronous.

Reasons, strongest first:

- **forced**: an operator asked (``letmesh replan``) — no period, no dwell;
- **loss**: workers of the plan of record sit on an agent that is lost (or, after a controller
  restart, has not registered again) — at once, no dwell; but not while agents are still
  rejoining (within ``settle_s`` of the last one that did): after a partition heals, agents come
  back one by one, and a re-plan on the first one back would move everything onto it;
- **rise**: some family's demand is past what the current plan carries by more than noise —
  after ``fast_s``, no dwell: requests would miss deadlines otherwise;
- **drift**: a planning target moved past the hysteresis and the noise — at most every
  ``period_s``; a fall (capacity to give back) not within ``dwell_s`` of the last layout
  change, unless requests are missing their deadlines meanwhile (a failure: the dwell would only
  prolong it) or the plan serves part of the demand at reduced accuracy (a fall may give the
  accuracy back; the layout manager passes both as ``failing``). A rising target is not held
  back: flapping needs falls too.

Demand noise: a one-second count of a steady Poisson stream at rate r has a standard deviation
of sqrt(r), so a change smaller than ``NOISE_SIGMAS`` of those is not taken for a move. Without
this, a steady 30 req/s re-planned every 20-35 s on the forecast's one-second windows.
Must not import asyncio, ZeroMQ or role packages beyond ``controller``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

NOISE_SIGMAS = 3.0


class Reason(enum.Enum):
    NONE = "none"
    WAIT = "wait"  # agents are rejoining: hold every re-plan but an operator's
    FORCED = "forced"
    LOSS = "loss"
    RISE = "rise"
    DRIFT = "drift"


def noise_rps(rate_rps: float) -> float:
    """The change in a rate that one-second Poisson counts make on their own."""
    return NOISE_SIGMAS * math.sqrt(max(rate_rps, 1.0))


def rose(demand: Mapping[str, float], carried: Mapping[str, float], *, jump: float = 0.2,
         min_change_rps: float = 1.0) -> bool:
    """Has some key's demand risen past what the plan carries by ``jump`` of it and past noise?"""
    for key, new in demand.items():
        old = carried.get(key, 0.0)
        if new - old > max(min_change_rps, jump * old, noise_rps(old)):
            return True
    return False


def moved(planned: Mapping[str, float], target: Mapping[str, float], *, rise: float = 0.05,
          rise_rps: float = 10.0, fall: float = 0.10, up: bool = True, down: bool = True) -> bool:
    """Hysteresis on planning targets: a rise by more than ``rise`` (or ``rise_rps``) or a fall by
    more than ``fall`` of the planned rate, either also past noise (``up``/``down``: which to see)."""
    for key in set(planned) | set(target):
        old, new = planned.get(key, 0.0), target.get(key, 0.0)
        noise = noise_rps(old)
        if up and new > old and new - old > noise and (old == 0 or new - old > rise_rps or new > old * (1 + rise)):
            return True
        if down and new < old * (1 - fall) and old - new > noise:
            return True
    return False


@dataclass(slots=True)
class Cadence:
    """Times of the last attempt, layout change and agent join, and the rule over them."""

    period_s: float = 10.0
    fast_s: float = 1.0
    dwell_s: float = 30.0
    settle_s: float = 5.0
    last_attempt: float = -math.inf
    last_change: float = -math.inf
    last_join: float = -math.inf

    def decide(self, now: float, *, forced: bool, stranded: bool, rising: bool, drifted: bool,
               failing: bool = False) -> Reason:
        """``stranded``: plan-of-record workers sit on an agent that is down; ``rising``/``drifted``:
        what :func:`rose` and :func:`moved` say of the demand (drift may be costly to compute:
        it is asked only when the period allows, see :meth:`drift_allowed`); ``failing``:
        requests miss their deadlines under the current layout."""
        if forced:
            return Reason.FORCED
        if stranded and now - self.last_join < self.settle_s:
            return Reason.WAIT
        since = now - self.last_attempt
        if stranded and since >= self.fast_s:
            return Reason.LOSS
        if rising and since >= self.fast_s:
            return Reason.RISE
        if drifted and self.drift_allowed(now, failing):
            return Reason.DRIFT
        return Reason.NONE

    def drift_allowed(self, now: float, failing: bool = False) -> bool:
        return now - self.last_attempt >= self.period_s and (failing or now - self.last_change >= self.dwell_s)
