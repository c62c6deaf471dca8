"""Fixtures shared across the test tree."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zmq.asyncio

from letmesh.zoo import build_zoo


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo repository (digits family + trivial family), trained once per test run."""
    root = tmp_path_factory.mktemp("digits-repo")
    build_zoo(root, epochs_scale=0.5)  # shorter training; accuracies are still measured on held-out data
    return root


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    """A ZeroMQ context for one test; a socket left open fails the test (term() would block)."""
    context = zmq.asyncio.Context()
    yield context
    try:
        await asyncio.wait_for(asyncio.to_thread(context.term), 5.0)
    except TimeoutError:
        context.destroy(linger=0)
        pytest.fail("a ZeroMQ socket was left open")
