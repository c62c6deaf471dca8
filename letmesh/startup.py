"""What ``letmesh up`` says while a mesh starts: one line per milestone, from snapshots it is fed.

Pure and synchronous: the launcher polls the controller and the gateway and hands each snapshot
to :class:`StartupProgress`, which returns the lines that are new. Imports no sockets.
"""

from __future__ import annotations

from protocol.message import StatusReply
from protocol.types import DeviceInfo, WorkerState


def device_text(d: DeviceInfo, *, memory: bool = False) -> str:
    """A device as status lines show it: its cores, or a GPU's multiprocessors and whether MPS splits it."""
    if d.kind == "cuda":
        size = f"{d.name}, {d.sm_count} SMs, " + ("MPS" if d.mps else "no MPS daemon: one partition")
    else:
        size = f"{d.cores} core{'s' if d.cores != 1 else ''}"
    return f"{d.device_id} ({d.kind}, {size}" + (f", {d.memory_bytes / 2**30:.1f} GiB)" if memory else ")")


class StartupProgress:
    """Milestones of a starting mesh, each said once, in the order they happen.

    controller up -> agent registered (per agent) -> profiling (throttled to one line per
    ``profiling_every_s``) -> profiles measured -> workers ready n/m (on each change) -> gateway
    ready. Not thread-safe; one caller feeds it.
    """

    def __init__(self, controller: str, http_url: str, *, profiling_every_s: float = 5.0) -> None:
        self.controller = controller
        self.http_url = http_url
        self.profiling_every_s = profiling_every_s
        self._controller_seen = False
        self._agents: set[str] = set()
        self._profiling: tuple[str, ...] = ()
        self._profiling_said_at = float("-inf")
        self._workers: tuple[int, int] = (0, 0)
        self._gateway_ready = False

    def see(self, now: float, *, status: StatusReply | None = None, profiling: tuple[str, ...] | None = None,
            gateway_ready: bool = False) -> list[str]:
        """The lines this snapshot adds. ``status`` None: the controller did not answer;
        ``profiling`` None: not asked; else the profiling runs in progress ("agent: 12/40")."""
        lines: list[str] = []
        if status is not None:
            lines += self._controller(status)
        if profiling is not None:
            lines += self._profiles(now, profiling)
        if status is not None:
            lines += self._workers_ready(status)
        if gateway_ready and not self._gateway_ready:
            self._gateway_ready = True
            lines.append(f"gateway ready at {self.http_url}")
        return lines

    def _controller(self, status: StatusReply) -> list[str]:
        lines = []
        if not self._controller_seen:
            self._controller_seen = True
            lines.append(f"controller up at {self.controller}")
        for agent in status.agents:
            if agent.alive and agent.agent_id not in self._agents:
                self._agents.add(agent.agent_id)
                devices = ", ".join(device_text(d) for d in agent.devices) or "no devices"
                lines.append(f"agent {agent.agent_id} registered: {devices}")
        return lines

    def _profiles(self, now: float, running: tuple[str, ...]) -> list[str]:
        if not running:
            if self._profiling:
                self._profiling = ()
                return ["profiles measured"]
            return []
        first = not self._profiling
        self._profiling = running
        if first or now - self._profiling_said_at >= self.profiling_every_s:
            self._profiling_said_at = now
            return ["profiling " + ", ".join(running)]
        return []

    def _workers_ready(self, status: StatusReply) -> list[str]:
        live = [w for w in status.workers if w.state not in (WorkerState.STOPPING, WorkerState.STOPPED)]
        counts = (sum(w.state == WorkerState.READY for w in live), len(live))
        if counts == self._workers or counts[1] == 0:
            return []
        self._workers = counts
        return [f"workers ready: {counts[0]}/{counts[1]}"]
