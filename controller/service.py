"""Running a controller until asked to stop."""

from __future__ import annotations

import asyncio

from controller.config import ControllerConfig
from controller.controller_actor import ControllerActor
from mesh.lifecycle import run_actor


async def run_controller(config: ControllerConfig, stop: asyncio.Event) -> None:
    await run_actor(
        lambda ctx: ControllerActor(config, ctx=ctx), stop,
        lambda actor: f"letmesh controller: {actor.address}" + (f"  metrics {actor.metrics_url}" if actor.metrics_url else ""),
    )
