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


# `make test` runs the suite on two xdist workers. Tests that start whole meshes, servers pinned to
# cores or benchmarks run one after another on one of them: each sizes its load on the machine it
# finds, beside at most one other test. The unit tests spread over the workers around them. (xdist's
# own `xdist_group` marks do not group under pytest 9: xdist 3.8 renames the items through an
# attribute pytest no longer reads. Hence a scheduler that groups by directory.)
SERIAL_DIRS = frozenset({"integration", "multihost", "benchmarks", "letmesh", "deploy"})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getoption("dist") != "load":  # another --dist asked for by name: xdist's own
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SerialMeshes(LoadScopeScheduling):
        """xdist's load scheduling, with the tests under SERIAL_DIRS as one unit of work."""

        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("/", 2)
            return "whole-mesh" if len(parts) > 2 and parts[1] in SERIAL_DIRS else nodeid

    return SerialMeshes(config, log)
