"""ProfileTable lookups and interpolation, row round trips (CSV, SQLite), and the latency model."""

from __future__ import annotations

import csv
import io
import sqlite3

import pytest

from controller.planning import (
    LatencyModel,
    PlanningError,
    ProfilePoint,
    ProfileTable,
    UnknownProfile,
)
from controller.planning.profile import ROW_FIELDS


def point(partition: int, batch: int, p50: float, p99: float | None = None, variant: str = "m", kind: str = "cuda") -> ProfilePoint:
    return ProfilePoint(variant, kind, partition, batch, p50, p99 if p99 is not None else p50 * 2)


@pytest.fixture
def table() -> ProfileTable:
    # p50: 1 ms + 1 ms per item at 100 %, twice that at 50 %; p99 is double p50
    pts = []
    for part, scale in ((50, 2.0), (100, 1.0)):
        for b in (1, 2, 4, 8):
            p50 = scale * (1.0 + b)
            pts.append(point(part, b, p50))
    return ProfileTable(pts)


@pytest.mark.parametrize(
    ("partition", "batch", "expected"),
    [
        (100, 4, 10.0),  # exact cell, p99
        (100, 3, 8.0),  # halfway between batch 2 (6) and 4 (10)
        (50, 6, 28.0),  # between 4 (20) and 8 (36)
        # beyond the largest batch: the larger of slope extrapolation (18 + 2 * 8 = 34) and
        # proportional scaling (18 * 16 / 8 = 36)
        (100, 16, 36.0),
    ],
)
def test_batch_interpolation(table: ProfileTable, partition: int, batch: int, expected: float) -> None:
    assert table.latency_ms("m", "cuda", partition, batch) == pytest.approx(expected)


def test_p50_and_p99_are_separate_columns(table: ProfileTable) -> None:
    assert table.latency_ms("m", "cuda", 100, 4, quantile="p50") == pytest.approx(5.0)
    assert table.latency_ms("m", "cuda", 100, 4, quantile="p99") == pytest.approx(10.0)
    with pytest.raises(ValueError):
        table.latency_ms("m", "cuda", 100, 4, quantile="p90")


def test_batch_below_smallest_profiled_uses_the_smallest() -> None:
    t = ProfileTable([point(100, 4, 5.0), point(100, 8, 9.0)])
    assert t.latency_ms("m", "cuda", 100, 1) == pytest.approx(10.0)


def test_partition_interpolation_is_linear_in_inverse_partition(table: ProfileTable) -> None:
    # at 2/3 of the device: 1/p lies halfway between 1/50 and 1/100 -> halfway between latencies
    lo = table.latency_ms("m", "cuda", 50, 2)
    hi = table.latency_ms("m", "cuda", 100, 2)
    at = table.latency_ms("m", "cuda", 67, 2)
    w = (1 / 67 - 1 / 100) / (1 / 50 - 1 / 100)
    assert at == pytest.approx(hi + w * (lo - hi))
    assert hi < at < lo


def test_partition_extrapolation_is_conservative(table: ProfileTable) -> None:
    # below the smallest profiled partition latency grows as if work scaled perfectly
    assert table.latency_ms("m", "cuda", 25, 1) == pytest.approx(table.latency_ms("m", "cuda", 50, 1) * 2)
    # above the largest no speed-up is credited
    t = ProfileTable([point(40, 1, 3.0), point(60, 1, 2.0)])
    assert t.latency_ms("m", "cuda", 100, 1) == pytest.approx(4.0)


def test_unknown_variant_or_kind_raises_unknown_profile(table: ProfileTable) -> None:
    with pytest.raises(UnknownProfile) as err:
        table.latency_ms("other", "cuda", 100, 1)
    assert isinstance(err.value, PlanningError) and isinstance(err.value, KeyError)
    assert "other" in str(err.value)
    with pytest.raises(UnknownProfile):
        table.latency_ms("m", "cpu", 1, 1)
    with pytest.raises(UnknownProfile):
        table.batches("m", "cpu")


def test_queries(table: ProfileTable) -> None:
    cpu = ProfileTable([*table, point(2, 1, 3.0, variant="x", kind="cpu")])
    assert cpu.variants() == ("m", "x")
    assert cpu.variants("cpu") == ("x",)
    assert cpu.device_kinds() == ("cpu", "cuda")
    assert cpu.partitions("cuda") == (50, 100)
    assert cpu.batches("m", "cuda") == (1, 2, 4, 8)
    assert len(cpu) == 9


def test_later_point_replaces_earlier_and_updated_returns_new_table(table: ProfileTable) -> None:
    newer = table.updated([point(100, 4, 1.0, 1.5)])
    assert newer.latency_ms("m", "cuda", 100, 4) == pytest.approx(1.5)
    assert table.latency_ms("m", "cuda", 100, 4) == pytest.approx(10.0)
    assert len(newer) == len(table)


@pytest.mark.parametrize("bad", [{"partition": 0}, {"batch": 0}, {"p50_ms": 0.0}, {"p99_ms": float("nan")}])
def test_invalid_points_are_rejected(bad: dict) -> None:
    fields = {"variant": "m", "device_kind": "cuda", "partition": 50, "batch": 1, "p50_ms": 1.0, "p99_ms": 2.0} | bad
    with pytest.raises(ValueError):
        ProfilePoint(**fields)


def test_rows_round_trip_through_csv_and_sqlite(table: ProfileTable) -> None:
    rows = table.to_rows()
    assert rows == sorted(rows)
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(ROW_FIELDS)
    w.writerows(rows)
    from_csv = ProfileTable.from_rows(csv.DictReader(io.StringIO(text.getvalue())))
    assert from_csv.to_rows() == rows

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE profile (variant TEXT, device_kind TEXT, partition INTEGER, batch INTEGER, p50_ms REAL, p99_ms REAL)")
    db.executemany("INSERT INTO profile VALUES (?, ?, ?, ?, ?, ?)", rows)
    from_db = ProfileTable.from_rows(db.execute("SELECT * FROM profile"))
    db.close()
    assert from_db.to_rows() == rows
    with pytest.raises(ValueError):
        ProfileTable.from_rows([("m", "cuda", 1, 1, 1.0)])


def test_latency_model_applies_margin_and_live_slowdown(table: ProfileTable) -> None:
    plain = LatencyModel(table)
    assert plain.latency_ms("m", "cuda", 100, 4) == pytest.approx(10.0 * 1.1)
    slowed = plain.with_slowdown({("m", "cuda"): 1.5})
    assert slowed.latency_ms("m", "cuda", 100, 4) == pytest.approx(10.0 * 1.1 * 1.5)
    assert slowed.throughput_rps("m", "cuda", 100, 4) == pytest.approx(4000 / (10.0 * 1.1 * 1.5))
    assert LatencyModel(table, margin=1.0, slowdown={("m", "cpu"): 3.0}).latency_ms("m", "cuda", 100, 4) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        LatencyModel(table, slowdown={("m", "cuda"): 0.0})


def test_curve_never_makes_a_bigger_batch_look_cheaper() -> None:
    noisy = ProfileTable([point(100, 1, 2.0, 2.0), point(100, 2, 3.0, 3.0), point(100, 4, 2.5, 2.5), point(100, 8, 6.0, 6.0)])
    curve = LatencyModel(noisy, margin=1.0).curve("m", "cuda", 100, 8)
    assert len(curve) == 8
    assert list(curve) == sorted(curve)
    assert curve[3] == pytest.approx(3.0)  # batch 4 measured faster than batch 2: held at batch 2's cost
    assert curve[7] == pytest.approx(6.0)


def test_superlinear_growth_extrapolates_along_the_slope() -> None:
    t = ProfileTable([point(100, 4, 4.0, 4.0), point(100, 8, 16.0, 16.0)])
    assert t.latency_ms("m", "cuda", 100, 16) == pytest.approx(16.0 + 3.0 * 8)
