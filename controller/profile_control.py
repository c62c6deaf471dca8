"""The controller's side of profiling: which agent measures which device when, and what a run's
reports change (the profile store, and the re-plans that wait on them or follow them).

Synchronous, like the control plane it serves: commands leave through ``send``. Imports no socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.layout_manager import LayoutManager
from controller.profiling import ProfilingRuns
from controller.registry import Registry
from controller.store import StateStore
from protocol.message import ProfileDevice, ProfileProgress

log = logging.getLogger(__name__)


class ProfileControl:
    """Hands out profiling runs (one device at a time per agent) and takes in their reports."""

    def __init__(self, runs: ProfilingRuns, registry: Registry, store: StateStore, layout: LayoutManager,
                 send: Callable[[bytes, object], None], wall_clock: Callable[[], float], *,
                 colocation: bool, repeats: int) -> None:
        self.runs = runs
        self._registry = registry
        self._store = store
        self._layout = layout
        self._send_to = send
        self._time = wall_clock
        self._colocation = colocation
        self._repeats = repeats

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
        if progress.samples or progress.colocations:
            self._store.save_profiles(progress.samples, progress.colocations, self._time())
            self.runs.measured(progress.samples)
        self.runs.progress(agent_id, progress.request_id, progress.completed, progress.total, progress.done,
                           failed=bool(progress.error))
        if progress.error:
            log.warning("profiling on %s failed: %s", agent_id, progress.error)
        elif progress.done:
            log.info("profiling on %s finished (%d measurements)", agent_id, progress.total)
        if not progress.done:
            return
        self._changed()
        if self.runs.take_grew():
            # A variant can now run on a device kind it had no profile for (a GPU profiled after
            # the CPU, say): plan again rather than wait for demand to move.
            self._layout.force()
        if alive:  # its next device, if one waits (else on its return)
            self.ask_next(agent_id)

    def _send(self, agent_id: str, commands: list[ProfileDevice]) -> None:
        for cmd in commands:
            log.info("asking %s to profile %d variants on %s", agent_id, len(cmd.variants), cmd.device_id)
            self._send_to(f"agent:{agent_id}".encode(), cmd)
        self._changed()

    def _changed(self) -> None:
        """Tell the layout which devices are being measured, so a routine re-plan waits for them."""
        self._layout.profiling = self.runs.pending_kinds({a: r.devices for a, r in self._registry.agents.items()})
