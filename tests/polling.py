"""Waiting in tests for something the system under test does in its own time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05,
               what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy and return that; AssertionError naming
    ``what`` when ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout_s:g} s")
        time.sleep(interval_s)


class LoopTurns:
    """Counts the turns the running event loop gives other tasks: a task that only yields, from
    ``async with`` to its end. A loop held by one task (a busy receive, a send retrying in place)
    counts few or none."""

    def __init__(self) -> None:
        self.count = 0
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._turn())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _turn(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.count += 1
