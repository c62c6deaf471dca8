"""Writing a benchmark's JSON report: what every benchmark under ``benchmarks/`` shares."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """``value`` as strict JSON takes it: string keys, lists for tuples, Python numbers for numpy
    scalars, null for NaN (a figure that could not be computed), "inf"/"-inf" for infinities."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def write_json(path: Path, report: dict[str, Any]) -> None:
    """The report, made plain, to ``path`` (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plain(report), indent=2, allow_nan=False) + "\n")


def publish(report: dict[str, Any], out: Path, render: Callable[[dict[str, Any]], str],
            result_line: Callable[[dict[str, Any]], str]) -> int:
    """A benchmark's ending: the report as JSON to ``out``, its table, then its RESULT line last."""
    report = plain(report)
    write_json(out, report)
    print(render(report))
    print(result_line(report["result"]), flush=True)
    return 0
