"""The gateway's in-flight table: every request sent to a worker and not yet answered.

A pure object (no sockets, no clock reads): the dispatcher records a request when it sends it
and takes it out exactly once, whichever comes first of the worker's reply, the deadline
timer, or the loss of its worker. Taking an entry out is what entitles the caller to answer
the request, so no request is answered twice and none is forgotten: a reply for an id that is
no longer here (answered already, or from a previous run of the gateway) is ignored.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mesh.deadline import Deadline


class TableFull(Exception):
    """The gateway already holds its maximum of requests in flight."""


@dataclass(slots=True)
class InFlight:
    request_id: int
    variant: str
    worker_id: str
    deadline: Deadline
    sent: float
    inputs: dict[str, Any]
    waiter: Any = None  # the shell's handle for answering (an asyncio future); opaque here
    retried: bool = False
    rows: int = 1  # the rows (samples) it brings to its worker's batches
    due: float = 0.0  # when admission predicted it answered, where that is timed (admission.timed_against)


@dataclass(slots=True)
class InflightTable:
    """Requests in flight, by id and by worker. Not thread-safe; one event loop owns it."""

    capacity: int = 10_000
    _by_id: dict[int, InFlight] = field(default_factory=dict)
    _by_worker: dict[str, set[int]] = field(default_factory=dict)
    _rows: dict[str, int] = field(default_factory=dict)  # worker -> rows of its requests here
    # Ids start at a random point so a reply meant for an earlier run of this gateway cannot
    # match a request of this one.
    _next_id: int = field(default_factory=lambda: secrets.randbits(62))

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def add(self, entry: InFlight) -> None:
        if len(self._by_id) >= self.capacity:
            raise TableFull(f"{self.capacity} requests are already in flight at this gateway")
        if entry.request_id in self._by_id:
            raise ValueError(f"request {entry.request_id} is already in flight")
        self._by_id[entry.request_id] = entry
        self._attach(entry)

    def get(self, request_id: int) -> InFlight | None:
        return self._by_id.get(request_id)

    def take(self, request_id: int, worker_id: str | None = None) -> InFlight | None:
        """Remove and return the entry; None if it is gone, or (``worker_id`` given) is on another worker.

        The worker check keeps a slow first worker's reply from answering a request that was
        retried elsewhere: only the worker it is on now may answer it.
        """
        entry = self._by_id.get(request_id)
        if entry is None or (worker_id is not None and entry.worker_id != worker_id):
            return None
        del self._by_id[request_id]
        self._detach(entry)
        return entry

    def move(self, request_id: int, worker_id: str) -> None:
        """The request is retried on ``worker_id``."""
        entry = self._by_id[request_id]
        self._detach(entry)
        entry.worker_id = worker_id
        entry.retried = True
        entry.due = 0.0  # admission's prediction was for the first worker
        self._attach(entry)

    def on_worker(self, worker_id: str) -> list[int]:
        return sorted(self._by_worker.get(worker_id, ()))

    def count(self, worker_id: str) -> int:
        return len(self._by_worker.get(worker_id, ()))

    def rows(self, worker_id: str) -> int:
        """The rows of the requests in flight on ``worker_id``: the work its batches hold for them."""
        return self._rows.get(worker_id, 0)

    def ids(self) -> Iterator[int]:
        return iter(list(self._by_id))

    def __len__(self) -> int:
        return len(self._by_id)

    def _attach(self, entry: InFlight) -> None:
        self._by_worker.setdefault(entry.worker_id, set()).add(entry.request_id)
        self._rows[entry.worker_id] = self._rows.get(entry.worker_id, 0) + entry.rows

    def _detach(self, entry: InFlight) -> None:
        ids = self._by_worker.get(entry.worker_id)
        if ids is not None and entry.request_id in ids:
            ids.discard(entry.request_id)
            self._rows[entry.worker_id] -= entry.rows
            if not ids:
                del self._by_worker[entry.worker_id]
                del self._rows[entry.worker_id]
