"""Fixtures shared across the test tree."""

from __future__ import annotations

import asyncio
import threading
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
    # On threads of their own, not the event loop's executor: a term() that never returns would
    # keep the loop from closing and hang the whole run instead of failing this test.
    termed = threading.Event()
    threading.Thread(target=lambda: (context.term(), termed.set()), name="zmq-term", daemon=True).start()
    for _ in range(100):
        if termed.is_set():
            return
        await asyncio.sleep(0.05)
    threading.Thread(target=context.destroy, kwargs={"linger": 0}, name="zmq-destroy", daemon=True).start()
    pytest.fail("a ZeroMQ socket was left open")
