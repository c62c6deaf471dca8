"""Benchmark reports are strict JSON whatever figures they hold."""

from __future__ import annotations

import json
import math

import numpy as np

from benchmarks.support.report import plain, write_json


def test_reports_are_strict_json(tmp_path) -> None:
    report = {"ratio": float("inf"), "missing": float("nan"), "below": -math.inf, 3: (np.float64(1.5), np.int64(2)),
              "nested": {"runs": [np.float32(0.25)]}}
    out = tmp_path / "results" / "bench.json"
    write_json(out, report)
    back = json.loads(out.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert back == {"ratio": "inf", "missing": None, "below": "-inf", "3": [1.5, 2], "nested": {"runs": [0.25]}}
    assert plain(report) == back
