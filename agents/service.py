"""Running a device agent until asked to stop; its workers stop with it."""

from __future__ import annotations

import asyncio

from agents.agent_actor import AgentActor
from agents.config import AgentConfig
from mesh.lifecycle import run_actor


async def run_agent(config: AgentConfig, stop: asyncio.Event) -> None:
    await run_actor(
        lambda ctx: AgentActor(config, ctx=ctx),
        stop,
        lambda actor: f"letmesh agent {config.agent_id}: controller {config.controller}",
    )
