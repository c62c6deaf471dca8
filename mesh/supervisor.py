"""One-for-one supervision of actors, with a restart intensity limit and escalation.

:class:`RestartIntensity` is a pure core (also used for worker process restarts); the
:class:`Supervisor` is its asyncio shell. Must not import ZeroMQ, protocol or role packages.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from mesh.actor import Actor, ActorError
from mesh.clock import Clock, SystemClock

log = logging.getLogger(__name__)


class SupervisorEscalated(ActorError):
    """Children crashed more often than the restart intensity allows; all were stopped."""


class RestartIntensity:
    """At most ``max_restarts`` restarts within any ``within_s`` seconds.

    Pure and synchronous; ``now`` comes from the caller's clock and must not go back.
    A restart at ``t`` counts against every later ``now`` with ``now - t < within_s``.
    A refused restart is not recorded. Not thread-safe.
    """

    def __init__(self, max_restarts: int, within_s: float) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if not within_s > 0:
            raise ValueError(f"within_s must be > 0, got {within_s}")
        self.max_restarts = max_restarts
        self.within_s = within_s
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Record a restart at ``now`` if allowed; True when allowed, False to escalate."""
        self._expire(now)
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True

    def recent(self, now: float) -> int:
        """Restarts counted against a restart at ``now``."""
        self._expire(now)
        return len(self._times)

    def reset(self) -> None:
        self._times.clear()

    def _expire(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.within_s:
            self._times.popleft()


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot: restarts per child name (in start order) and whether it escalated."""

    restarts: tuple[tuple[str, int], ...]
    escalated: bool


@dataclass(slots=True)
class _Child:
    name: str
    factory: Callable[[], Actor]
    actor: Actor | None = None
    restarts: int = 0


class Supervisor:
    """Starts child actors from factories and restarts one that crashes (one-for-one).

    Concurrency contract: use from one event loop. Children start in the order they were
    added and stop in reverse. A crashed child is replaced by a fresh instance from its
    factory; :meth:`child` always returns the current instance. When restarts exceed the
    intensity (a failing restart counts too), the supervisor stops every child, records
    :class:`SupervisorEscalated` in :attr:`escalated`, calls ``on_escalate`` and makes
    :meth:`wait` raise. Restart tasks are owned by the supervisor and awaited at stop.

    Giving up is never silent: whoever starts a supervisor awaits :meth:`wait` (or sets
    ``on_escalate``). A role process run by ``mesh.lifecycle.run_actor`` then exits non-zero; the
    gateway's controller link turns the gateway's readiness and liveness to 503 (``gateway.health``).
    """

    def __init__(
        self,
        *,
        name: str = "supervisor",
        max_restarts: int = 3,
        within_s: float = 5.0,
        clock: Clock | None = None,
        on_escalate: Callable[[SupervisorEscalated], None] | None = None,
    ) -> None:
        self.name = name
        self.intensity = RestartIntensity(max_restarts, within_s)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.on_escalate = on_escalate
        self.escalated: SupervisorEscalated | None = None
        self._children: dict[str, _Child] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False
        self._done = asyncio.Event()

    def add(self, name: str, factory: Callable[[], Actor]) -> None:
        """Register a child; only before :meth:`start`."""
        if self._started:
            raise ActorError(f"supervisor {self.name}: add {name!r} before start")
        if name in self._children:
            raise ActorError(f"supervisor {self.name}: child {name!r} added twice")
        self._children[name] = _Child(name, factory)

    def child(self, name: str) -> Actor:
        """The current instance of child ``name`` (KeyError if unknown or never started)."""
        actor = self._children[name].actor
        if actor is None:
            raise KeyError(name)
        return actor

    def names(self) -> tuple[str, ...]:
        return tuple(self._children)

    async def start(self) -> None:
        """Start all children in order; if one fails to start, stop those started and raise."""
        if self._started:
            raise ActorError(f"supervisor {self.name} already started")
        self._started = True
        started: list[_Child] = []
        try:
            for child in self._children.values():
                await self._start_child(child)
                started.append(child)
        except BaseException:
            self._closing = True
            for child in reversed(started):
                await self._stop_child(child)
            self._done.set()
            raise

    async def stop(self) -> None:
        """Stop restarting, then stop children in reverse start order. Idempotent."""
        if self._closing:
            await self._done.wait()
            return
        self._closing = True
        await self._cancel_tasks()
        for child in reversed(list(self._children.values())):
            await self._stop_child(child)
        self._done.set()

    async def wait(self) -> None:
        """Wait until the supervisor has stopped; raise :class:`SupervisorEscalated` if so."""
        await self._done.wait()
        if self.escalated is not None:
            raise self.escalated

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            restarts=tuple((c.name, c.restarts) for c in self._children.values()),
            escalated=self.escalated is not None,
        )

    # -- internals --------------------------------------------------------------------------

    async def _start_child(self, child: _Child) -> None:
        actor = child.factory()
        actor.on_failure = partial(self._child_failed, child.name)
        child.actor = actor
        await actor.start()

    async def _stop_child(self, child: _Child) -> None:
        if child.actor is not None:
            child.actor.on_failure = None
            await child.actor.stop()

    def _child_failed(self, name: str, actor: Actor, exc: BaseException) -> None:
        child = self._children[name]
        if self._closing or child.actor is not actor:
            return
        log.warning(
            "supervisor %s: child %s crashed: %r",
            self.name,
            name,
            exc,
            extra={"actor": name},
        )
        task = asyncio.create_task(self._restart(child, exc), name=f"restart:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, child: _Child, exc: BaseException) -> None:
        while not self._closing:
            if not self.intensity.record(self.clock.monotonic()):
                await self._escalate(child, exc)
                return
            child.restarts += 1
            try:
                await self._start_child(child)
            except asyncio.CancelledError:
                raise
            except Exception as start_exc:
                log.warning(
                    "supervisor %s: restart of %s failed: %r",
                    self.name,
                    child.name,
                    start_exc,
                    extra={"actor": child.name},
                )
                exc = start_exc
                continue
            log.info(
                "supervisor %s: restarted %s (%d restarts)",
                self.name,
                child.name,
                child.restarts,
                extra={"actor": child.name},
            )
            return

    async def _escalate(self, child: _Child, exc: BaseException) -> None:
        if self._closing:
            return
        self._closing = True
        intensity = self.intensity
        escalated = SupervisorEscalated(
            f"supervisor {self.name}: child {child.name} crashed more than "
            f"{intensity.max_restarts} times within {intensity.within_s}s"
        )
        escalated.__cause__ = exc
        self.escalated = escalated
        log.error("%s", escalated, extra={"actor": child.name})
        await self._cancel_tasks()
        for other in reversed(list(self._children.values())):
            await self._stop_child(other)
        self._done.set()
        if self.on_escalate is not None:
            try:
                self.on_escalate(escalated)
            except Exception:
                log.exception("supervisor %s: on_escalate raised", self.name)

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others)
