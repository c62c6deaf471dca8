"""Online re-planning: when demand moves, plan a new layout and move the mesh to it make-before-break.

Synchronous: ``tick`` takes ``now`` and returns the commands for the controller actor to send
(to agents), so the policy — when (controller.cadence), one transition at a time, never onto a
lost or suspect agent — is testable without sockets.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Iterable

from controller.cadence import Cadence, Reason, rose
from controller.demand import DemandTracker
from controller.family_demand import at_full_accuracy
from controller.headroom import AdaptiveHeadroom
from controller.layout_policy import REPLAN_HISTORY, LayoutPolicy, ReplanEntry
from controller.live_slowdown import LiveSlowdown, reported_slowdowns
from controller.make_room import room_first
from controller.placement import PlannedWorker
from controller.plan_demand import PlanDemand
from controller.profiling import ProfileWait, awaited_kinds
from controller.reconciler import Phase, Transition, as_desired, begin, plan_rates
from controller.registry import Registry
from controller.registry_status import LEAVING
from controller.replanner import Layout, ScaledLayout, layout, memory_overcommitted, profile_table, scaled_layout
from controller.store import StateStore
from controller.worker_memory import WorkerOverhead
from protocol.types import WorkerState
from protocol.message import StartWorker, StopWorker

log = logging.getLogger(__name__)

# How long after a request the gateways have reported its outcome (their demand-report period).
OUTCOME_REPORT_S = 1.0

# Workers that hold their gpu-let: a plan's starting, serving or restarting workers.
HOLDING = frozenset({WorkerState.STARTING, WorkerState.READY, WorkerState.RESTARTING})
# A rise in what workers hold beyond their variants' needs that has a layout judged again (and
# 5 % of the figure planned with, whichever is more): a peak creeps up by a few MiB as a worker serves.
OVERHEAD_RISE_BYTES = 32 << 20
# States of a plan-of-record worker that a re-plan replaces when its agent is down.
STRANDABLE = frozenset({WorkerState.STARTING, WorkerState.READY, WorkerState.RESTARTING, WorkerState.LOST})


class LayoutManager:
    """Owns the current plan and the transition in progress. Not thread-safe; the actor owns it."""

    def __init__(self, settings: LayoutPolicy, registry: Registry, store: StateStore, demand: DemandTracker,
                 start_command: Callable[[PlannedWorker], StartWorker], *, generation: int,
                 named: DemandTracker | None = None) -> None:
        self.settings = settings
        self._registry = registry
        self._store = store
        self.demand = PlanDemand(settings, registry, demand, named)
        self._start_command = start_command
        self.generation = max(generation * 1000, store.last_generation())  # worker ids never repeat
        self.transition: Transition | None = None
        self.current: Layout | None = None
        self.replans = 0
        self.history: deque[ReplanEntry] = deque(maxlen=REPLAN_HISTORY)
        self._forced = False
        self._fresh = False  # the next plan packs from scratch, not around the workers serving
        self._capacity_changed = False
        self._applied = False
        self._announced: frozenset[str] = frozenset()  # lost agents and crashed workers last re-planned without
        self._held_for: frozenset[str] = frozenset()  # agents a loss re-plan waits on (logged once)
        self.cadence = Cadence(period_s=settings.replan_period_s, fast_s=settings.fast_replan_s,
                               dwell_s=settings.min_layout_dwell_s, settle_s=settings.rejoin_settle_s)
        self.live = LiveSlowdown(hold_s=settings.live_slowdown_hold_s)
        self.worker_memory = WorkerOverhead(prior={"cpu": settings.cpu_worker_memory_bytes})  # beyond variants' needs
        self._planned_overhead: dict[str, int] = {}  # the figures the current layout was planned with
        # (agent, device kind) of each device being profiled or waiting its turn: set by the actor.
        self.profiling: frozenset[tuple[str, str]] = frozenset()
        self._wait = ProfileWait()

    @property
    def scaled(self) -> ScaledLayout | None:
        """The plan in place when it gives accuracy up (None at full accuracy)."""
        return self.demand.scaled

    @property
    def headroom(self) -> AdaptiveHeadroom:
        return self.demand.headroom

    def force(self, policy: str = "", *, fresh: bool = True) -> None:
        """Re-plan at the next tick whatever the hysteresis says (optionally switching policy).
        ``fresh``: pack from scratch rather than around the workers serving (an operator's ask, a
        device kind measured for the first time); else they are kept where they carry as much."""
        if policy:
            self.settings = dataclasses.replace(self.settings, policy=policy)
        self._forced = True
        self._fresh |= fresh

    def capacity_changed(self, *, grew: bool = False) -> None:
        """An agent joined with nothing to run (``grew``: the next plan packs from scratch, so the
        new capacity is put to work), or left: re-plan like after a loss (no period, no dwell, but
        not while agents are still rejoining)."""
        self._capacity_changed = True
        self._fresh |= grew

    def restored(self, now: float) -> None:
        """A restart found a plan of record: it stands as if just made, and the first re-plan of
        this process waits the period and the dwell unless an agent is lost, an operator asks, or
        requests miss their deadlines. (Re-planning at once would move the workers that kept
        serving through the restart.)"""
        self.cadence.last_attempt = self.cadence.last_change = now

    def joined(self, now: float) -> None:
        """An agent joined or came back (or the controller started): a re-plan for workers of
        agents still away waits ``settle_s`` from now, for the others to come back too."""
        self.cadence.last_join = now

    def tick(self, now: float) -> list[tuple[str, object]]:
        if self.settings.policy == "static":
            return []
        if self.settings.live_slowdown_hold_s > 0:
            self.live.update(reported_slowdowns(self._registry), now)
        forecast, family = self.demand.observe(now)
        named = self.demand.named_unplaced() if self.current is not None else []
        # A variant clients name that the plan gives no worker is refused until a plan places it:
        # that is a rise however small its rate (noise rules out nothing here: every request fails).
        rising = self.current is not None and (rose(family, self.demand.carried()) or bool(named))
        fast = now - self.cadence.last_attempt >= self.settings.fast_replan_s
        if self.transition is not None:
            if self.transition.phase is Phase.MAKING_ROOM and self._waits_on_lost(self.transition, now):
                return self._give_up_making_room(now)
            if self.transition.phase is Phase.STARTING and (self._waits_on_lost(self.transition, now)
                                                             or (rising and fast)):
                return self._supersede(forecast, now, rising)
            return self._advance(now)
        forced, self._forced = self._forced, False
        short = "" if forced else self._memory_short(now)
        forced |= bool(short)
        if self._wait.released(self.profiling):
            forced = True  # the re-plan that waited for those profiles, now, whether they came or not
            self._fresh = True
        # Missed deadlines, a rising target, or a fall in demand while accuracy is given up (it
        # may give the accuracy back, and users should not wait out the dwell for it): a drift
        # re-plan that is not held back by the dwell.
        urgent = ("misses" if self.demand.failing() else "fall while scaled" if self.demand.fell_while_scaled()
                  else "growth" if self.current is not None and self.demand.grew(forecast) else "")
        drifted = self.current is None or (self.cadence.drift_allowed(now, bool(urgent))
                                           and self.demand.drifted(forecast))
        stranded = self._capacity_changed or bool(self._stranded(now))
        reason = self.cadence.decide(now, forced=forced, stranded=stranded, rising=rising, drifted=drifted,
                                     failing=bool(urgent))
        if reason in (Reason.NONE, Reason.WAIT):
            return []
        if reason is Reason.LOSS and (late := self._registry.overdue_agents(now)):
            # Other agents are late too: this may be the controller's own partition rather than
            # theirs. Judge the loss once each of them has either beaten again or been lost as
            # well (at most one loss timeout); a re-plan now would move the whole plan of record
            # onto the agents that happen to be declared lost last.
            if frozenset(late) != self._held_for:
                log.info("loss re-plan held: %s overdue as well", ", ".join(late))
            self._held_for = frozenset(late)
            return []
        self._held_for = frozenset()
        self._capacity_changed = False
        if reason is Reason.LOSS:
            stranded, alive = self._stranded(now), self._registry.agent_alive
            away = frozenset(w.plan.agent_id for w in stranded if not alive(w.plan.agent_id, now))
            if not self._registry.placeable(now):
                return []  # nowhere to place anything: wait for an agent
            if away - self._announced:
                log.warning("re-planning without %s: lost", ", ".join(sorted(away)))
            crashed = frozenset(w.plan.worker_id for w in stranded if w.state == WorkerState.CRASHED)
            if crashed - self._announced:
                log.warning("re-planning to replace %s: crashed, not to be restarted", ", ".join(sorted(crashed)))
            self._announced = away | crashed
        self.cadence.last_attempt = now
        why = "initial" if self.current is None else reason.value
        if short and reason is Reason.FORCED:
            why = f"memory: {short}"
        elif reason is Reason.DRIFT and urgent:
            why = f"{why}: {urgent}"
        elif reason is Reason.RISE and named:
            why = f"{why}: named {', '.join(named)}, which no worker serves"
        # Work to re-place, requests missing deadlines or refused: plan now with what is measured.
        may_wait = not (stranded or urgent or named)
        return self._replan(self.demand.target(forecast, rising), now, reason=why, may_wait=may_wait)

    def _memory_short(self, now: float) -> str:
        """The devices ("agent/device") whose workers now need more memory than they may hold,
        counting what workers were seen to hold beyond their variants' needs, when such a figure
        rose past the one the current layout was planned with ("" otherwise): a layout made before
        any worker reported (the start-up placement, or a restart's plan from profiles on record)
        is planned again with it. Judged once per rise, so a layout no plan fits better (or a plan
        that would drop a variant, see ``_replan``) is not re-planned each tick."""
        reg = self._registry
        seen = self.worker_memory.observe(reg.workers.values(), reg.variants, now, reg.agents)
        planned = self._planned_overhead
        if not any(n > planned.get(k, 0) + max(OVERHEAD_RISE_BYTES, 0.05 * planned.get(k, 0)) for k, n in seen.items()):
            return ""
        agents = reg.placeable(now)
        running = [as_desired(w.plan) for w in reg.workers.values()
                   if w.in_plan and w.plan.agent_id in agents and w.state in HOLDING]
        over = memory_overcommitted(running, agents, reg.variants, seen)
        self._planned_overhead = seen  # judged at this figure: a further rise is judged again
        return ", ".join(over)

    def _stranded(self, now: float) -> list:
        """Workers of the plan of record that will not serve: their agent is lost or has not
        registered (again), or they crashed past their agent's restart limit."""
        return [w for w in self._registry.workers.values() if w.in_plan and (w.state == WorkerState.CRASHED or (
                w.state in STRANDABLE and not self._registry.agent_alive(w.plan.agent_id, now)))]

    def _waits_on_lost(self, t: Transition, now: float) -> bool:
        """Will a worker the move starts or keeps not come up (its agent is not alive, or it crashed for good)?"""
        reg = self._registry
        records = [reg.workers[w] for w in (*(n.worker_id for n in t.new), *t.keep, *t.awaiting) if w in reg.workers]
        agents = {w.agent_id for w in t.new} | {r.plan.agent_id for r in records}
        return any(r.state == WorkerState.CRASHED for r in records) or any(not reg.agent_alive(a, now) for a in agents)

    def _supersede(self, forecast: dict[str, float], now: float, rising: bool) -> list[tuple[str, object]]:
        """Demand jumped, or an agent the move waits on was lost, while the last re-plan's workers
        were still starting: plan again from the workers running and starting (those the new
        plan wants are kept and waited for), rather than finish a move to a layout sized for the
        old demand (or one that cannot finish). Nothing that serves is retired until the new
        plan's workers are all ready."""
        old, self.transition = self.transition, None
        if self.history:  # that move is over, replaced by the one planned now (or resumed below)
            self.history[0].finished = True
        lost = self._waits_on_lost(old, now)
        self.cadence.last_attempt = now
        log.info("%s while a re-plan was starting: planning again",
                 "a worker it waits on cannot come up" if lost else "demand jumped")
        ready = self._registry.ready_ids()
        starting = {w for w in (*(n.worker_id for n in old.new), *old.awaiting) if w not in ready}
        self._applied = False
        out = self._replan(self.demand.target(forecast, rising), now, starting=starting, reason="superseded")
        if self.transition is None and lost and not self._applied:
            out += self._abandon(old, ready)  # no plan can be made now; this move cannot finish
        elif self.transition is None and not lost:
            # nothing to move to after all: carry on with the old move
            self.transition = old
            if self.history:
                self.history[0].finished = False
            out += self._advance(now)
        return out

    def _abandon(self, t: Transition, ready: set[str]) -> list[tuple[str, object]]:
        """Give up a move at once: what it started (and had not come up) is stopped; what serves stays."""
        reg = self._registry
        waited = {w.agent_id for w in t.new} | {reg.workers[w].plan.agent_id for w in t.awaiting if w in reg.workers}
        if any(a in reg.agents for a in waited):  # lost, not gone: worth a warning
            log.warning("abandoning a re-plan that waits on a lost agent")
        else:  # the agents it waited on left cleanly (a shutdown)
            log.info("abandoning a re-plan whose agents left")
        return self._stop(sorted({*(w.worker_id for w in t.new), *t.awaiting} - ready))

    def _give_up_making_room(self, now: float) -> list[tuple[str, object]]:
        """A move making room waits on a lost agent: it ends here, and the next tick plans again from
        what serves (the workers it stopped first may be gone; those only drained serve again)."""
        t, self.transition = self.transition, None
        assert t is not None
        if self.history:
            self.history[0].finished = True
        self._forced = True
        self.demand.outcomes_from = max(self.demand.outcomes_from, now + OUTCOME_REPORT_S)  # as for any move's end
        if not t.room_stopped:  # only drained so far: they serve on until the next plan
            for worker_id in t.room_serving:
                if (record := self._registry.workers.get(worker_id)) is not None and record.state == WorkerState.DRAINING:
                    self._registry.retire(worker_id, WorkerState.READY)
        return self._abandon(t, self._registry.ready_ids())

    def _stop(self, worker_ids: Iterable[str]) -> list[tuple[str, object]]:
        """Retire each worker as stopping, forget its placement, and tell its agent to stop it."""
        out: list[tuple[str, object]] = []
        for worker_id in worker_ids:
            record = self._registry.workers.get(worker_id)
            if record is None:
                continue
            self._registry.retire(worker_id, WorkerState.STOPPING)
            self._store.delete_placement(worker_id)
            out.append((record.plan.agent_id, StopWorker(worker_id=worker_id, drain_s=self.settings.drain_s)))
        return out

    def _replan(self, target: dict[str, float], now: float, starting: set[str] | None = None,
                reason: str = "drift", may_wait: bool = False) -> list[tuple[str, object]]:
        target = at_full_accuracy(self._registry.variants, target)
        reg = self._registry
        agents = reg.placeable(now)  # never a lost agent, nor one whose workers just fell silent
        samples = self._store.profiles()
        awaited = awaited_kinds(agents, reg.variants, samples, self.profiling) if may_wait else frozenset()
        # A device is being measured that some variant has no profile for (a GPU profiled after its
        # host's CPU, say): a plan now would move work off it, only to move it back once its profile
        # is in. The current placement serves meanwhile; the re-plan is made once those devices are
        # no longer being profiled (see tick), or after the longest wait.
        waited, since = self._wait.waiting_for, self._wait.since
        if self._wait.hold(awaited, now):
            if awaited != waited:
                log.info("re-plan (%s) waits for the profiles of %s", reason, ", ".join(sorted(awaited)))
            return []
        if awaited:
            log.warning("re-planning without the profiles of %s: not in after %.0f s", ", ".join(sorted(awaited)),
                        now - (since if since is not None else now))
        slowdown = {}
        if self.live:  # only when workers reported and the feed is on: the table costs a pass over the profiles
            slowdown = self.live.factors(profile_table(samples), reg.variants,
                                         {d.kind for devices in agents.values() for d in devices})
        current = [w.plan for w in reg.workers.values()
                   if w.in_plan and w.plan.agent_id in agents and w.state in HOLDING]
        # Unless a fresh packing is asked for (see ``force``), the gpu-lets a plan made (not the
        # first placement, a guess made before any profile) stay when they carry the target as well
        # as a fresh packing would.
        keepable = () if self._fresh else [as_desired(w) for w in current if w.batches]
        overhead = self.worker_memory.observe(reg.workers.values(), reg.variants, now, reg.agents)
        self._planned_overhead = overhead
        new = layout(agents, reg.variants, samples, self._store.colocations(), target,
                     policy=self.settings.policy, floor_rps=self.settings.floor_rps, slowdown=slowdown,
                     current=keepable, worker_overhead=overhead)
        if new is None:
            self.cadence.last_attempt = float("-inf")  # try again next tick: profiles are not in yet
            return []  # keep serving on the current placement
        self._fresh = False
        # What this attempt knew of named demand, applied or not: a named variant it could not
        # place (or a plan it would not apply) is not retried each second for that name alone.
        named = self.demand.named_rates()
        self.demand.planning(new.planned_for, named)
        self.current = new
        desired = new.desired
        beta = self.demand.judge_from(now)
        scaled = None
        if new.plan.unserved and self.settings.accuracy_scaling:
            scaled = scaled_layout(agents, reg.variants, samples, self._store.colocations(),
                                   self.demand.recent_peak(), current=self.scaled.plan if self.scaled else None,
                                   time_limit_s=self.settings.scaling_time_limit_s, beta=beta,
                                   slowdown=slowdown, named=named, worker_overhead=overhead)
            if over := memory_overcommitted(scaled.desired, agents, reg.variants, overhead):
                # A safety net: the MILP and the guests joined after it keep within each device's
                # memory bound; a layout that would still not load where it puts it is not applied.
                log.warning("accuracy scaling's layout needs more memory than %s hold(s); not applied, the "
                            "full-accuracy plan is taken as without accuracy scaling", ", ".join(over))
                scaled = None
        if scaled is not None:
            # The designed answer to overload, taken on a routine re-plan: INFO, not a warning.
            log.info("over capacity at full accuracy (demand req/s %s, unserved %s): accuracy scaling to %.3f with "
                        "headroom %.2f (from %.2f), shed %s, solved in %.2f s (%s); live slowdown %s",
                        _rounded(scaled.demand), _rounded(new.plan.unserved),
                        scaled.plan.effective_accuracy, scaled.plan.beta, beta, dict(scaled.plan.shed),
                        scaled.plan.solve_s, scaled.plan.status, _rounded(slowdown))
            desired = scaled.desired
            reg.family_fractions, reg.shed = scaled.fractions(), scaled.shed_share()
        else:
            if new.plan.unserved:
                log.warning("plan leaves demand unserved (req/s): %s", dict(new.plan.unserved))
                # A plan that leaves a variant with demand and a worker today with no gpu-let is not applied.
                if dropped := new.drops({v for w in reg.workers.values() if w.state == WorkerState.READY
                                         for v in w.plan.variants}):
                    short = reason.removeprefix("memory: ") if reason.startswith("memory: ") else ""
                    log.warning("not applying a plan that would leave %s without a worker; keeping the current "
                                "layout%s", ", ".join(dropped),
                                f", though its workers need more memory than {short} may hold" if short else "")
                    return []
            if self.scaled is not None and not new.plan.unserved:
                log.info("demand fits at full accuracy again (sized on req/s %s; the scaled plan carried %s)",
                         _rounded(new.planned_for), _rounded(self.demand.carried()))
            reg.family_fractions, reg.shed = {}, {}
        self.demand.applied(scaled, frozenset(v for d in desired for v in d.variants))
        cores = {(a, d.device_id): d.cores for a, devices in agents.items() for d in devices}
        self.generation += 1
        self._store.save_generation(self.generation)
        # Workers a superseded move was still starting are waited for (if kept) or stopped at once
        # (if not). Any other worker is treated as serving, reported ready or not: after a
        # controller restart, workers it has not heard from yet may well be serving.
        settled = {w.worker_id for w in current if w.worker_id not in (starting or set())}
        t = begin(current, desired, cores, generation=self.generation, now=now, ready=settled,
                  start_timeout_s=self.settings.start_timeout_s, drain_s=self.settings.drain_s)
        reg.route_rates = t.routing(reg.route_rates) if t is not None else plan_rates(current, desired)
        self._applied = True
        for w in self._stranded(now):  # the new layout replaces them: they leave the plan of record
            # A lost agent's may come back (listed as lost meanwhile); a crashed one's process is gone.
            (reg.remove_worker if w.state == WorkerState.CRASHED else reg.drop_from_plan)(w.plan.worker_id)
            self._store.delete_placement(w.plan.worker_id)
        if t is None:
            if starting is None and current:  # (a superseded move carries on: not a re-plan of its own)
                # The workers serving carry the new plan: only the routing split follows it.
                log.info("re-planning (%s): all %d workers kept", reason, len(current))
                self._record(now, reason, kept=len(current), started=0, retired=0, finished=True)
            return []
        self.cadence.last_change = now
        self.replans += 1
        log.info("re-planning (%s): %d workers kept, %d started, %d retired", reason, len(t.keep), len(t.new),
                 len(t.retire))
        self._record(now, reason, kept=len(t.keep), started=len(t.new), retired=len(t.retire))
        departing = [w.plan for w in reg.workers.values() if w.state in LEAVING and w.plan.agent_id in agents]
        first, waited = room_first(t, current, agents, reg.variants, overhead, departing)
        t.make_room(first, waited)
        if t.held:
            log.warning("memory of %s cannot hold the leaving and the new workers together: starting %s once %s "
                        "have exited", ", ".join(sorted({f"{w.agent_id}/{w.partition.device_id}"
                                                         for w in (*first, *waited)})),
                        ", ".join(t.held), ", ".join((*t.room_first, *t.departing)))
        self.transition = t
        for plan in t.new:
            reg.plan_worker(plan)
            if plan.worker_id not in t.held:  # a held one is of record once started: a restart starts no overlap
                self._store.save_placement(plan)
        return self._advance(now)

    def _record(self, now: float, reason: str, *, kept: int, started: int, retired: int, finished: bool = False) -> None:
        scaled = self.scaled.plan if self.scaled is not None else None
        self.history.appendleft(ReplanEntry(
            at=now, reason=reason, policy=self.settings.policy, kept=kept, started=started, retired=retired,
            scaled=scaled is not None, effective_accuracy=scaled.effective_accuracy if scaled is not None else 0.0,
            shed=self.scaled.shed_rps() if self.scaled is not None else {}, finished=finished))

    def _advance(self, now: float) -> list[tuple[str, object]]:
        t = self.transition
        assert t is not None
        reg = self._registry
        present = {w for w in (*t.room_first, *t.departing)
                   if (r := reg.workers.get(w)) is not None and r.state != WorkerState.CRASHED}
        actions = t.step(reg.ready_ids(), now, present)
        self._registry.route_rates = t.routing(self._registry.route_rates)
        out: list[tuple[str, object]] = []
        for plan in actions.start:
            if plan.worker_id in t.held:
                self._store.save_placement(plan)
            out.append((plan.agent_id, self._start_command(plan)))
        for worker_id in actions.drain:
            self._registry.retire(worker_id, WorkerState.DRAINING)
        out += self._stop(actions.stop)
        if t.finished:
            log.info("re-plan %s", t.phase.value)
            if t.phase is Phase.ABANDONED and t.room_first:
                self._forced = True  # workers it stopped to make room are gone: plan again from what serves
            # A layout is judged on what it serves once in place: misses while workers were
            # starting and draining are the move's, not a sign that the layout is short, and
            # counting them would re-plan again (and raise the headroom) for a move that is over.
            # Outcomes come in the gateways' one-second reports: the move's last arrive within one.
            self.demand.outcomes_from = max(self.demand.outcomes_from, now + OUTCOME_REPORT_S)
            if self.history:
                self.history[0].finished = True
            self.transition = None
        return out

    def worker_stopped(self, worker_id: str) -> None:
        """A retired worker has exited: it leaves the registry (and the routing table) now."""
        record = self._registry.workers.get(worker_id)
        if record is not None and record.state in (WorkerState.STOPPING, WorkerState.DRAINING):
            self._registry.remove_worker(worker_id)


def _rounded(values) -> dict[str, float]:
    return {(f"{k[0]}@{k[1]}" if isinstance(k, tuple) else k): round(x, 2) for k, x in sorted(values.items())}
