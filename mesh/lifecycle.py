"""Running a role's actor as a process's main task, under a supervisor, until a stop is asked.

A role actor that crashes is restarted by its supervisor (at most ``max_restarts`` within
``within_s``); past that the supervisor escalates and the process exits with the error, so the
service manager above it (systemd, compose, ``letmesh up``) sees the failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import zmq.asyncio

from mesh.actor import Actor
from mesh.supervisor import Supervisor


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
