"""The bandit benchmark end to end in a tiny run: every figure present, the plot written, the RESULT line last.

QoE levels are never asserted here; the benchmark itself reports them.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import bandit

pytestmark = pytest.mark.timeout(60)

DECISIONS = 200


def test_tiny_run_writes_json_and_png_and_ends_with_the_result_line(tmp_path, capsys):
    out = tmp_path / "bandit.json"

    assert bandit.main(["--quick", "--decisions", str(DECISIONS), "--seeds", "2", "--every", "50",
                        "--sync-every", "20", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["config"]["decisions"] == DECISIONS and report["config"]["seeds"] == 2
    assert set(report["cumulative_qoe"]) == set(bandit.POLICIES)
    for key in ("qoe_vs_oracle", "qoe_vs_exp3", "qoe_vs_best_fixed"):
        assert set(report["ratios"][key]) == {"median", "min", "max"}
        assert report["ratios"][key]["min"] <= report["result"][key] <= report["ratios"][key]["max"]
    # The oracle picks the best expected QoE among the same candidates, so nobody beats it in expectation.
    assert report["ratios_expected"]["qoe_vs_oracle"]["max"] <= 1.0
    assert report["regret_vs_oracle"]["oracle"]["median"] == 0.0
    assert report["curves"]["t"] == [50, 100, 150, 200]
    for field in ("regret", "window_qoe"):
        for p in bandit.POLICIES:
            assert len(report["curves"][field][p]["median"]) == 4
    assert sum(c["n"] for c in report["per_context"]) == 2 * DECISIONS
    assert {"before_change", "after_change"} <= set(report["phases_vs_oracle"])
    assert isinstance(report["target_met"], bool)

    png = out.with_suffix(".png")
    assert report["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    fields = dict(item.split("=", 1) for item in last.removeprefix("RESULT ").split())
    assert set(fields) == {"qoe_vs_oracle", "qoe_vs_exp3", "qoe_vs_best_fixed"}
    assert all(float(v) > 0 for v in fields.values())


def test_binary_feedback_runs_the_same_path(tmp_path):
    out = tmp_path / "bandit.json"
    assert bandit.main(["--decisions", "60", "--seeds", "1", "--feedback", "binary", "--no-plot",
                        "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["feedback"] == "binary" and report["plot"] is None
