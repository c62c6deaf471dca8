"""The decision log stays within its retention (age, file size) on a real SQLite file, and a state
file written before schema versions opens, keeps its contents and is versioned from then on."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from controller.config import ControllerConfig
from controller.placement import PlannedWorker
from controller.store import DecisionRetention, StateStore
from controller.store_schema import SCHEMA_VERSION, StoreVersionError
from mesh.config import ConfigError, load_config
from protocol.schema import to_plain
from protocol.types import CandidateInfo, DecisionRecord, Partition

ARMS = tuple(CandidateInfo(variant=f"digits-{name}", accuracy=acc, predicted_latency_ms=lat, p_deadline=0.97,
                           energy_j=0.0012) for name, acc, lat in (("cnn", 0.98, 4.1), ("mlp", 0.95, 1.2),
                                                                   ("linear", 0.91, 0.4)))


def record(family: str = "digits") -> DecisionRecord:
    """A decision as a gateway ships it: a random event id, a context, three candidates (~700 bytes as JSON)."""
    return DecisionRecord(event_id=uuid.uuid4().hex, family=family,
                          context={"client": "camera-17", "tier": "gold", "hour": 14, "mobile": False},
                          budget_ms=48.5, load=0.62, candidates=ARMS, chosen=1, probability=0.83, reward=0.95,
                          source="implicit", met=True)


WAL_BOUND = 1200 * (4096 + 24) + 32  # checkpoint at 1000 frames of a page and its header, plus one trim


def on_disk(path: Path) -> int:
    """The bytes the store takes on disk: the file and its write-ahead log."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_the_decision_log_stays_under_its_size_cap_while_records_keep_arriving(tmp_path: Path) -> None:
    path = tmp_path / "controller.sqlite3"
    cap = 1 * 2**20
    store = StateStore(path, retention=DecisionRetention(max_bytes=cap, check_every_records=500))
    record_bytes = len(json.dumps(to_plain(record())))
    written = 0
    try:
        now = 1_000.0
        while written < 12 * cap:  # twelve times the cap arrives, 100 records a batch as gateways send them
            store.log_decisions([record() for _ in range(100)], now)
            written += 100 * record_bytes
            now += 1.0
            # Checked every 500 records, so at most that many past the cap between checks; on disk
            # the write-ahead log adds up to SQLite's checkpoint (1000 pages) and one transaction.
            assert store.used_bytes() <= cap + 500 * record_bytes * 2
            assert on_disk(path) <= cap + WAL_BOUND
        kept = store.decisions("digits", limit=10**6)
        assert len(kept) > 0.5 * cap / record_bytes / 2  # it trims the oldest, not everything
        newest = store.decisions("digits", limit=1)
        assert newest[0].event_id == kept[-1].event_id
    finally:
        store.close()
    assert path.stat().st_size <= cap  # closing checkpoints the log into the file: what stays on disk
    assert not Path(f"{path}-wal").exists()


def test_decisions_older_than_the_age_limit_are_deleted_at_the_next_check(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "c.sqlite3", retention=DecisionRetention(max_age_s=3600.0, check_interval_s=60.0))
    try:
        old = [record() for _ in range(300)]
        store.log_decisions(old, now=0.0)
        fresh = [record() for _ in range(50)]
        store.log_decisions(fresh, now=3000.0)
        assert store.retain(now=3000.0 + 30.0) == 0  # not due: the last check was at 3000 s... or never
        assert store.retain(now=3700.0) == 300  # an hour after the first batch: only it has expired
        assert [r.event_id for r in store.decisions("digits")] == [r.event_id for r in fresh]
        assert store.retain(now=3710.0) == 0  # checked 10 s ago: nothing runs
        assert store.retain(now=6700.0) == 50
        assert store.decisions("digits") == []
    finally:
        store.close()


def test_the_file_shrinks_when_expired_decisions_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = StateStore(path, retention=DecisionRetention(max_age_s=60.0))
    try:
        for i in range(30):
            store.log_decisions([record() for _ in range(100)], now=float(i))
        store.close()
        full = path.stat().st_size
        assert full > 2_000_000  # 3,000 records
        store = StateStore(path, retention=DecisionRetention(max_age_s=60.0))
        assert store.retain(now=1000.0) == 3_000
    finally:
        store.close()
    assert path.stat().st_size < full / 20  # the freed pages went back to the file system


def test_a_store_written_before_schema_versions_opens_with_its_contents_and_is_versioned(tmp_path: Path) -> None:
    path = tmp_path / "controller.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)  # the tables as letmesh wrote them before versions
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE placement (worker_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, partition TEXT NOT NULL,
                                variants TEXT NOT NULL, batches TEXT NOT NULL DEFAULT '[]');
        CREATE TABLE decision (event_id TEXT PRIMARY KEY, family TEXT NOT NULL, logged_at REAL NOT NULL,
                               record TEXT NOT NULL);
        CREATE INDEX decision_family ON decision (family, logged_at);
        INSERT INTO meta VALUES ('epoch', '41');
    """)
    part = Partition(device_id="cpu0", kind="cpu", cores=(0,))
    old.execute("INSERT INTO placement VALUES (?, ?, ?, ?, ?)",
                ("a1.w0", "a1", json.dumps(to_plain(part)), json.dumps(["identity"]), "[]"))
    logged = [record() for _ in range(2_000)]
    old.executemany("INSERT INTO decision VALUES (?, ?, ?, ?)",
                    [(r.event_id, r.family, 100.0 + i, json.dumps(to_plain(r))) for i, r in enumerate(logged)])
    assert old.execute("PRAGMA user_version").fetchone()[0] == 0
    old.close()

    store = StateStore(path, retention=DecisionRetention(max_bytes=512 * 1024))
    try:
        assert store.found_version == 0
        assert store.next_epoch() == 42
        assert store.placements() == [PlannedWorker("a1.w0", "a1", part, ("identity",))]
        kept = store.decisions("digits", limit=10**6)
        assert 0 < len(kept) < len(logged)  # trimmed to the cap on opening, newest kept
        assert [r.event_id for r in kept] == [r.event_id for r in logged[-len(kept):]]
        assert store.used_bytes() <= 512 * 1024
        store.log_decisions([record()], now=5000.0)  # and it takes new records
    finally:
        store.close()
    assert path.stat().st_size <= 512 * 1024  # rewritten compact, with auto-vacuum from now on
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert check.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    finally:
        check.close()
    StateStore(path).close()  # a versioned store opens again unchanged


def test_a_store_from_a_newer_letmesh_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "controller.sqlite3"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer.close()
    with pytest.raises(StoreVersionError, match="schema version"):
        StateStore(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_a_retention_that_keeps_nothing_is_refused() -> None:
    for bad in ({"max_age_s": 0.0}, {"max_bytes": 10}, {"max_records": 0}, {"check_interval_s": -1.0}):
        with pytest.raises(ValueError):
            DecisionRetention(**bad)


def test_the_controller_config_sets_the_retention_and_refuses_a_bad_one_at_load() -> None:
    config = load_config(ControllerConfig, env={"LETMESH_CONTROLLER_DECISION_LOG_MAX_BYTES": str(64 * 2**20),
                                                "LETMESH_CONTROLLER_DECISION_LOG_MAX_AGE_S": "86400"},
                         section="controller")
    assert config.decision_retention() == DecisionRetention(max_age_s=86400.0, max_bytes=64 * 2**20)
    with pytest.raises(ConfigError, match="decision_log_max_bytes must be at least"):
        load_config(ControllerConfig, env={"LETMESH_CONTROLLER_DECISION_LOG_MAX_BYTES": "10"}, section="controller")


def test_a_placement_table_from_before_plan_batches_is_given_the_column(tmp_path: Path) -> None:
    path = tmp_path / "controller.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE placement (worker_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, partition TEXT NOT NULL,
                                variants TEXT NOT NULL);
    """)
    part = Partition(device_id="cpu0", kind="cpu", cores=(0,))
    old.execute("INSERT INTO placement VALUES (?, ?, ?, ?)", ("a1.w0", "a1", json.dumps(to_plain(part)), '["identity"]'))
    old.close()
    store = StateStore(path)
    try:
        assert store.placements() == [PlannedWorker("a1.w0", "a1", part, ("identity",))]
    finally:
        store.close()


def test_the_report_commands_read_the_store_without_changing_it(tmp_path: Path) -> None:
    """``StateStore.reader`` (bandit report, capacity --state-dir): beside a controller that keeps a
    larger log than the defaults, or on a file from before versions, nothing is trimmed or rewritten."""
    path = tmp_path / "controller.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)  # unversioned, without auto-vacuum: opening to write rewrites it
    old.executescript("""
        CREATE TABLE decision (event_id TEXT PRIMARY KEY, family TEXT NOT NULL, logged_at REAL NOT NULL,
                               record TEXT NOT NULL);
    """)
    logged = [record() for _ in range(300)]
    old.executemany("INSERT INTO decision VALUES (?, ?, ?, ?)",
                    [(r.event_id, r.family, 100.0 + i, json.dumps(to_plain(r))) for i, r in enumerate(logged)])
    old.close()
    before = path.read_bytes()
    reader = StateStore.reader(path)
    try:
        assert reader.found_version == 0
        assert [r.event_id for r in reader.decisions("digits")] == [r.event_id for r in logged]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.log_decisions([record()], now=1000.0)
    finally:
        reader.close()
    assert path.read_bytes() == before


def test_a_record_cap_set_in_the_config_is_the_store_s() -> None:
    config = load_config(ControllerConfig, env={"LETMESH_CONTROLLER_DECISION_LOG_MAX_RECORDS": "2000000",
                                                "LETMESH_CONTROLLER_DECISION_LOG_MAX_BYTES": str(2 * 2**30)},
                         section="controller")
    assert config.decision_retention().max_records == 2_000_000
    with pytest.raises(ConfigError, match="decision_log_max_records must be >= 1"):
        load_config(ControllerConfig, env={"LETMESH_CONTROLLER_DECISION_LOG_MAX_RECORDS": "0"}, section="controller")
