"""SQLite state of the controller: what it placed where, so a restart resumes the same mesh.

One connection, used from the controller's event loop thread only. Writes are small and
committed at once (WAL mode), so a crash of the process loses at most the write in progress; a
power loss may also lose the last commits, except the epoch and plan generation, which are synced
to disk when written (a repeated epoch or worker id would be taken for the old one's). The decision log is
the one table that grows with traffic (~800 bytes a request to a family); it is kept within a
:class:`DecisionRetention` by age and by the file's size. Tables and their versions:
``controller.store_schema``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller.placement import PlannedWorker
from controller.profiling import remeasured
from controller.retention import DecisionRetention
from controller.store_schema import check_readable, compact, migrate
from protocol.schema import from_plain, to_plain
from protocol.types import ColocationSample, DecisionRecord, Partition, ProfileSample


class StateStore:
    """Durable controller state. Not thread-safe; one owner."""

    def __init__(self, path: Path | str, *, max_decisions: int | None = None,
                 retention: DecisionRetention | None = None) -> None:
        if retention is None:
            retention = DecisionRetention() if max_decisions is None else DecisionRetention(max_records=max_decisions)
        self.retention = retention
        self.read_only = False
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self._path, isolation_level=None)
        self.found_version = migrate(self._db)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._decisions = self._db.execute("SELECT COUNT(*) FROM decision").fetchone()[0]
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._appended = 0
        self._checked_at = float("-inf")
        # A store from before retention is trimmed to the count and size caps (age needs a clock,
        # which the first check brings), then rewritten once with auto-vacuum on.
        if self._decisions > retention.max_records:
            self._delete_oldest(self._decisions - retention.max_records)
        self._trim_to_size()
        if compact(self._db):
            self._decisions = self._db.execute("SELECT COUNT(*) FROM decision").fetchone()[0]

    @classmethod
    def reader(cls, path: Path | str) -> StateStore:
        """The store opened for reading only (the report commands' way, beside a running
        controller): nothing is migrated, trimmed or written, whatever this process's caps; a write
        raises ``sqlite3.OperationalError``. A file from a newer letmesh is refused."""
        self = cls.__new__(cls)
        self.retention = DecisionRetention()
        self.read_only = True
        self._path = Path(path)
        self._db = sqlite3.connect(f"{self._path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        try:
            self.found_version = check_readable(self._db)
        except BaseException:
            self._db.close()
            raise
        return self

    @property
    def max_decisions(self) -> int:
        return self.retention.max_records

    def close(self) -> None:
        """Trim the log to its size cap (records since the last check may have passed it) and close."""
        if not self.read_only:
            self._trim_to_size()
        self._db.close()

    def last_generation(self) -> int:
        """The highest plan generation used so far (worker ids carry it): 0 before the first."""
        row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def save_generation(self, generation: int) -> None:
        self._synced("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(generation),))

    def next_epoch(self) -> int:
        """Bump and return the controller epoch: one per controller start."""
        row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        epoch = (int(row[0]) if row else 0) + 1
        self._synced("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (str(epoch),))
        return epoch

    def _synced(self, sql: str, params: tuple) -> None:
        """One write committed with the write-ahead log synced to disk (``synchronous=FULL``)."""
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._db.execute(sql, params)
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

    def known_variants(self) -> set[str] | None:
        """The variants the plan of record was made for (None before the first start saved them)."""
        row = self._db.execute("SELECT value FROM meta WHERE key='variants'").fetchone()
        return set(json.loads(row[0])) if row else None

    def save_known_variants(self, names: Sequence[str]) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('variants', ?)", (json.dumps(sorted(names)),))

    def save_placement(self, plan: PlannedWorker) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO placement VALUES (?, ?, ?, ?, ?)",
            (plan.worker_id, plan.agent_id, json.dumps(to_plain(plan.partition)), json.dumps(list(plan.variants)),
             json.dumps([list(b) for b in plan.batches])),
        )

    def delete_placement(self, worker_id: str) -> None:
        self._db.execute("DELETE FROM placement WHERE worker_id=?", (worker_id,))

    def save_credentials(self, keys: dict[str, str]) -> None:
        """The workers' credentials let in now (worker id -> public key), replacing the last set:
        a restarted controller lets the workers that kept running back in at their first handshake."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM credential")
            self._db.executemany("INSERT INTO credential VALUES (?, ?)", sorted(keys.items()))

    def credentials(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT worker_id, public_key FROM credential").fetchall())

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
        """Append joined decisions; returns those not logged before (a repeated event is ignored).

        Past ``max_records`` (with a tenth of slack, so pruning is not paid on every append) the
        oldest are deleted; age and size are checked per :class:`DecisionRetention`.
        """
        fresh = []
        with self._db:  # one transaction: a crash keeps all of the batch or none
            self._db.execute("BEGIN")
            for r in records:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO decision VALUES (?, ?, ?, ?)",
                    (r.event_id, r.family, now, json.dumps(to_plain(r))),
                )
                if cur.rowcount:
                    fresh.append(r)
        self._decisions += len(fresh)
        self._appended += len(fresh)
        cap = self.retention.max_records
        if self._decisions > cap + cap // 10:
            self._delete_oldest(self._decisions - cap)
        if self._appended >= self.retention.check_every_records:
            self.retain(now, force=True)
        return fresh

    def retain(self, now: float, *, force: bool = False) -> int:
        """Enforce the retention when a check is due (or ``force``); returns the records deleted.

        Cheap when nothing is due: two PRAGMA reads. Deletes run oldest first in batches, and the
        freed pages are handed back to the file system.
        """
        if not force and now - self._checked_at < self.retention.check_interval_s:
            return 0
        self._checked_at = now
        self._appended = 0
        deleted = 0
        cutoff = now - self.retention.max_age_s
        while True:
            with self._db:
                n = self._db.execute(
                    "DELETE FROM decision WHERE rowid IN (SELECT rowid FROM decision WHERE logged_at < ? "
                    "ORDER BY logged_at LIMIT ?)", (cutoff, DecisionRetention.BATCH)).rowcount
            deleted += n
            self._decisions -= n
            if n < DecisionRetention.BATCH:
                break
        if deleted:
            self._release()
        return deleted + self._trim_to_size()

    def used_bytes(self) -> int:
        """Bytes of the state file holding data (its size less the pages free for reuse)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0] - self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * self._page_size

    def _trim_to_size(self) -> int:
        """Delete the oldest decisions until the file's data is under the low-water mark of ``max_bytes``."""
        deleted = 0
        for _ in range(8):  # each round estimates from the last; a few close any gap the estimate left
            used = self.used_bytes()
            if used <= self.retention.max_bytes or self._decisions == 0:
                break
            target = self.retention.max_bytes * DecisionRetention.LOW_WATER
            per_record = used / self._decisions
            deleted += self._delete_oldest(max(1, math.ceil((used - target) / per_record)))
        if deleted:
            self._release()
        return deleted

    def _release(self) -> None:
        """Hand the pages freed by deletes back to the file system (the file shrinks at the next checkpoint)."""
        self._db.executescript("PRAGMA incremental_vacuum;")  # executescript steps it to the end

    def _delete_oldest(self, count: int) -> int:
        deleted = 0
        while deleted < count:
            with self._db:
                n = self._db.execute(
                    "DELETE FROM decision WHERE rowid IN (SELECT rowid FROM decision ORDER BY rowid LIMIT ?)",
                    (min(DecisionRetention.BATCH, count - deleted),)).rowcount
            if n == 0:
                break
            deleted += n
        self._decisions -= deleted
        return deleted

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

    def keep_profiles_of(self, current: Mapping[str, str], epoch: int) -> tuple[list[str], dict[str, int]]:
        """Drop the profile and colocation rows of each variant whose stored ones measured something
        other than ``current`` says (name -> ``controller.profiling.measured_as``), and note what
        ``current`` says, and from which controller ``epoch`` on, as what the rows kept measure.

        Returns the variants whose rows were dropped, and the epoch from which each variant's
        profiling runs measure what is served now (a run begun earlier measured another file; a
        variant never changed: 0)."""
        stored = {v: (served, since)
                  for v, served, since in self._db.execute("SELECT variant, served, since_epoch FROM measured")}
        stale = remeasured({v: served for v, (served, _) in stored.items()}, current)
        dropped = []
        with self._db:  # one transaction: a crash keeps the old rows and what they measured, or neither
            self._db.execute("BEGIN")
            for name in stale:
                gone = self._db.execute("DELETE FROM profile WHERE variant = ?", (name,)).rowcount
                gone += self._db.execute("DELETE FROM colocation WHERE variant = ? OR other = ?", (name, name)).rowcount
                if gone:
                    dropped.append(name)
                stored[name] = (current[name], epoch)
            for name in current.keys() - stored.keys():
                stored[name] = (current[name], 0)
            self._db.executemany("INSERT OR REPLACE INTO measured VALUES (?, ?, ?)",
                                 [(v, served, since) for v, (served, since) in sorted(stored.items())])
        return dropped, {v: since for v, (_, since) in stored.items() if since}

    def profiles(self) -> list[ProfileSample]:
        rows = self._db.execute(
            # Rows an older version took unchecked are left out: one infinite latency fails every plan.
            "SELECT variant, device_kind, partition, batch, p50_ms, p99_ms, runs FROM profile "
            "WHERE p50_ms > 0 AND p50_ms <= 3600000 AND p99_ms > 0 AND p99_ms <= 3600000 "
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

    def save_gateway(self, gateway_id: str, data_endpoint: str, now: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO gateway VALUES (?, ?, ?)", (gateway_id, data_endpoint, now))

    def delete_gateway(self, gateway_id: str) -> None:
        self._db.execute("DELETE FROM gateway WHERE gateway_id = ?", (gateway_id,))

    def gateways(self) -> dict[str, str]:
        """Gateway id -> data endpoint, of every gateway registered and not gone since."""
        return dict(self._db.execute("SELECT gateway_id, data_endpoint FROM gateway ORDER BY gateway_id"))

    def agents(self) -> list[tuple[str, str]]:
        return [(a, h) for a, h in self._db.execute("SELECT agent_id, hostname FROM agent ORDER BY agent_id")]
