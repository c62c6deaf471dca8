"""Running a device agent until asked to stop; its workers stop with it."""

from __future__ import annotations

import asyncio
import dataclasses

from agents.agent_actor import AgentActor
from agents.config import AgentConfig
from agents.identity import persistent_agent_id
from mesh.lifecycle import run_actor


async def run_agent(config: AgentConfig, stop: asyncio.Event) -> None:
    if not config.agent_id:
        config = dataclasses.replace(config, agent_id=persistent_agent_id(config.state_dir))
    await run_actor(
        lambda ctx: AgentActor(config, ctx=ctx),
        stop,
        lambda actor: f"letmesh agent {config.agent_id}: controller {config.controller}"
                      + (f"  metrics {actor.metrics_url}" if actor.metrics_url else ""),
    )
