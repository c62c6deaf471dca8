"""The controller's SQLite state: placements, agents and the epoch survive a restart."""

from __future__ import annotations

from pathlib import Path

from controller.placement import PlannedWorker
from controller.store import StateStore
from protocol.types import Partition

CPU_PART = Partition(device_id="cpu0", kind="cpu", cores=(0, 1))
GPU_PART = Partition(device_id="cuda0", kind="cuda", mps_percent=25)


def test_placements_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "controller.sqlite3"  # parent folders are created
    store = StateStore(path)
    store.save_placement(PlannedWorker("a1.w1", "a1", GPU_PART, ("digits-cnn",)))
    store.save_placement(PlannedWorker("a1.w0", "a1", CPU_PART, ("identity", "digits-mlp"), (("identity", 4),)))
    store.close()

    store = StateStore(path)  # reopened
    try:
        assert store.placements() == [
            PlannedWorker("a1.w0", "a1", CPU_PART, ("identity", "digits-mlp"), (("identity", 4),)),
            PlannedWorker("a1.w1", "a1", GPU_PART, ("digits-cnn",)),
        ]
    finally:
        store.close()


def test_saving_a_worker_again_replaces_its_placement(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "c.sqlite3")
    try:
        store.save_placement(PlannedWorker("a1.w0", "a1", CPU_PART, ("identity",)))
        moved = Partition(device_id="cpu0", kind="cpu", cores=(1,))
        store.save_placement(PlannedWorker("a1.w0", "a2", moved, ("digits-linear",)))
        assert store.placements() == [PlannedWorker("a1.w0", "a2", moved, ("digits-linear",))]
    finally:
        store.close()


def test_deleted_placement_stays_deleted_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = StateStore(path)
    store.save_placement(PlannedWorker("a1.w0", "a1", CPU_PART, ("identity",)))
    store.save_placement(PlannedWorker("a1.w1", "a1", CPU_PART, ("digits-mlp",)))
    store.delete_placement("a1.w0")
    store.delete_placement("never-saved")
    store.close()

    store = StateStore(path)  # reopened
    try:
        assert [w.worker_id for w in store.placements()] == ["a1.w1"]
    finally:
        store.close()


def test_epoch_increments_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = StateStore(path)
    assert store.next_epoch() == 1
    assert store.next_epoch() == 2
    store.close()

    store = StateStore(path)  # reopened
    try:
        assert store.next_epoch() == 3
    finally:
        store.close()


def test_agents_survive_reopening_and_registering_again_updates_the_host(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = StateStore(path)
    store.save_agent("b", "host-b", now=10.0)
    store.save_agent("a", "host-a", now=11.0)
    store.save_agent("b", "host-b2", now=12.0)
    store.close()

    store = StateStore(path)  # reopened
    try:
        assert store.agents() == [("a", "host-a"), ("b", "host-b2")]
    finally:
        store.close()


def test_fresh_store_is_empty(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "c.sqlite3")
    try:
        assert store.placements() == []
        assert store.agents() == []
    finally:
        store.close()
