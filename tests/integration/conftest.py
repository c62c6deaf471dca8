"""Fixtures that start a real mesh: controller, gateway and agent processes on loopback."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.support.procfs import processes_mentioning
from letmesh.launcher import LocalMesh
from letmesh.zoo import build_trivial
from tests.polling import wait_until


@contextlib.contextmanager
def steady_client() -> Iterator[None]:
    """Keep the test process's own load generator on schedule while it runs.

    By the time the whole-mesh tests run, the pytest process holds some 600,000 objects from the
    tests before; one full collection over them stalled an open-loop client 0.4 s, which then sent
    120 requests at once: a burst the schedule never asked for, and unread answers counted late.
    Frozen, a collection walks only what the load itself allocates.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture(scope="session")
def trivial_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("trivial-repo")
    build_trivial(repo)
    return repo


def _stop_and_check(meshes: list[LocalMesh]) -> None:
    for m in meshes:
        m.stop()
    for m in meshes:
        marker = str(m.state_dir.resolve())
        wait_until(lambda: not processes_mentioning(marker), timeout_s=10)


@pytest.fixture
def mesh_factory(tmp_path: Path, trivial_repo: Path) -> Iterator:
    """Start meshes for one test; each is stopped and checked for leftover processes at teardown."""
    started: list[LocalMesh] = []

    def start(**kwargs) -> LocalMesh:
        state = tmp_path / f"state{len(started)}"
        m = LocalMesh(repository=kwargs.pop("repository", trivial_repo), state_dir=state, **kwargs)
        started.append(m)
        m.start(timeout_s=120)
        return m

    yield start
    _stop_and_check(started)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, trivial_repo: Path) -> Iterator[LocalMesh]:
    """One mesh shared by a module's tests that leave it as they found it."""
    m = LocalMesh(repository=trivial_repo, state_dir=tmp_path_factory.mktemp("state"))
    try:
        m.start(timeout_s=120)
        yield m
    finally:
        _stop_and_check([m])
