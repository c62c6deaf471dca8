"""The controller's SQLite state: placements, agents and the epoch survive a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from controller.placement import PlannedWorker
from controller.store import StateStore
from protocol.types import CandidateInfo, ColocationSample, DecisionRecord, Partition, ProfileSample

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


def test_the_decision_log_keeps_the_newest_records_up_to_its_cap(tmp_path: Path) -> None:
    arm = CandidateInfo(variant="v", accuracy=0.9, predicted_latency_ms=1.0, p_deadline=1.0, energy_j=0.0)
    store = StateStore(tmp_path / "c.sqlite3", max_decisions=100)
    try:
        for i in range(300):
            store.log_decisions([DecisionRecord(event_id=f"e{i}", family="f", context={}, budget_ms=10.0, load=0.0,
                                                candidates=(arm,), chosen=0, probability=1.0, reward=1.0,
                                                source="implicit")], float(i))
        kept = [r.event_id for r in store.decisions("f")]
        assert 100 <= len(kept) <= 110
        assert kept[-1] == "e299" and "e0" not in kept
    finally:
        store.close()


def test_gateways_survive_reopening_until_they_leave_or_are_forgotten(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.save_gateway("g1", "tcp://10.0.0.1:5560", now=1.0)
    store.save_gateway("g2", "tcp://10.0.0.2:5560", now=1.0)
    store.save_gateway("g1", "tcp://10.0.0.9:5560", now=2.0)  # registered again elsewhere
    store.close()
    store = StateStore(tmp_path / "state.db")
    assert store.gateways() == {"g1": "tcp://10.0.0.9:5560", "g2": "tcp://10.0.0.2:5560"}
    store.delete_gateway("g2")
    store.close()
    store = StateStore(tmp_path / "state.db")
    assert store.gateways() == {"g1": "tcp://10.0.0.9:5560"}
    store.close()


def _sample(variant: str, ms: float) -> ProfileSample:
    return ProfileSample(variant=variant, device_kind="cpu", partition=1, batch=1, p50_ms=ms, p99_ms=ms, runs=3)


def _colocation(variant: str, other: str) -> ColocationSample:
    return ColocationSample(device_kind="cpu", variant=variant, partition=1, batch=1, other=other, other_partition=1,
                            other_batch=1, solo_p50_ms=1.0, shared_p50_ms=1.5)


def test_profiles_of_a_variant_that_changed_are_dropped_and_the_rest_kept_across_reopening(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.save_profiles([_sample("a", 1.0), _sample("b", 2.0), _sample("c", 3.0)],
                        [_colocation("a", "b"), _colocation("b", "c"), _colocation("c", "a")], now=1.0)
    # Rows stored before the store said what they measured are taken as of the artifacts present now.
    served = {"a": "sha-a torchscript/fp32", "b": "sha-b onnx/fp32", "c": "sha-c openvino/fp32", "d": "sha-d onnx/fp32"}
    assert store.keep_profiles_of(served, epoch=1) == ([], {})
    store.close()
    store = StateStore(tmp_path / "state.db")
    # a's file was replaced, c moved to bf16, d (never profiled) too; b is what it was.
    served = {**served, "a": "sha-a2 torchscript/fp32", "c": "sha-c openvino/bf16", "d": "sha-d2 onnx/fp32"}
    dropped, since = store.keep_profiles_of(served, epoch=2)
    assert dropped == ["a", "c"]  # d had nothing to drop
    assert since == {"a": 2, "c": 2, "d": 2}  # runs begun before epoch 2 measured the old ones
    assert [s.variant for s in store.profiles()] == ["b"]
    assert store.colocations() == []  # each pair had a or c in it
    store.save_profiles([_sample("a", 5.0)], [_colocation("a", "b")], now=2.0)
    store.close()
    store = StateStore(tmp_path / "state.db")
    # The new measurements are of what is served now: kept at the next start, which still knows
    # from which epoch on runs measure the new files.
    assert store.keep_profiles_of(served, epoch=3) == ([], {"a": 2, "c": 2, "d": 2})
    assert {(s.variant, s.p50_ms) for s in store.profiles()} == {("a", 5.0), ("b", 2.0)}
    assert [(c.variant, c.other) for c in store.colocations()] == [("a", "b")]
    store.close()


def test_a_measured_table_without_its_epochs_gets_them_and_keeps_what_it_said(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path)
    store.save_profiles([_sample("a", 1.0)], [], now=1.0)
    store.close()
    db = sqlite3.connect(path, isolation_level=None)  # the table as it was first written, without since_epoch
    db.executescript("DROP TABLE measured; CREATE TABLE measured (variant TEXT PRIMARY KEY, served TEXT NOT NULL);"
                     "INSERT INTO measured VALUES ('a', 'sha-a torchscript/fp32');")
    db.close()
    store = StateStore(path)
    try:
        assert store.keep_profiles_of({"a": "sha-a torchscript/fp32"}, epoch=4) == ([], {})
        assert store.keep_profiles_of({"a": "sha-a2 torchscript/fp32"}, epoch=5) == (["a"], {"a": 5})
    finally:
        store.close()
