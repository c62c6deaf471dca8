"""Asyncio actors: a bounded mailbox, one receive loop, and ``on_start``/``handle``/``on_stop``.

The runtime every role builds on (controller, agents, gateway). It must not import anything
beyond the standard library: no ZeroMQ, no protocol messages, no role packages.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class ActorError(Exception):
    """Root of actor runtime failures."""


class MailboxClosed(ActorError):
    """The actor is stopping or stopped: it accepts no message and answers no pending ask."""


class MailboxFull(ActorError):
    """The bounded mailbox already holds ``mailbox_size`` messages; senders never wait."""


class AskTimeout(ActorError, TimeoutError):
    """No answer to an ask arrived within its timeout."""


class ActorCrashed(ActorError):
    """Raised from ``handle`` to stop the actor as crashed (its supervisor restarts it).

    For a handler that finds the actor's own state broken; an error about one message is
    raised as any other exception and only that message is dropped.
    """


@dataclass(frozen=True, slots=True)
class ActorStatistics:
    """A snapshot of one actor's mailbox and work done.

    ``dropped`` counts asks whose caller gave up (timeout, cancellation) before the actor
    reached them; those are not handled. ``failed`` counts told messages whose handler raised
    (logged and dropped), ``failed_by_type`` the same per message type name.
    """

    name: str
    queued: int
    capacity: int
    processed: int
    dropped: int
    stopped: bool
    failed: int = 0
    failed_by_type: tuple[tuple[str, int], ...] = ()


FailureCallback = Callable[["Actor", BaseException], None]


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(slots=True)
class _Envelope:
    msg: Any
    reply: asyncio.Future[Any] | None


class Actor:
    """One actor: messages are handled one at a time, in arrival order, by :meth:`handle`.

    Concurrency contract: all methods must be called from the event loop the actor runs on.
    ``tell`` and ``ask`` may be called from any task, including the actor's own (an actor
    must not ``ask`` itself: it would wait on its own mailbox). Messages told before
    :meth:`start` wait in the mailbox and are handled once the actor runs.

    Failures: an exception raised by ``handle`` for an ask goes back to that asker and the
    actor carries on. An exception raised by ``handle`` for a tell is contained: it is
    logged with the message's type, counted in :meth:`statistics` and the message dropped;
    the actor carries on with the next one, so one poisoned message from the wire cannot
    take a role down. Only :class:`ActorCrashed` raised by ``handle`` (for a tell or an ask)
    crashes the actor: it stops, records the exception in :attr:`failure`, and then calls
    :attr:`on_failure` (set by a supervisor) once it has fully stopped. If ``on_start`` raises, :meth:`start`
    raises it, the actor is stopped and ``on_stop`` is not run — ``on_start`` undoes its
    own partial work. An exception from ``on_stop`` is logged and recorded in
    :attr:`failure` (when none was recorded) but does not make ``stop`` raise.

    Invariants: after :meth:`stop` returns, the receive loop has ended, ``on_stop`` has run
    once (if ``on_start`` had completed), and every ask that was not answered has failed
    with :class:`MailboxClosed`.
    """

    def __init__(self, *, name: str, mailbox_size: int = 1000) -> None:
        if mailbox_size < 1:
            raise ValueError(f"mailbox_size must be >= 1, got {mailbox_size}")
        self.name = name
        self.mailbox_size = mailbox_size
        self.on_failure: FailureCallback | None = None
        self.failure: BaseException | None = None
        self._state = _State.NEW
        self._mailbox: asyncio.Queue[_Envelope] = asyncio.Queue(maxsize=mailbox_size)
        self._stopped_event = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._started = False
        self._processed = 0
        self._dropped = 0
        self._failed: dict[str, int] = {}

    # -- hooks for subclasses -------------------------------------------------------------

    async def on_start(self) -> None:
        """Acquire resources (sockets, files, child tasks). Runs before any message."""

    async def handle(self, msg: Any) -> Any:
        """Handle one message; the return value answers an ask (ignored for a tell)."""
        raise NotImplementedError(f"{type(self).__name__} does not handle {type(msg).__name__}")

    async def on_stop(self) -> None:
        """Release what ``on_start`` acquired. Runs once, after the receive loop ended."""

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """True once the actor has fully stopped (loop ended, ``on_stop`` done)."""
        return self._stopped_event.is_set()

    @property
    def running(self) -> bool:
        return self._state is _State.RUNNING

    async def start(self) -> None:
        """Run ``on_start``, then the receive loop; returns once the actor is ready.

        Raises what ``on_start`` raised (the actor is then stopped), or :class:`ActorError`
        when the actor was started or stopped before.
        """
        if self._state is not _State.NEW:
            raise ActorError(f"actor {self.name} cannot start: it is {self._state.value}")
        self._state = _State.STARTING
        try:
            await self.on_start()
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.failure = exc
            self._state = _State.STOPPED
            self._fail_pending()
            self._stopped_event.set()
            raise
        if self._state is not _State.STARTING:
            # stop() was called while on_start ran: honour it now that start is done.
            self._started = True
            await self._await_stop()
            raise MailboxClosed(f"actor {self.name} was stopped while starting")
        self._started = True
        self._state = _State.RUNNING
        self._loop_task = asyncio.create_task(self._receive_loop(), name=f"actor:{self.name}")

    async def stop(self) -> None:
        """Stop accepting messages, fail pending asks, end the loop, run ``on_stop``.

        Idempotent; every caller returns once the actor has stopped. Messages still queued
        are not handled. Called from inside ``handle``, it cancels that very handler (the
        caller sees ``CancelledError``) and the actor finishes stopping on its own.
        """
        if self._state is _State.STOPPED:
            return
        if self._state is _State.NEW:
            self._state = _State.STOPPED
            self._fail_pending()
            self._stopped_event.set()
            return
        if self._state is _State.STARTING or (
            self._state is _State.STOPPING and self._stop_task is None
        ):
            # on_start is still running: start() performs the stop once it returns.
            self._state = _State.STOPPING
            self._fail_pending()
            await self._stopped_event.wait()
            return
        await self._await_stop()

    async def wait_stopped(self) -> None:
        """Wait until the actor has fully stopped, whatever stopped it."""
        await self._stopped_event.wait()

    def statistics(self) -> ActorStatistics:
        return ActorStatistics(
            name=self.name,
            queued=self._mailbox.qsize(),
            capacity=self.mailbox_size,
            processed=self._processed,
            dropped=self._dropped,
            stopped=self.stopped,
            failed=sum(self._failed.values()),
            failed_by_type=tuple(sorted(self._failed.items())),
        )

    # -- messaging --------------------------------------------------------------------------

    def tell(self, msg: Any) -> None:
        """Queue ``msg`` without waiting; raises :class:`MailboxFull` or :class:`MailboxClosed`."""
        self._put(_Envelope(msg, None))

    async def ask(self, msg: Any, timeout_s: float) -> Any:
        """Queue ``msg`` and wait for ``handle``'s answer (or its exception) up to ``timeout_s``."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._put(_Envelope(msg, reply))
        try:
            async with asyncio.timeout(timeout_s):
                return await reply
        except TimeoutError:
            if reply.cancelled():
                raise AskTimeout(
                    f"actor {self.name} did not answer {type(msg).__name__} within {timeout_s}s"
                ) from None
            raise

    def _put(self, envelope: _Envelope) -> None:
        if self._state in (_State.STOPPING, _State.STOPPED):
            raise MailboxClosed(f"actor {self.name} is {self._state.value}")
        try:
            self._mailbox.put_nowait(envelope)
        except asyncio.QueueFull:
            raise MailboxFull(
                f"actor {self.name} mailbox is full ({self.mailbox_size} messages)"
            ) from None

    # -- internals --------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            envelope = await self._mailbox.get()
            reply = envelope.reply
            if reply is not None and reply.done():
                self._dropped += 1
                continue
            try:
                result = await self.handle(envelope.msg)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    if reply is not None and not reply.done():
                        reply.set_exception(MailboxClosed(f"actor {self.name} stopped"))
                    raise
                # A CancelledError that did not come from stopping this actor: a bug in
                # handle, treated like any other exception it raises.
                failure: Exception = ActorError(f"handle of actor {self.name} was cancelled")
                failure.__cause__ = exc
                if self._on_handle_error(envelope, failure):
                    return
            except Exception as exc:
                if self._on_handle_error(envelope, exc):
                    return
            else:
                self._processed += 1
                if reply is not None and not reply.done():
                    reply.set_result(result)

    def _on_handle_error(self, envelope: _Envelope, exc: Exception) -> bool:
        """Route an exception from ``handle``; True when it crashed the actor."""
        self._processed += 1
        reply = envelope.reply
        crash = isinstance(exc, ActorCrashed)
        if reply is not None and not reply.done():
            reply.set_exception(exc)
        if not crash:
            if reply is None:
                kind = _kind(envelope.msg)
                self._failed[kind] = self._failed.get(kind, 0) + 1
                log.error(
                    "actor %s dropped a %s its handler failed on",
                    self.name,
                    kind,
                    exc_info=exc,
                    extra={"actor": self.name, "message_type": kind},
                )
            return False
        log.error(
            "actor %s crashed handling %s",
            self.name,
            type(envelope.msg).__name__,
            exc_info=exc,
            extra={"actor": self.name},
        )
        self.failure = exc
        self._state = _State.STOPPING
        self._fail_pending()
        self._stop_task = asyncio.create_task(
            self._shutdown(crash=exc), name=f"actor-stop:{self.name}"
        )
        return True

    async def _await_stop(self) -> None:
        if self._stop_task is None:
            self._state = _State.STOPPING
            self._fail_pending()
            self._stop_task = asyncio.create_task(
                self._shutdown(), name=f"actor-stop:{self.name}"
            )
        # Shielded: a caller cancelled while waiting does not abort the shutdown half-way.
        await asyncio.shield(self._stop_task)

    async def _shutdown(self, crash: BaseException | None = None) -> None:
        loop_task = self._loop_task
        if loop_task is not None and loop_task is not asyncio.current_task():
            loop_task.cancel()
            await asyncio.wait({loop_task})
            if not loop_task.cancelled() and loop_task.exception() is not None:
                exc = loop_task.exception()
                log.error("actor %s receive loop failed", self.name, exc_info=exc)
                if self.failure is None:
                    self.failure = exc
        self._fail_pending()
        if self._started:
            try:
                await self.on_stop()
            except Exception as exc:
                log.error("actor %s on_stop failed", self.name, exc_info=exc)
                if self.failure is None:
                    self.failure = exc
        self._state = _State.STOPPED
        self._stopped_event.set()
        # Only a crash is reported: a requested stop is not a failure to recover from.
        callback = self.on_failure
        if callback is not None and crash is not None:
            try:
                callback(self, crash)
            except Exception:
                log.exception("failure callback of actor %s raised", self.name)

    def _fail_pending(self) -> None:
        closed = f"actor {self.name} stopped"
        while True:
            try:
                envelope = self._mailbox.get_nowait()
            except asyncio.QueueEmpty:
                break
            if envelope.reply is not None and not envelope.reply.done():
                envelope.reply.set_exception(MailboxClosed(closed))


def _kind(msg: Any) -> str:
    """The type name to log and count: a wire message's own, not its transport wrapper's."""
    inner = getattr(msg, "msg", None)
    return type(inner if inner is not None else msg).__name__
