"""The controller's view of the mesh (agents, devices, gpu-lets, re-plans) as this gateway last heard it.

Pure and synchronous (``now`` is passed in). The controller link asks for status only while someone
watches the dashboard, at most once per ``interval_s``, so an unwatched gateway costs the controller
nothing. Imports nothing above ``protocol``.
"""

from __future__ import annotations

from protocol.message import StatusReply


class StatusFeed:
    """Latest StatusReply and when it came. Not thread-safe; one event loop owns it."""

    def __init__(self, *, interval_s: float = 2.0, watch_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self.watch_s = watch_s
        self.latest: StatusReply | None = None
        self._received_at = float("-inf")
        self._watched_at = float("-inf")
        self._asked_at = float("-inf")

    def watched(self, now: float) -> None:
        """Someone read the dashboard: keep the status fresh for ``watch_s``."""
        self._watched_at = now

    def due(self, now: float) -> bool:
        """Ask the controller now? True at most once per ``interval_s``, and only while watched."""
        if now - self._watched_at > self.watch_s or now - self._asked_at < self.interval_s:
            return False
        self._asked_at = now
        return True

    def received(self, reply: StatusReply, now: float) -> None:
        self.latest = reply
        self._received_at = now

    def age_s(self, now: float) -> float | None:
        """Seconds since the latest reply; None before the first."""
        return None if self.latest is None else max(0.0, now - self._received_at)
