"""SQLite state of the controller: what it placed where, so a restart resumes the same mesh.

One connection, used from the controller's event loop thread only. Writes are small and
committed at once (WAL mode), so a crash loses at most the write in progress.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from controller.placement import PlannedWorker
from protocol.schema import from_plain, to_plain
from collections.abc import Sequence

from protocol.types import ColocationSample, DecisionRecord, Partition, ProfileSample

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS placement (
    worker_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    partition TEXT NOT NULL,
    variants TEXT NOT NULL,
    batches TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS decision (
    event_id TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    logged_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decision_family ON decision (family, logged_at);
CREATE TABLE IF NOT EXISTS profile (
    variant TEXT NOT NULL,
    device_kind TEXT NOT NULL,
    partition INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    p50_ms REAL NOT NULL,
    p99_ms REAL NOT NULL,
    runs INTEGER NOT NULL,
    measured_at REAL NOT NULL,
    PRIMARY KEY (variant, device_kind, partition, batch)
);
CREATE TABLE IF NOT EXISTS colocation (
    device_kind TEXT NOT NULL,
    variant TEXT NOT NULL,
    partition INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    other TEXT NOT NULL,
    other_partition INTEGER NOT NULL,
    other_batch INTEGER NOT NULL,
    solo_p50_ms REAL NOT NULL,
    shared_p50_ms REAL NOT NULL,
    PRIMARY KEY (device_kind, variant, partition, batch, other, other_partition, other_batch)
);
CREATE TABLE IF NOT EXISTS agent (
    agent_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    last_registered REAL NOT NULL
);
"""


class StateStore:
    """Durable controller state. Not thread-safe; one owner."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self._path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def next_epoch(self) -> int:
        """Bump and return the controller epoch: one per controller start."""
        row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        epoch = (int(row[0]) if row else 0) + 1
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (str(epoch),))
        return epoch

    def save_placement(self, plan: PlannedWorker) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO placement VALUES (?, ?, ?, ?, ?)",
            (plan.worker_id, plan.agent_id, json.dumps(to_plain(plan.partition)), json.dumps(list(plan.variants)),
             json.dumps([list(b) for b in plan.batches])),
        )

    def delete_placement(self, worker_id: str) -> None:
        self._db.execute("DELETE FROM placement WHERE worker_id=?", (worker_id,))

    def placements(self) -> list[PlannedWorker]:
        rows = self._db.execute(
            "SELECT worker_id, agent_id, partition, variants, batches FROM placement ORDER BY worker_id"
        )
        return [
            PlannedWorker(w, a, from_plain(Partition, json.loads(p)), tuple(json.loads(v)),
                          tuple((n, int(b)) for n, b in json.loads(bs)))
            for w, a, p, v, bs in rows.fetchall()
        ]

    def log_decisions(self, records: Sequence[DecisionRecord], now: float) -> list[DecisionRecord]:
        """Append joined decisions; returns those not logged before (a repeated event is ignored)."""
        fresh = []
        with self._db:
            for r in records:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO decision VALUES (?, ?, ?, ?)",
                    (r.event_id, r.family, now, json.dumps(to_plain(r))),
                )
                if cur.rowcount:
                    fresh.append(r)
        return fresh

    def decisions(self, family: str | None = None, limit: int = 100_000) -> list[DecisionRecord]:
        """The newest ``limit`` logged decisions, oldest first."""
        if family is None:
            rows = self._db.execute("SELECT record FROM decision ORDER BY logged_at DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute(
                "SELECT record FROM decision WHERE family=? ORDER BY logged_at DESC LIMIT ?", (family, limit)
            )
        return [from_plain(DecisionRecord, json.loads(r)) for (r,) in reversed(rows.fetchall())]

    def save_profiles(self, samples: Sequence[ProfileSample], colocations: Sequence[ColocationSample], now: float) -> None:
        """Measured profiles replace earlier measurements of the same point."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO profile VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(s.variant, s.device_kind, s.partition, s.batch, s.p50_ms, s.p99_ms, s.runs, now) for s in samples],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO colocation VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(c.device_kind, c.variant, c.partition, c.batch, c.other, c.other_partition, c.other_batch,
                  c.solo_p50_ms, c.shared_p50_ms) for c in colocations],
            )

    def profiles(self) -> list[ProfileSample]:
        rows = self._db.execute(
            "SELECT variant, device_kind, partition, batch, p50_ms, p99_ms, runs FROM profile "
            "ORDER BY variant, device_kind, partition, batch"
        )
        return [ProfileSample(variant=v, device_kind=k, partition=p, batch=b, p50_ms=p50, p99_ms=p99, runs=n)
                for v, k, p, b, p50, p99, n in rows.fetchall()]

    def colocations(self) -> list[ColocationSample]:
        rows = self._db.execute("SELECT * FROM colocation ORDER BY device_kind, variant, partition, batch, other")
        return [ColocationSample(device_kind=k, variant=v, partition=p, batch=b, other=o, other_partition=op,
                                 other_batch=ob, solo_p50_ms=s, shared_p50_ms=sh)
                for k, v, p, b, o, op, ob, s, sh in rows.fetchall()]

    def save_agent(self, agent_id: str, hostname: str, now: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO agent VALUES (?, ?, ?)", (agent_id, hostname, now))

    def agents(self) -> list[tuple[str, str]]:
        return [(a, h) for a, h in self._db.execute("SELECT agent_id, hostname FROM agent ORDER BY agent_id")]
