"""Profile table and latency model: what one batch of a variant costs on a partition of a device kind.

Pure data and arithmetic shared by the planner, the interference model and the benchmark. The
table holds measured points; the model adds the safety margin and the live slowdown that workers
report. Imports nothing of ours outside ``controller.planning.error``; never torch, zmq or sqlite.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.planning.error import UnknownProfile

QUANTILES = ("p50", "p99")
ROW_FIELDS = ("variant", "device_kind", "partition", "batch", "p50_ms", "p99_ms")
DEFAULT_MARGIN = 1.1  # gpu-let's buffer on every profiled latency


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    """One measured cell. ``partition``: CPU core count, or CUDA MPS percentage (20..100)."""

    variant: str
    device_kind: str
    partition: int
    batch: int
    p50_ms: float
    p99_ms: float

    def __post_init__(self) -> None:
        if self.partition <= 0 or self.batch <= 0:
            raise ValueError(f"partition and batch must be positive: {self}")
        if not (self.p50_ms > 0 and self.p99_ms > 0 and math.isfinite(self.p50_ms) and math.isfinite(self.p99_ms)):
            raise ValueError(f"latencies must be positive and finite: {self}")


class ProfileTable:
    """An immutable index of profile points.

    Lookups interpolate: linearly in batch between profiled batch sizes (proportionally beyond the
    largest, never below the smallest profiled value under it), and linearly in 1/partition between
    profiled partitions. Extrapolation in partition is conservative: below the smallest profiled
    partition latency grows as if the work scaled perfectly with resources; above the largest no
    speed-up is credited. A later point with the same key replaces an earlier one.
    """

    __slots__ = ("_curves", "_points")

    def __init__(self, points: Iterable[ProfilePoint]) -> None:
        cells: dict[tuple[str, str, int, int], ProfilePoint] = {}
        for p in points:
            cells[(p.variant, p.device_kind, p.partition, p.batch)] = p
        self._points = tuple(cells[k] for k in sorted(cells))
        curves: dict[tuple[str, str], dict[int, list[ProfilePoint]]] = {}
        for p in self._points:
            curves.setdefault((p.variant, p.device_kind), {}).setdefault(p.partition, []).append(p)
        # (variant, kind) -> (sorted partitions, per partition (batches, p50s, p99s))
        self._curves: dict[tuple[str, str], tuple[tuple[int, ...], dict[int, tuple[tuple[int, ...], ...]]]] = {}
        for key, by_part in curves.items():
            table = {
                part: (
                    tuple(p.batch for p in pts),
                    tuple(p.p50_ms for p in pts),
                    tuple(p.p99_ms for p in pts),
                )
                for part, pts in by_part.items()
            }
            self._curves[key] = (tuple(sorted(by_part)), table)

    def __len__(self) -> int:
        return len(self._points)

    def __iter__(self):
        return iter(self._points)

    # --- queries ------------------------------------------------------------------------

    def variants(self, device_kind: str | None = None) -> tuple[str, ...]:
        return tuple(sorted({v for v, k in self._curves if device_kind is None or k == device_kind}))

    def device_kinds(self, variant: str | None = None) -> tuple[str, ...]:
        return tuple(sorted({k for v, k in self._curves if variant is None or v == variant}))

    def has(self, variant: str, device_kind: str) -> bool:
        return (variant, device_kind) in self._curves

    def partitions(self, device_kind: str, variant: str | None = None) -> tuple[int, ...]:
        """Profiled partitions of a device kind (of one variant when named)."""
        found: set[int] = set()
        for (v, k), (parts, _) in self._curves.items():
            if k == device_kind and (variant is None or v == variant):
                found.update(parts)
        return tuple(sorted(found))

    def batches(self, variant: str, device_kind: str) -> tuple[int, ...]:
        _, table = self._curve(variant, device_kind)
        return tuple(sorted({b for batches, _, _ in table.values() for b in batches}))

    def latency_ms(self, variant: str, device_kind: str, partition: int, batch: int, *, quantile: str = "p99") -> float:
        if quantile not in QUANTILES:
            raise ValueError(f"quantile must be one of {QUANTILES}, not {quantile!r}")
        if partition <= 0 or batch <= 0:
            raise ValueError(f"partition and batch must be positive, got {partition}, {batch}")
        parts, table = self._curve(variant, device_kind)
        column = 1 if quantile == "p50" else 2

        def at(part: int) -> float:
            row = table[part]
            return _interpolate_batch(row[0], row[column], batch)

        i = bisect.bisect_left(parts, partition)
        if i < len(parts) and parts[i] == partition:
            return at(partition)
        if i == 0:
            return at(parts[0]) * parts[0] / partition
        if i == len(parts):
            return at(parts[-1])
        lo, hi = parts[i - 1], parts[i]
        l_lo, l_hi = at(lo), at(hi)
        w = (1.0 / partition - 1.0 / hi) / (1.0 / lo - 1.0 / hi)
        return l_hi + w * (l_lo - l_hi)

    def _curve(self, variant: str, device_kind: str):
        try:
            return self._curves[(variant, device_kind)]
        except KeyError:
            raise UnknownProfile(f"no profile for variant {variant!r} on device kind {device_kind!r}") from None

    # --- rows ---------------------------------------------------------------------------

    def to_rows(self) -> list[tuple[str, str, int, int, float, float]]:
        """Rows in ``ROW_FIELDS`` order, sorted by key: ready for SQLite ``executemany`` or CSV."""
        return [(p.variant, p.device_kind, p.partition, p.batch, p.p50_ms, p.p99_ms) for p in self._points]

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> ProfileTable:
        """Accepts tuples in ``ROW_FIELDS`` order or mappings keyed by those names (CSV strings are fine)."""
        points = []
        for row in rows:
            values = [row[f] for f in ROW_FIELDS] if isinstance(row, Mapping) else list(row)
            if len(values) != len(ROW_FIELDS):
                raise ValueError(f"a profile row has {len(ROW_FIELDS)} fields, got {values!r}")
            v, k, part, batch, p50, p99 = values
            points.append(ProfilePoint(str(v), str(k), int(part), int(batch), float(p50), float(p99)))
        return cls(points)

    def updated(self, points: Iterable[ProfilePoint]) -> ProfileTable:
        """A new table with ``points`` added, replacing cells with the same key."""
        return ProfileTable((*self._points, *points))


def _interpolate_batch(batches: tuple[int, ...], values: tuple[float, ...], batch: int) -> float:
    j = bisect.bisect_left(batches, batch)
    if j < len(batches) and batches[j] == batch:
        return values[j]
    if j == 0:
        return values[0]  # latency does not fall with batch size: the smallest profiled one bounds it
    if j == len(batches):
        last_b, last_v = batches[-1], values[-1]
        proportional = last_v * batch / last_b
        if len(batches) == 1:
            return proportional
        slope = (last_v - values[-2]) / (last_b - batches[-2])
        return max(proportional, last_v + slope * (batch - last_b))
    b0, b1 = batches[j - 1], batches[j]
    return values[j - 1] + (values[j] - values[j - 1]) * (batch - b0) / (b1 - b0)


class LatencyModel:
    """Planning latency: table p99 × margin × live slowdown of (variant, device kind).

    Immutable after construction apart from a private memo of computed values, so one instance may
    be shared by every planning call of one thread. ``slowdown`` factors come from the workers'
    filtered observed/profiled ratios; values below 1 are honoured (a device running faster than
    when it was profiled).
    """

    __slots__ = ("_cache", "_curves", "margin", "slowdown", "table")

    def __init__(
        self,
        table: ProfileTable,
        *,
        margin: float = DEFAULT_MARGIN,
        slowdown: Mapping[tuple[str, str], float] | None = None,
    ) -> None:
        if not margin > 0:
            raise ValueError("margin must be positive")
        self.table = table
        self.margin = float(margin)
        self.slowdown: dict[tuple[str, str], float] = dict(slowdown or {})
        for key, factor in self.slowdown.items():
            if not (factor > 0 and math.isfinite(factor)):
                raise ValueError(f"slowdown for {key} must be positive and finite, got {factor}")
        self._cache: dict[tuple[str, str, int, int], float] = {}
        self._curves: dict[tuple[str, str, int, int], tuple[float, ...]] = {}

    def with_slowdown(self, slowdown: Mapping[tuple[str, str], float]) -> LatencyModel:
        return LatencyModel(self.table, margin=self.margin, slowdown=slowdown)

    def has(self, variant: str, device_kind: str) -> bool:
        return self.table.has(variant, device_kind)

    def latency_ms(self, variant: str, device_kind: str, partition: int, batch: int) -> float:
        key = (variant, device_kind, partition, batch)
        value = self._cache.get(key)
        if value is None:
            base = self.table.latency_ms(variant, device_kind, partition, batch, quantile="p99")
            value = base * self.margin * self.slowdown.get((variant, device_kind), 1.0)
            self._cache[key] = value
        return value

    def throughput_rps(self, variant: str, device_kind: str, partition: int, batch: int) -> float:
        return 1000.0 * batch / self.latency_ms(variant, device_kind, partition, batch)

    def curve(self, variant: str, device_kind: str, partition: int, max_batch: int) -> tuple[float, ...]:
        """Latency of batches 1..max_batch, made non-decreasing (a noisy profile never makes a
        bigger batch look cheaper). Index ``b - 1`` holds batch ``b``."""
        key = (variant, device_kind, partition, max_batch)
        found = self._curves.get(key)
        if found is None:
            out, worst = [], 0.0
            for b in range(1, max_batch + 1):
                worst = max(worst, self.latency_ms(variant, device_kind, partition, b))
                out.append(worst)
            found = self._curves[key] = tuple(out)
        return found
