"""Fixtures for agent tests: a real controller serving a test module's ``repo`` fixture."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zmq.asyncio

from controller.config import ControllerConfig
from controller.controller_actor import ControllerActor

BOUND_S = 5.0


@pytest.fixture
async def controller(ctx: zmq.asyncio.Context, repo: Path, tmp_path: Path) -> AsyncIterator[ControllerActor]:
    actor = ControllerActor(
        ControllerConfig(bind="tcp://127.0.0.1:0", repository=str(repo), state_dir=str(tmp_path / "controller")),
        ctx=ctx,
    )
    await asyncio.wait_for(actor.start(), BOUND_S)
    yield actor
    await asyncio.wait_for(actor.stop(), BOUND_S)
    assert actor.failure is None
