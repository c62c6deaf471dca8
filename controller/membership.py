"""Agents joining, coming back, leaving and being forgotten: what each changes in the plan of
record and which commands it needs. Pure and synchronous: the controller actor sends what these
return.

Rules: a registration reports what the agent runs and never widens the plan (variants a plan
dropped on purpose stay dropped; only an empty plan of record gets an initial placement); a
repeat of an alive agent's registration changes nothing; a worker running as planned gets no
command (its spec changes only with the plan); a worker the plan does not know is stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controller.layout_manager import LayoutManager
from controller.placement import PlannedWorker, extend_placement, initial_placement, workers_memory_holds
from controller.planning.fleet import overhead_of
from controller.profiling import unprofiled
from controller.registry import LEAVING, Joined, Registry
from controller.repository import reservation
from controller.store import StateStore
from protocol.types import DeviceInfo, RunningWorker, WorkerState
from protocol.message import RegisterAgent, StartWorker, StopWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Registration:
    joined: Joined
    commands: tuple[StartWorker | StopWorker, ...] = ()


class Membership:
    """Owned by the controller actor; not thread-safe."""

    def __init__(self, registry: Registry, store: StateStore, layout: LayoutManager,
                 start_command: Callable[[PlannedWorker], StartWorker], *, cores_per_partition: int = 1,
                 max_partitions_per_device: int = 8, drain_s: float = 2.0, forget_after_s: float = 300.0,
                 profilers: int = 0) -> None:
        self._registry = registry
        self._store = store
        self._layout = layout
        self._start_command = start_command
        self._cores_per_partition = cores_per_partition
        self._max_partitions = max_partitions_per_device
        self._drain_s = drain_s
        self.forget_after_s = forget_after_s
        self._profilers = profilers  # processes a device's profiling run keeps beside its workers

    def register(self, agent_id: str, msg: RegisterAgent, now: float) -> Registration:
        reg = self._registry
        # An agent without an instance id (an older one) is told apart by its process id.
        instance = msg.instance or f"pid:{msg.pid}"
        joined = reg.agent_registered(agent_id, msg.hostname, msg.devices, now, instance)
        if joined is Joined.REPEAT:
            return Registration(joined)
        log.info("agent %s registered (%s), running %d workers", agent_id, joined.value, len(msg.workers))
        self._layout.joined(now)
        commands: list[StartWorker | StopWorker] = []
        running = {w.worker_id: w for w in msg.workers}
        for worker_id in sorted(running):
            record = reg.workers.get(worker_id)
            if record is not None and record.in_plan and record.plan.agent_id == agent_id:
                if record.state == WorkerState.STOPPING:  # asked before; the request may have been lost in a cut
                    commands.append(StopWorker(worker_id=worker_id, drain_s=self._drain_s))
                continue
            log.warning("agent %s runs %s, which the plan does not know: stopping it", agent_id, worker_id)
            commands.append(StopWorker(worker_id=worker_id, drain_s=self._drain_s))
            if record is not None and record.plan.agent_id == agent_id:
                reg.retire(worker_id, WorkerState.STOPPING)
        for record in reg.workers_of(agent_id):
            if record.plan.worker_id in running:
                continue
            if not record.in_plan:
                # Replaced while its agent was away, and not running now it is back: gone, not lost.
                reg.remove_worker(record.plan.worker_id)
            elif record.state in LEAVING:
                # Asked to drain or stop, and not running now: it exited while its agent was away
                # (a restarted agent has no such worker to say so of). A move waiting for it goes on.
                self._layout.worker_stopped(record.plan.worker_id)
        planned = [w.plan for w in reg.planned_workers_of(agent_id) if w.state not in LEAVING]
        if not planned:
            if self._layout.settings.policy == "static" or not any(w.in_plan for w in reg.workers.values()):
                planned = self._initial(agent_id)
            elif joined is Joined.NEW:
                self._layout.capacity_changed(grew=True)  # a re-plan puts it to work
            # An agent back (or restarted) after its workers were replaced is spare capacity until
            # demand asks for more: moving work back to it would only churn the layout.
        for plan in planned:
            report = running.get(plan.worker_id)
            if report is not None and sorted(report.variants) == sorted(plan.variants) and self._current(report):
                reg.worker_started(plan.worker_id, report.pid, now)  # running as planned: left alone
            else:
                if report is not None and sorted(report.variants) == sorted(plan.variants):
                    log.info("agent %s runs %s on an artifact, backend or precision the repository has replaced: "
                             "restarting it", agent_id, plan.worker_id)
                commands.append(self._start_command(plan))
        return Registration(joined, tuple(commands))

    def _current(self, report: RunningWorker) -> bool:
        """Does a running worker serve the repository's artifact of each of its variants, with its
        backend and precision? (An agent that does not say what it runs is taken at its word.)"""
        variants = self._registry.variants
        artifacts = not report.artifacts or all(
            name not in variants or variants[name].sha256 == sha for name, sha in zip(report.variants, report.artifacts))
        return artifacts and (not report.served_as or all(
            name not in variants or variants[name].spec().served_as == served
            for name, served in zip(report.variants, report.served_as)))

    def _initial(self, agent_id: str) -> list[PlannedWorker]:
        reg = self._registry
        costs = {name: v.cost_ms for name, v in reg.variants.items()}
        devices = reg.agents[agent_id].devices
        caps: dict[str, int] = {}
        for device in devices:
            held, beside = self._memory_holds(agent_id, device)
            if held is None:
                continue
            caps[device.device_id] = held
            if device.kind == "cpu" and held < min(len(costs), device.cores // self._cores_per_partition):
                log.info("memory of %s/%s (%d MiB) holds %d start-up worker(s)%s", agent_id, device.device_id,
                         device.memory_bytes >> 20, held, f" beside {beside >> 20} MiB of profiling" if beside else "")
        planned = initial_placement(agent_id, devices, costs, cores_per_partition=self._cores_per_partition,
                                    max_partitions_per_device=self._max_partitions, max_workers=caps)
        for plan in planned:
            self._store.save_placement(plan)
            reg.plan_worker(plan)
        return planned

    def _memory_holds(self, agent_id: str, device: DeviceInfo) -> tuple[int | None, int]:
        """Start-up workers ``device``'s memory holds beside the profiling run it is about to get
        (each of its processes loads the variants it measures), and the bytes counted for that run."""
        variants = self._registry.variants
        overhead = overhead_of(self._layout.worker_memory.known(), f"{agent_id}/{device.device_id}", device.kind)
        measured = [v.name for v in unprofiled(variants.values(), device, self._store.profiles())] \
            if self._profilers else []
        beside = self._profilers * (overhead + reservation(variants, measured)) if measured else 0
        return workers_memory_holds(device, needs=reservation(variants, variants), overhead=overhead,
                                    beside=beside), beside

    def left(self, agent_id: str) -> list[str]:
        """A clean stop (its workers stopped with it): forget the agent now and re-plan without it."""
        gone = self._registry.agent_left(agent_id)
        for worker_id in gone:
            self._store.delete_placement(worker_id)
        log.info("agent %s left; %d workers with it", agent_id, len(gone))
        self._layout.capacity_changed()
        return gone

    def forget_lost(self, now: float) -> list[str]:
        """Agents lost for ``forget_after_s`` leave the registry, and their workers the plan."""
        agents, workers = self._registry.forget_lost(now, self.forget_after_s)
        for worker_id in workers:
            self._store.delete_placement(worker_id)
        if agents:
            log.warning("forgot agents lost for %.0f s: %s", self.forget_after_s, ", ".join(agents))
            self._layout.capacity_changed()
        return agents

    def place_added_variants(self, names: Mapping[str, object]) -> None:
        """Variants added to the repository since the plan of record was made join it once; those
        a plan left out on purpose are not added back."""
        reg = self._registry
        known = self._store.known_variants()
        added = [n for n in sorted(names) if known is not None and n not in known]
        planned = [w.plan for w in reg.workers.values() if w.in_plan]
        if added and planned:
            costs = {name: v.cost_ms for name, v in reg.variants.items()}
            for plan in extend_placement(planned, costs, added):
                if reg.workers[plan.worker_id].plan != plan:
                    self._store.save_placement(plan)
                    reg.plan_worker(plan)
        self._store.save_known_variants(list(names))
