"""The agent's record of one worker process it runs, and the local events of its life (timer,
exit), which the agent actor receives in its mailbox like the controller's messages."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from mesh.keys import ClientKeys
from mesh.supervisor import RestartIntensity
from protocol.message import StartWorker


class WorkerExit(enum.IntEnum):
    """How a worker process ends on its own (``sys.exit``); read by the agent that runs it."""

    OK = 0
    BAD_SPEC = 2  # the start command or the environment it came in is unreadable
    NOTHING_LOADED = 3  # not one of its variants could be loaded
    FETCH_FAILED = 4  # its artifacts could not be fetched from the controller (a cut, a restart)

    @classmethod
    def final(cls, code: int) -> bool:
        """Whether starting the same command again would only fail the same way: the artifacts
        are the same on a restart, so a load that failed fails again. The controller hears of the
        load failure and re-plans without the variant; the agent does not restart such a worker
        meanwhile. (A fetch cut short may succeed on a restart; an unreadable spec is the agent's
        doing, and stays under the restart limit, which paces the controller's re-placing.)"""
        return code == cls.NOTHING_LOADED


@dataclass(frozen=True, slots=True)
class Tick:
    """Local timer message."""


@dataclass(frozen=True, slots=True)
class WorkerExited:
    """Local event: a worker process ended."""

    worker_id: str
    generation: int
    exit_code: int


@dataclass(frozen=True, slots=True)
class WorkerGone:
    """Local event: a worker asked to stop has exited."""

    worker_id: str
    generation: int
    exit_code: int


@dataclass(slots=True)
class ManagedWorker:
    cmd: StartWorker
    intensity: RestartIntensity
    proc: asyncio.subprocess.Process | None = None
    generation: int = 0
    stopping: bool = False
    restarts: int = 0
    waiter: asyncio.Task | None = field(default=None, repr=False)
    # The process's own key pair on a mesh with keys, made fresh at each launch.
    credential: ClientKeys | None = field(default=None, repr=False)

    @property
    def public_key(self) -> str:
        return self.credential.public_key.decode() if self.credential is not None else ""
