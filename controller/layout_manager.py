"""Online re-planning: when demand moves, plan a new layout and move the mesh to it make-before-break.

Synchronous: ``tick`` takes ``now`` and returns the commands for the controller actor to send
(to agents), so the policy — period, hysteresis, one transition at a time — is testable without
sockets.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from controller.demand import DemandTracker, replan_due
from controller.headroom import AdaptiveHeadroom
from controller.live_slowdown import LiveSlowdown, Observation
from controller.placement import PlannedWorker
from controller.reconciler import Phase, Transition, begin
from controller.registry import Registry
from controller.accuracy import ResolvePolicy
from controller.replanner import Layout, ScaledLayout, layout, profile_table, scaled_layout
from controller.store import StateStore
from protocol.message import StartWorker, StopWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LayoutPolicy:
    policy: str = "gpulet"  # or "temporal", "whole"; "static" keeps the initial placement
    replan_period_s: float = 10.0
    drain_s: float = 2.0
    start_timeout_s: float = 120.0
    floor_rps: float = 1.0
    # Accuracy scaling: when the full-accuracy plan leaves demand unserved, solve the MILP.
    accuracy_scaling: bool = True
    scaling_time_limit_s: float = 2.0
    fast_replan_s: float = 1.0  # a demand rise re-plans this soon, whatever the period
    # The MILP's capacity headroom (the beta ladder starts here) and how far ahead it plans: a
    # new plan needs a solve, worker starts and a drain before it carries anything, and the
    # demand forecast over that time (its rise extrapolated) is what it must carry then.
    scaling_beta: float = 1.2
    scaling_horizon_s: float = 2.0
    # The headroom rises (up to this) while requests miss their deadlines, see controller.headroom;
    # equal to scaling_beta keeps it fixed.
    scaling_beta_max: float = 5.0
    # Plan with the slowdown the workers measure now (observed vs profiled compute time), held
    # this long after the last worker of a variant reported it; 0 plans with the profiles alone.
    # Off by default: the figure moves with the operating point (a variant measured while it
    # carried a small share looks faster than it will be carrying all), and plans chase it.
    live_slowdown_hold_s: float = 0.0


class LayoutManager:
    """Owns the current plan and the transition in progress. Not thread-safe; the actor owns it."""

    def __init__(self, settings: LayoutPolicy, registry: Registry, store: StateStore, demand: DemandTracker,
                 start_command: Callable[[PlannedWorker], StartWorker], *, generation: int) -> None:
        self.settings = settings
        self._registry = registry
        self._store = store
        self._demand = demand
        self._start_command = start_command
        self.generation = generation * 1000
        self.transition: Transition | None = None
        self.current: Layout | None = None
        self._planned_for: dict[str, float] = {}
        self._last_plan = float("-inf")
        self.replans = 0
        self._forced = False
        self.scaled: ScaledLayout | None = None
        self.solve_times: list[float] = []
        self._last_family: dict[str, float] = {}
        self._resolve = ResolvePolicy(period_s=settings.replan_period_s, fast_period_s=settings.fast_replan_s)
        self.live = LiveSlowdown(hold_s=settings.live_slowdown_hold_s)
        self.headroom = AdaptiveHeadroom(base=settings.scaling_beta,
                                         ceiling=max(settings.scaling_beta, settings.scaling_beta_max))
        self._outcomes_from = float("-inf")

    def force(self, policy: str = "") -> None:
        """Re-plan at the next tick whatever the hysteresis says (optionally switching policy)."""
        if policy:
            self.settings = dataclasses.replace(self.settings, policy=policy)
        self._forced = True

    def tick(self, now: float) -> list[tuple[str, object]]:
        if self.settings.policy == "static":
            return []
        self._observe_slowdown(now)
        forecast = self._demand.forecast(self.settings.scaling_horizon_s)
        family = self._by_family(forecast)
        since = now - self._last_plan
        jumped = since >= self.settings.fast_replan_s and self._resolve.jumped(family, self._last_family)
        if self.transition is not None:
            if jumped and self.transition.phase is Phase.STARTING:
                return self._supersede(forecast, family, now)
            return self._advance(now)
        forced, self._forced = self._forced, False
        if not forced and not jumped and since < self.settings.replan_period_s:
            return []
        target = self._target(forecast)
        if (not forced and not jumped and self.current is not None and self.scaled is None
                and not replan_due(self._planned_for, self._floor(self._at_full_accuracy(target)))):
            return []
        self._last_plan = now
        return self._replan(target, family, now)

    def _target(self, forecast: dict[str, float]) -> dict[str, float]:
        """The recent peak with headroom, or the forecast when demand rises faster than that."""
        target = self._demand.target()
        return {v: max(target.get(v, 0.0), forecast.get(v, 0.0)) for v in set(target) | set(forecast)}

    def _supersede(self, forecast: dict[str, float], family: dict[str, float], now: float) -> list[tuple[str, object]]:
        """Demand jumped while the last re-plan's workers were still starting: plan again from the
        workers running and starting (those the new plan wants are kept and waited for), rather
        than finish a move to a layout sized for the old demand first. Nothing that serves is
        retired until the new plan's workers are all ready."""
        old, self.transition = self.transition, None
        self._last_plan = now
        log.info("demand jumped while a re-plan was starting: planning again")
        ready = self._registry.ready_ids()
        starting = {w for w in (*(n.worker_id for n in old.new), *old.awaiting) if w not in ready}
        out = self._replan(self._target(forecast), family, now, starting=starting)
        if self.transition is None:  # nothing to move to after all: carry on with the old move
            self.transition = old
            out += self._advance(now)
        return out

    def _floor(self, target: dict[str, float]) -> dict[str, float]:
        return {v: max(target.get(v, 0.0), self.settings.floor_rps) for v in self._registry.variants}

    def _at_full_accuracy(self, target: dict[str, float]) -> dict[str, float]:
        """The demand as if every family were served at full accuracy: its most accurate variant
        carries the whole family's rate. How requests were split lately reflects past plans and
        choices; sizing on it would let a scaled-down mix look like it fits and oscillate."""
        out = dict(target)
        families: dict[str, list] = {}
        for v in self._registry.variants.values():
            families.setdefault(v.family, []).append(v)
        for variants in families.values():
            best = max(variants, key=lambda v: (v.accuracy, v.name))
            total = sum(target.get(v.name, 0.0) for v in variants)
            out[best.name] = max(out.get(best.name, 0.0), total)
        return out

    def _replan(self, target: dict[str, float], family: dict[str, float], now: float,
                starting: set[str] | None = None) -> list[tuple[str, object]]:
        target = self._at_full_accuracy(target)
        reg = self._registry
        agents = {a: r.devices for a, r in reg.agents.items() if reg.agent_alive(a, now)}
        samples = self._store.profiles()
        slowdown = {}
        if self.live:  # only when workers reported and the feed is on: the table costs a pass over the profiles
            slowdown = self.live.factors(profile_table(samples), reg.variants,
                                         {d.kind for devices in agents.values() for d in devices})
        new = layout(agents, reg.variants, samples, self._store.colocations(), target,
                     policy=self.settings.policy, floor_rps=self.settings.floor_rps, slowdown=slowdown)
        if new is None:
            self._last_plan = float("-inf")  # try again next tick: profiles are not in yet
            return []  # keep serving on the current placement
        self.current = new
        self._planned_for = new.planned_for
        self._last_family = family
        desired = new.desired
        beta = self.headroom.update(*self._demand.outcomes_since(self._outcomes_from))
        self._outcomes_from = now
        if new.plan.unserved and self.settings.accuracy_scaling:
            scaled = scaled_layout(agents, reg.variants, samples, self._store.colocations(),
                                   self._family_demand(family), current=self.scaled.plan if self.scaled else None,
                                   time_limit_s=self.settings.scaling_time_limit_s, beta=beta,
                                   slowdown=slowdown)
            log.warning("over capacity at full accuracy (unserved req/s %s): accuracy scaling to %.3f with headroom "
                        "%.2f (from %.2f), shed %s, solved in %.2f s (%s); live slowdown %s", _rounded(new.plan.unserved),
                        scaled.plan.effective_accuracy, scaled.plan.beta, beta, dict(scaled.plan.shed),
                        scaled.plan.solve_s, scaled.plan.status, _rounded(slowdown))
            self.scaled = scaled
            self.solve_times.append(scaled.plan.solve_s)
            desired = scaled.desired
            reg.family_fractions, reg.shed = scaled.fractions(), scaled.shed_share()
        else:
            if new.plan.unserved:
                log.warning("plan leaves demand unserved (req/s): %s", dict(new.plan.unserved))
                if self._drops_served_variant(new):
                    return []
            if self.scaled is not None:
                log.info("demand fits at full accuracy again")
            self.scaled = None
            reg.family_fractions, reg.shed = {}, {}
        current = [w.plan for w in reg.workers.values()
                   if w.plan.agent_id in agents and w.state in ("ready", "starting", "restarting")]
        cores = {(a, d.device_id): d.cores for a, devices in agents.items() for d in devices}
        self.generation += 1
        # Workers a superseded move was still starting are waited for (if kept) or stopped at once
        # (if not). Any other worker is treated as serving, reported ready or not: after a
        # controller restart, workers it has not heard from yet may well be serving.
        settled = {w.worker_id for w in current if w.worker_id not in (starting or set())}
        t = begin(current, desired, cores, generation=self.generation, now=now, ready=settled,
                  start_timeout_s=self.settings.start_timeout_s, drain_s=self.settings.drain_s)
        if t is None:
            return []
        self.replans += 1
        log.info("re-planning: %d workers kept, %d started, %d retired", len(t.keep), len(t.new), len(t.retire))
        self.transition = t
        for plan in t.new:
            reg.plan_worker(plan)
            self._store.save_placement(plan)
        return self._advance(now)

    def _advance(self, now: float) -> list[tuple[str, object]]:
        t = self.transition
        assert t is not None
        actions = t.step(self._registry.ready_ids(), now)
        out: list[tuple[str, object]] = []
        for plan in actions.start:
            out.append((plan.agent_id, self._start_command(plan)))
        for worker_id in actions.drain:
            self._registry.retire(worker_id, "draining")
        for worker_id in actions.stop:
            record = self._registry.workers.get(worker_id)
            if record is None:
                continue
            self._registry.retire(worker_id, "stopping")
            self._store.delete_placement(worker_id)
            out.append((record.plan.agent_id, StopWorker(worker_id=worker_id, drain_s=self.settings.drain_s)))
        if t.finished:
            log.info("re-plan %s", t.phase.value)
            self.transition = None
        return out

    def _observe_slowdown(self, now: float) -> None:
        if self.settings.live_slowdown_hold_s <= 0:
            return
        reg = self._registry
        kinds = {(a, d.device_id): d.kind for a, r in reg.agents.items() for d in r.devices}
        observations = []
        for w in reg.workers.values():
            if w.state != "ready" or not w.slowdown:
                continue
            p = w.plan.partition
            kind = kinds.get((w.plan.agent_id, p.device_id), p.kind)
            size = p.mps_percent if p.kind == "cuda" else len(p.cores)
            for variant, ratio in w.slowdown.items():
                warmup = w.batch_latency_ms.get(variant, ())
                observations.append(Observation(variant, kind, size, ratio, warmup[0] if warmup else 0.0))
        self.live.update(observations, now)

    def _drops_served_variant(self, new: Layout) -> bool:
        """A plan that leaves a variant with demand and a worker today with no gpu-let is not applied."""
        planned = {v for d in new.desired for v in d.variants}
        serving = {v for w in self._registry.workers.values() if w.state == "ready" for v in w.plan.variants}
        dropped = sorted(v for v in serving - planned if new.planned_for.get(v, 0.0) > 0)
        if dropped:
            log.warning("not applying a plan that would leave %s without a worker; keeping the current layout",
                        ", ".join(dropped))
        return bool(dropped)

    def _by_family(self, rates: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for variant, rate in rates.items():
            v = self._registry.variants.get(variant)
            if v is not None:
                out[v.family] = out.get(v.family, 0.0) + rate
        return out

    def _family_demand(self, rates: dict[str, float]) -> dict[str, float]:
        """Demand per family for the MILP (the forecast ``scaling_horizon_s`` ahead), with every
        family's floor."""
        families = {v.family for v in self._registry.variants.values()}
        return {f: max(rates.get(f, 0.0), self.settings.floor_rps) for f in sorted(families)}

    def worker_stopped(self, worker_id: str) -> None:
        """A retired worker has exited: it leaves the registry (and the routing table) now."""
        record = self._registry.workers.get(worker_id)
        if record is not None and record.state in ("stopping", "draining"):
            self._registry.remove_worker(worker_id)


def _rounded(values) -> dict[str, float]:
    return {(f"{k[0]}@{k[1]}" if isinstance(k, tuple) else k): round(x, 2) for k, x in sorted(values.items())}
