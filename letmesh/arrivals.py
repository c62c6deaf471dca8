"""Arrivals for ``letmesh simulate``: seeded Poisson streams, or a trace read from a CSV file.

Each is a time-ordered sequence of ``(time_s, variant index)``. Pure: no clock, no sleeping.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from letmesh.capacity_inputs import CapacityError


class TraceError(CapacityError):
    """A trace file is missing, malformed or names variants the workload does not have."""


def poisson_arrivals(rates_rps: Sequence[float], duration_s: float, seed: int) -> Iterator[tuple[float, int]]:
    """(time_s, variant index) of independent Poisson arrivals at ``rates_rps``, merged in time
    order over [0, duration_s). One seeded stream: the same seed gives the same arrivals."""
    total = float(sum(rates_rps))
    if total <= 0 or duration_s <= 0:
        return
    cum, acc = [], 0.0
    for r in rates_rps:
        acc += r
        cum.append(acc)
    last = max(i for i, r in enumerate(rates_rps) if r > 0)
    rng = random.Random(seed)
    expo, uniform, pick = rng.expovariate, rng.random, bisect.bisect_right
    t = expo(total)
    while t < duration_s:
        yield t, min(pick(cum, uniform() * total), last)
        t += expo(total)


@dataclass(frozen=True, slots=True)
class Trace:
    """Arrivals read from a CSV, sorted by time: ``times_s`` and ``variants`` (indices) align."""

    times_s: np.ndarray
    variants: np.ndarray
    # The file's first line earlier than the line before it, when it was not in time order (its
    # rows are replayed sorted; two traces concatenated would overlap, which the user should hear).
    first_out_of_order_line: int | None = None

    def note(self) -> str:
        if self.first_out_of_order_line is None:
            return ""
        return (f"trace: rows are not in time order (line {self.first_out_of_order_line} is earlier than the one "
                f"before it); replayed sorted by time_s")

    def __len__(self) -> int:
        return len(self.times_s)

    def __iter__(self) -> Iterator[tuple[float, int]]:
        return zip(self.times_s.tolist(), self.variants.tolist(), strict=True)

    @property
    def end_s(self) -> float:
        return float(self.times_s[-1]) if len(self.times_s) else 0.0


def read_trace(path: str | Path, variants: Sequence[str], *, until_s: float | None = None) -> Trace:
    """A CSV with a header naming ``time_s`` and ``variant`` (seconds from the start; other
    columns ignored; any order). Arrivals at or after ``until_s`` are left out."""
    path = Path(path)
    index = {v: i for i, v in enumerate(variants)}
    times, names = array("d"), array("q")
    unknown: dict[str, int] = {}
    last_t, out_of_order = -math.inf, None
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or "time_s" not in header or "variant" not in header:
                raise TraceError(f"{path}: the first line must be a header naming the columns time_s and variant")
            ti, vi = header.index("time_s"), header.index("variant")
            for row in reader:
                if not row:
                    continue
                try:
                    t = float(row[ti])
                    name = row[vi]
                except (IndexError, ValueError):
                    raise TraceError(f"{path}:{reader.line_num}: expected time_s,variant, got {','.join(row)!r}") from None
                if not (t >= 0 and math.isfinite(t)):
                    raise TraceError(f"{path}:{reader.line_num}: time_s must be a finite number >= 0, got {row[ti]!r}")
                if until_s is not None and t >= until_s:
                    continue
                if t < last_t and out_of_order is None:
                    out_of_order = reader.line_num  # among the arrivals replayed: only those get sorted
                last_t = t
                i = index.get(name)
                if i is None:
                    unknown[name] = unknown.get(name, 0) + 1
                    continue
                times.append(t)
                names.append(i)
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    if unknown:
        listed = ", ".join(f"{v} ({n})" for v, n in sorted(unknown.items())[:5])
        raise TraceError(f"{path} names variants the workload does not have: {listed}{' …' if len(unknown) > 5 else ''}")
    t_arr, v_arr = np.frombuffer(times, dtype=np.float64).copy(), np.frombuffer(names, dtype=np.int64).copy()
    if len(t_arr) == 0:
        raise TraceError(f"{path} has no arrivals" + (f" before {until_s:g} s" if until_s is not None else ""))
    if np.any(np.diff(t_arr) < 0):
        order = np.argsort(t_arr, kind="stable")
        t_arr, v_arr = t_arr[order], v_arr[order]
    return Trace(t_arr, v_arr, out_of_order)
