"""Waiting in tests for something the system under test does in its own time."""

from __future__ import annotations

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
