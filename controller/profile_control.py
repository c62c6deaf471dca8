"""The controller's side of profiling: which agent measures which device when, and what a run's
reports change (the profile store, and the re-plans that wait on them or follow them).

Synchronous, like the control plane it serves: commands leave through ``send``. Imports no socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from controller.layout_manager import LayoutManager
from controller.profiling import ProfilingRuns, measured_as, run_epoch
from controller.registry import Registry
from controller.repository import Variant
from controller.store import StateStore
from protocol.message import ProfileDevice, ProfileProgress
from protocol.types import ColocationSample, ProfileSample

log = logging.getLogger(__name__)
_LONGEST_MS = 3_600_000.0  # an hour a batch: past this a measurement is not one


def _latency(ms: float) -> bool:
    return 0.0 < ms <= _LONGEST_MS  # False for NaN and infinities too


def keep_profiles_of_served(store: StateStore, variants: Mapping[str, Variant], epoch: int, *,
                            auto_profile: bool) -> dict[str, int]:
    """At a controller's start: drop the stored profiles of each variant that is not what was
    profiled (a file replaced under the same name, or moved to another backend or precision: the
    planner would otherwise size partitions on another model's latencies), so that it is measured
    anew. Returns, per variant, the first epoch whose profiling runs measure what is served now."""
    dropped, measured_since = store.keep_profiles_of({name: measured_as(v) for name, v in variants.items()}, epoch)
    for name in dropped:
        log.warning("variant %s is not what was profiled (its artifact, backend or precision changed): its "
                    "profiles are dropped and %s", name, "measured again" if auto_profile else
                    "wait for `letmesh profile --rerun` (auto_profile is off; re-plans wait for them too)")
    return measured_since


class ProfileControl:
    """Hands out profiling runs (one device at a time per agent) and takes in their reports."""

    def __init__(self, runs: ProfilingRuns, registry: Registry, store: StateStore, layout: LayoutManager,
                 send: Callable[[bytes, object], None], wall_clock: Callable[[], float], *,
                 colocation: bool, repeats: int, measured_since: Mapping[str, int] | None = None) -> None:
        self.runs = runs
        self._registry = registry
        self._store = store
        self._layout = layout
        self._send_to = send
        self._time = wall_clock
        self._colocation = colocation
        self._repeats = repeats
        # Variant -> the first controller epoch whose profiling runs measure what is served now (a
        # run begun before its artifact, backend or precision changed measured the old one).
        self._since = dict(measured_since or {})
        self._plan_at_samples: object = None  # the re-plan on record when the last samples came in

    def ask(self, agent_id: str, *, everything: bool = False) -> None:
        """Queue the agent's devices that lack profiles (all of them if ``everything``); start the first."""
        agent = self._registry.agents[agent_id]
        self._send(agent_id, self.runs.commands(
            agent_id, agent.devices, list(self._registry.variants.values()), self._store.profiles(),
            everything=everything, colocation=self._colocation, repeats=self._repeats))

    def ask_next(self, agent_id: str) -> None:
        """Start the agent's next queued device, if it runs none."""
        if agent_id in self._registry.agents:
            self._send(agent_id, self.runs.next_commands(
                agent_id, self._registry.agents[agent_id].devices, list(self._registry.variants.values()),
                self._store.profiles(), colocation=self._colocation, repeats=self._repeats))

    def resend(self, agent_id: str) -> None:
        """The same agent process registered again: a run's last report may have been lost on the
        way (its run ended while it was cut off). Asked again, the agent ignores a request it is
        still running and runs one it finished again, so the run ends here either way."""
        self._send(agent_id, self.runs.in_flight(agent_id))

    def retry(self, agent_id: str) -> None:
        """Ask again for what is unmeasured, failed devices included (what made them fail was set aside)."""
        self.runs.retry_failed(agent_id)
        self.ask(agent_id)

    def forget(self, agent_id: str) -> None:
        """A new agent process (or one forgotten): it has no run of ours in progress."""
        self.runs.forget_agent(agent_id)
        self._changed()

    def report(self, agent_id: str, progress: ProfileProgress, alive: bool) -> None:
        command = self.runs.sent.get((agent_id, progress.request_id))
        # A run that failed on a variant set aside while it ran (a worker could not load it either)
        # is run again without it: the ask that set it aside came while this run held the agent.
        again = bool(progress.done and progress.error and command is not None
                     and any(v.name in self._registry.unavailable for v in command.variants))
        samples, colocations = self._sound(agent_id, progress)
        if samples or colocations:
            self._store.save_profiles(samples, colocations, self._time())
            self.runs.measured(samples)
            self._plan_at_samples = self._last_plan()
        self.runs.progress(agent_id, progress.request_id, progress.completed, progress.total, progress.done,
                           failed=bool(progress.error), again=again)
        if progress.error:
            log.warning("profiling on %s failed: %s", agent_id, progress.error)
        elif progress.done:
            log.info("profiling on %s finished (%d measurements)", agent_id, progress.total)
        if not progress.done:
            return
        self._changed()
        if self.runs.take_grew() and self._last_plan() is self._plan_at_samples:
            # A variant can now run on a device kind it had no profile for (a GPU profiled after
            # the CPU, say): plan again rather than wait for demand to move. (Not when a plan was
            # made since the last samples came in: it had them all, and one more would only move
            # workers about.)
            self._layout.force()
        if alive:  # its next device, if one waits (else on its return)
            self.ask_next(agent_id)

    def _last_plan(self) -> object:
        return self._layout.history[0] if self._layout.history else None  # (the newest first)

    def _sound(self, agent_id: str, progress: ProfileProgress) -> tuple[list[ProfileSample], list[ColocationSample]]:
        """The measurements the planner can use: of known variants on one of the agent's device
        kinds, latencies finite and positive. One infinite latency kept would make every later
        plan fail; a made-up variant name, a row for each forever."""
        agent = self._registry.agents.get(agent_id)
        kinds = {d.kind for d in agent.devices} if agent is not None else set()
        known = self._registry.variants
        if self._since:
            began = run_epoch(progress.request_id)
            known = {name: v for name, v in known.items() if self._since.get(name, 0) <= began}
        samples = [s for s in progress.samples
                   if s.variant in known and s.device_kind in kinds and s.partition >= 1 and s.runs >= 1
                   and 1 <= s.batch <= known[s.variant].max_batch and _latency(s.p50_ms) and _latency(s.p99_ms)
                   and s.p50_ms <= s.p99_ms]
        colocations = [c for c in progress.colocations
                       if c.variant in known and c.other in known and c.device_kind in kinds
                       and min(c.partition, c.other_partition, c.batch, c.other_batch) >= 1
                       and _latency(c.solo_p50_ms) and _latency(c.shared_p50_ms)]
        if dropped := len(progress.samples) - len(samples) + len(progress.colocations) - len(colocations):
            log.warning("profiling on %s: %d measurement(s) refused (unknown variant or device kind, a "
                        "latency that is not a positive finite number, or a variant changed since the run "
                        "began)", agent_id, dropped)
        return samples, colocations

    def _send(self, agent_id: str, commands: list[ProfileDevice]) -> None:
        for cmd in commands:
            log.info("asking %s to profile %d variants on %s", agent_id, len(cmd.variants), cmd.device_id)
            self._send_to(f"agent:{agent_id}".encode(), cmd)
        self._changed()

    def _changed(self) -> None:
        """Tell the layout which devices are being measured, so a routine re-plan waits for them."""
        self._layout.profiling = self.runs.pending_kinds({a: r.devices for a, r in self._registry.agents.items()})
