"""The tables of the controller's SQLite state, their version (``PRAGMA user_version``) and the
steps that bring an older file up to it. Imports nothing of ours.

Version 0 is a store written before versions existed; it holds the same tables. Every step is
idempotent and runs in order; a file from a newer letmesh is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3

from controller.error import ControllerError

SCHEMA_VERSION = 1

TABLES = """
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
-- What the profile and colocation rows of a variant measured (artifact sha256, backend/precision),
-- and the controller epoch since which it is so. Older files get it empty (IF NOT EXISTS): their
-- rows are taken as of the artifacts present then.
CREATE TABLE IF NOT EXISTS measured (
    variant TEXT PRIMARY KEY,
    served TEXT NOT NULL,
    since_epoch INTEGER NOT NULL
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
CREATE TABLE IF NOT EXISTS credential (
    worker_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway (
    gateway_id TEXT PRIMARY KEY,
    data_endpoint TEXT NOT NULL,
    registered_at REAL NOT NULL
);
"""

# Version 1: decisions expire by age (an index on logged_at finds the old ones without a scan),
# and freed pages go back to the file system (incremental auto-vacuum). Switching auto-vacuum on
# in a file that already has tables takes one VACUUM; the store trims the log to its caps first,
# so that rewrite is of a bounded file. A placement table older than plan batches gets its column.
_TO_1 = "CREATE INDEX IF NOT EXISTS decision_logged_at ON decision (logged_at);"

AUTO_VACUUM_INCREMENTAL = 2


class StoreVersionError(ControllerError):
    """The state file was written by a newer letmesh than this one."""


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def is_empty(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0


def migrate(db: sqlite3.Connection) -> int:
    """Create or upgrade the tables to SCHEMA_VERSION; returns the version the file had (0: unversioned).

    Must run before any other statement on a new file: auto-vacuum can be chosen for free only
    before the first table exists. Leaves converting an existing file's auto-vacuum mode to
    :func:`compact`, which the caller runs once the log is within its caps.
    """
    found = schema_version(db)
    if found > SCHEMA_VERSION:
        raise StoreVersionError(f"the controller state file is at schema version {found}; this letmesh reads "
                                f"up to {SCHEMA_VERSION} (upgrade letmesh, or move the file aside)")
    if is_empty(db):
        db.execute(f"PRAGMA auto_vacuum={AUTO_VACUUM_INCREMENTAL}")
    db.executescript(TABLES)
    if found < 1:
        columns = {row[1] for row in db.execute("PRAGMA table_info(placement)")}
        if "batches" not in columns:  # a placement table older than plan batches
            db.execute("ALTER TABLE placement ADD COLUMN batches TEXT NOT NULL DEFAULT '[]'")
        db.executescript(_TO_1)
    columns = {row[1] for row in db.execute("PRAGMA table_info(measured)")}
    if "since_epoch" not in columns:  # a measured table made before it said since when
        db.execute("ALTER TABLE measured ADD COLUMN since_epoch INTEGER NOT NULL DEFAULT 0")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return found


def check_readable(db: sqlite3.Connection) -> int:
    """The version of a file opened read-only (0: unversioned); one from a newer letmesh is refused."""
    found = schema_version(db)
    if found > SCHEMA_VERSION:
        raise StoreVersionError(f"the controller state file is at schema version {found}; this letmesh reads "
                                f"up to {SCHEMA_VERSION} (upgrade letmesh)")
    return found


def compact(db: sqlite3.Connection) -> bool:
    """Turn on incremental auto-vacuum in a file made without it (one VACUUM); True when it ran."""
    if int(db.execute("PRAGMA auto_vacuum").fetchone()[0]) == AUTO_VACUUM_INCREMENTAL:
        return False
    db.execute(f"PRAGMA auto_vacuum={AUTO_VACUUM_INCREMENTAL}")
    db.execute("VACUUM")
    return True
