"""Running a role's actor as a process's main task until a stop is asked or the actor fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import zmq.asyncio

from mesh.actor import Actor


async def run_actor(make: Callable[[zmq.asyncio.Context], Actor], stop: asyncio.Event, banner: Callable[[Actor], str]) -> None:
    """Start the actor ``make`` builds, print ``banner``, and stop it on ``stop``; re-raise its failure."""
    ctx = zmq.asyncio.Context()
    actor = make(ctx)
    try:
        await actor.start()
        print(banner(actor), flush=True)
        stopped = asyncio.create_task(actor.wait_stopped())
        waiting = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, waiting}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, waiting):
            task.cancel()
    finally:
        await actor.stop()
        ctx.term()
    if actor.failure is not None:
        raise actor.failure
