"""Running a role's actor as a process's main task, under a supervisor, until a stop is asked.

A handler error about one message is contained by the actor itself (logged, counted, dropped).
A role actor that crashes (``ActorCrashed``, a failed receive loop) is restarted by its supervisor
(at most ``max_restarts`` within ``within_s``); past that the supervisor escalates and the process
exits non-zero with the error, so the service manager above it (systemd, compose, ``letmesh up``)
sees the failure and restarts it. A supervisor never gives up silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq.asyncio

from mesh.actor import Actor, ActorError, MailboxClosed
from mesh.supervisor import Supervisor
from mesh.transport import Endpoint, EndpointClosed

log = logging.getLogger(__name__)


async def run_actor(
    make: Callable[[zmq.asyncio.Context], Actor],
    stop: asyncio.Event,
    banner: Callable[[Actor], str],
    *,
    max_restarts: int = 3,
    within_s: float = 60.0,
) -> None:
    """Start the actor ``make`` builds, print ``banner``, and stop it on ``stop``."""
    ctx = zmq.asyncio.Context()
    supervisor = Supervisor(name="role", max_restarts=max_restarts, within_s=within_s)
    supervisor.add("role", lambda: make(ctx))
    try:
        await supervisor.start()
        print(banner(supervisor.child("role")), flush=True)
        ended = asyncio.create_task(supervisor.wait())
        waiting = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({ended, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if ended in done:
            ended.result()  # raises SupervisorEscalated
        ended.cancel()
    finally:
        await supervisor.stop()
        ctx.term()


async def feed(endpoint: Endpoint, actor: Actor) -> None:
    """Tell ``actor`` every message ``endpoint`` receives, until the endpoint closes.

    A message the mailbox refuses (full, or the actor stopping) is dropped: every sender of the
    control plane retries or re-sends its state, so nothing depends on one message getting in.
    """
    while True:
        try:
            incoming = await endpoint.recv()
        except EndpointClosed:
            return
        try:
            actor.tell(incoming)
        except MailboxClosed:
            log.debug("%s is stopping; a %s arrived too late", actor.name, type(incoming.msg).__name__)
        except ActorError:
            log.warning("%s refused a message", actor.name)


async def tick(actor: Actor, interval_s: float, message: object) -> None:
    """Tell ``actor`` ``message`` every ``interval_s`` until its mailbox closes."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            actor.tell(message)
        except MailboxClosed:
            return
        except ActorError:
            continue  # full this time; the next tick will do
