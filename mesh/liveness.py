"""Heartbeat liveness: which peers are alive, which were just lost, which came back.

A pure, synchronous core: callers pass ``now`` from their clock and act on the answers
(the registry marks agents lost, the gateway fails a dead worker's requests). Must not
import asyncio, ZeroMQ, protocol or role packages.
"""

from __future__ import annotations


class Liveness:
    """Tracks the last heartbeat of each peer.

    A peer is lost when it has not beaten for more than ``interval_s * missed_limit``
    seconds. :meth:`lost` reports each lost peer once; a later :meth:`beat` from it
    returns True (it came back) and arms it again. Heartbeats that arrive out of order
    never move a peer's last-seen time backwards. Not thread-safe.

    Bounded: peer names come from the wire, so at most ``max_peers`` are tracked. A new peer
    beyond that first makes room by forgetting the peers already reported lost, longest silent
    first; when none is, it is refused (``beat`` returns False, ``refused`` counts it) rather
    than pushing out a live peer.
    """

    def __init__(self, *, interval_s: float, missed_limit: int = 3, max_peers: int = 4096) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if missed_limit < 1:
            raise ValueError(f"missed_limit must be >= 1, got {missed_limit}")
        if max_peers < 1:
            raise ValueError(f"max_peers must be >= 1, got {max_peers}")
        self.interval_s = interval_s
        self.missed_limit = missed_limit
        self.max_peers = max_peers
        self.refused = 0
        self._last: dict[str, float] = {}
        self._reported: set[str] = set()
        self._looked: float | None = None  # see look()

    @property
    def timeout_s(self) -> float:
        """Silence longer than this makes a peer lost."""
        return self.interval_s * self.missed_limit

    def beat(self, peer: str, now: float) -> bool:
        """Record a heartbeat; True when the peer is new or had been reported lost.

        False also when ``peer`` is new and the table is full of peers not yet lost (it is not
        recorded then; see the class docstring)."""
        previous = self._last.get(peer)
        if previous is None and len(self._last) >= self.max_peers and not self._make_room():
            self.refused += 1
            return False
        joined = previous is None or peer in self._reported
        self._reported.discard(peer)
        self._last[peer] = now if previous is None else max(previous, now)
        return joined

    def _make_room(self) -> bool:
        if not self._reported:
            return False
        oldest = min(self._reported, key=lambda p: (self._last[p], p))
        self.forget(oldest)
        return True

    def lost(self, now: float) -> list[str]:
        """Peers that became lost since the last call, oldest heartbeat first."""
        newly = [
            peer
            for peer, seen in self._last.items()
            if peer not in self._reported and now - seen > self.timeout_s
        ]
        newly.sort(key=lambda peer: (self._last[peer], peer))
        self._reported.update(newly)
        return newly

    def alive(self, peer: str, now: float) -> bool:
        """True when ``peer`` is known, not reported lost, and beat within the timeout."""
        seen = self._last.get(peer)
        if seen is None or peer in self._reported:
            return False
        return now - seen <= self.timeout_s

    def excuse(self, seconds: float, now: float) -> None:
        """Forgive ``seconds`` of silence: the observer itself was not listening (its event loop
        stalled on a long job or a starved host), so heartbeats may be waiting unread. Each
        peer's last-seen time moves forward by that much, never past ``now``."""
        if seconds <= 0:
            return
        for peer, seen in self._last.items():
            if peer not in self._reported:
                self._last[peer] = max(seen, min(now, seen + seconds))

    def look(self, now: float) -> None:
        """The observer is about to ask about its peers at ``now``. The time since its previous
        look beyond one interval is time it was not listening (its loop busy or descheduled), so
        that much silence is excused (:meth:`excuse`). An observer that looks before every answer
        gets consistent answers: a peer once not alive stays so until it beats again, however
        late the next look comes, while a stall before the first look after it is still excused.
        """
        if self._looked is not None:
            self.excuse(now - self._looked - self.interval_s, now)
        self._looked = now if self._looked is None else max(self._looked, now)

    def forget(self, peer: str) -> None:
        """Drop a peer (it left cleanly); unknown peers are ignored."""
        self._last.pop(peer, None)
        self._reported.discard(peer)

    def peers(self) -> list[str]:
        """All known peers, alive or lost, sorted."""
        return sorted(self._last)

    def last_seen(self, peer: str) -> float | None:
        return self._last.get(peer)

    def next_deadline(self) -> float | None:
        """Earliest time after which :meth:`lost` would report someone, or None."""
        pending = [seen for peer, seen in self._last.items() if peer not in self._reported]
        if not pending:
            return None
        return min(pending) + self.timeout_s
