"""Demand measured against the plan in place: what to plan for, and whether it has moved.

Synchronous and clock-free (``now`` comes in): the layout manager asks it each tick whether demand
rose, drifted, fell while accuracy is given up, or misses deadlines, and tells it what each plan
it applies was made for.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.cadence import moved
from controller.demand import DemandTracker, PeakWindow
from controller.family_demand import at_full_accuracy, by_family, family_floor, variant_floor
from controller.headroom import AdaptiveHeadroom
from controller.layout_policy import LayoutPolicy
from controller.registry import Registry
from controller.replanner import ScaledLayout

# A named variant's demand (req/s, smoothed) that, unplaced, re-plans at once: about one request
# every few seconds, so a client retrying a refused request brings its variant in.
NAMED_MIN_RPS = 0.1

# Under a scaled plan, a fall in a family's demand by this share of what the plan carries, held
# for a re-plan period, re-plans without waiting out the dwell (accuracy given up should come
# back promptly); a smaller or briefer fall waits for it: under a steady overload the forecast
# wanders by 10-20 % and each move to a slightly more accurate plan that cannot carry the load
# costs missed deadlines.
SCALED_FALL = 0.3


class PlanDemand:
    """Demand (all requests, and those that named a variant) against the plan of record."""

    def __init__(self, settings: LayoutPolicy, registry: Registry, demand: DemandTracker,
                 named: DemandTracker | None = None) -> None:
        self._registry = registry
        self._demand = demand
        self._named = named  # requests that named a variant (part of ``demand``)
        self._floor_rps = settings.floor_rps
        self._horizon_s = settings.scaling_horizon_s
        self.headroom = AdaptiveHeadroom(base=settings.scaling_beta,
                                         ceiling=max(settings.scaling_beta, settings.scaling_beta_max))
        self.outcomes_from = float("-inf")  # outcomes before this instant do not judge the plan in place
        self.planned_for: dict[str, float] = {}  # per variant, what the full-accuracy plan was sized on
        self.scaled: ScaledLayout | None = None  # the plan in place when it gives accuracy up
        self._recent = PeakWindow(settings.replan_period_s)  # family forecasts of the last period
        self._seen = PeakWindow(settings.replan_period_s)  # family rates seen, without the trend's extrapolation
        self._scaled_seen: dict[str, float] = {}  # the highest of those when the scaled plan was made
        self._hosted: frozenset[str] = frozenset()  # the variants the current plan gives a worker
        self._named_at_plan: frozenset[str] = frozenset()  # variants clients named when it was made

    def observe(self, now: float) -> tuple[dict[str, float], dict[str, float]]:
        """Take this tick's forecast: per variant, and per family."""
        forecast = self._demand.forecast(self._horizon_s)
        family = by_family(self._registry.variants, forecast)
        self._recent.observe(now, family)
        self._seen.observe(now, by_family(self._registry.variants, self._demand.forecast(0.0)))
        return forecast, family

    def target(self, forecast: dict[str, float], rising: bool) -> dict[str, float]:
        """The recent peak with headroom, or the forecast when demand rises faster than that (a
        forecast that is not a rise past noise is not used: its one-second windows are noisy)."""
        target = self._demand.target()
        if not rising:
            return target
        return {v: max(target.get(v, 0.0), forecast.get(v, 0.0)) for v in set(target) | set(forecast)}

    def named_unplaced(self) -> list[str]:
        """Variants requests name now that the current plan gives no worker, and that were not named
        when it was made (a plan made knowing of them and still not placing them, for want of
        capacity, is not re-made for them each second)."""
        if self._named is None:
            return []
        return [v for v in self.named_rates()
                if v in self._registry.variants and v not in self._hosted and v not in self._named_at_plan]

    def named_rates(self) -> dict[str, float]:
        """Variants requests name now (req/s), past NAMED_MIN_RPS: one named long ago, its rate
        decayed but not yet zero, neither holds a place in a plan nor counts as known to one."""
        rates = self._named.rates() if self._named is not None else {}
        return {v: rps for v, rps in rates.items() if rps >= NAMED_MIN_RPS}

    def carried(self) -> dict[str, float]:
        """Per family, the demand the current plan was made to carry."""
        if self.scaled is not None:
            return dict(self.scaled.demand)
        return by_family(self._registry.variants, self.planned_for)

    def grew(self, forecast: dict[str, float]) -> bool:
        """Has a planning target risen past hysteresis and noise (not held back by the dwell)?
        Not asked of a scaled plan: its per-variant targets are recent peaks of the split the plan
        itself made and wander with it; a rise of the family demand it was solved for is
        :func:`rose`'s to see."""
        if self.scaled is not None:
            return False
        return moved(self.planned_for, self._sized(forecast), down=False)

    def _sized(self, forecast: dict[str, float]) -> dict[str, float]:
        """What a full-accuracy plan would be sized on now, every variant at least at the floor."""
        variants = self._registry.variants
        full = at_full_accuracy(variants, self.target(forecast, False))
        return variant_floor(variants, full, self._floor_rps)

    def fell_while_scaled(self) -> bool:
        """Under a scaled plan, has a family's demand stayed clearly (``SCALED_FALL``, and past
        noise) below what the plan was made for over the last period? The plan was sized on a
        forecast; judged against the smoothed rate, which sits below the forecast after any rise,
        or against one forecast, which wanders by 10-20 % under a steady overload, every steady
        overload looked like a fall: the layout moved to a more accurate plan that could not carry
        the load, then back on the next rise, missing deadlines at each move. A plan made on a step
        is sized for the ramp the forecast reads into it, which does not come: the rate seen must
        also have dropped (by noise and 10 %) below the highest seen when the plan was made."""
        if self.scaled is None:
            return False
        peak, seen = self.recent_peak(), self.recent_peak(self._seen)
        return any(moved({f: d}, {f: peak.get(f, 0.0)}, up=False, fall=SCALED_FALL)
                   and moved({f: self._scaled_seen.get(f, d)}, {f: seen.get(f, 0.0)}, up=False)
                   for f, d in self.scaled.demand.items())

    def recent_peak(self, window: PeakWindow | None = None) -> dict[str, float]:
        """Per family, the last period's highest forecast (or rate seen: ``window=_seen``), floored."""
        return family_floor(self._registry.variants, (window or self._recent).peak(), self._floor_rps)

    def drifted(self, forecast: dict[str, float]) -> bool:
        """Has demand moved from what the current plan carries, past hysteresis and noise (or do
        deadlines miss under a scaled plan, so that its headroom must grow)? A scaled plan is
        judged on the family demand it was solved for (the per-variant targets at full accuracy,
        recent peaks of a split the plan itself made, wander with it)."""
        if self.scaled is not None:
            return moved(self.scaled.demand, self.recent_peak()) or self.failing()
        return moved(self.planned_for, self._sized(forecast))

    def failing(self) -> bool:
        """Do requests miss their deadlines (more than the headroom's target share) since the last plan?"""
        requests, missed = self._demand.outcomes_since(self.outcomes_from)
        return requests >= self.headroom.min_requests and missed > requests * self.headroom.miss_target

    def judge_from(self, now: float) -> float:
        """A plan is made at ``now``: the headroom learns from the outcomes since the last one,
        and later outcomes judge the new plan. Returns the headroom to plan with."""
        beta = self.headroom.update(*self._demand.outcomes_since(self.outcomes_from))
        self.outcomes_from = now
        return beta

    def planning(self, planned_for: dict[str, float], named: Iterable[str]) -> None:
        """A plan was made (applied or not), sized on ``planned_for`` and knowing of the variants
        clients named (``named``)."""
        self._named_at_plan = frozenset(named)
        self.planned_for = dict(planned_for)

    def applied(self, scaled: ScaledLayout | None, hosted: frozenset[str]) -> None:
        """The plan in place gives ``scaled`` (or full accuracy) and a worker to each of ``hosted``."""
        if scaled is not None:
            self._scaled_seen = self.recent_peak(self._seen)
        self.scaled = scaled
        self._hosted = hosted
