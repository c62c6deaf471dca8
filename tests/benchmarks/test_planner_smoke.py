"""The planner benchmark end to end in its tiny mode: every figure present, the RESULT line last.

Throughput and planning time are never asserted here; the benchmark itself reports them.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import planner

pytestmark = pytest.mark.timeout(120)


def test_tiny_run_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "planner.json"

    assert planner.main(["--tiny", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "options", "interference", "max_rate", "gains", "planning_time", "result"}
    assert set(report["result"]) >= {"gain_vs_temporal", "gain_vs_whole_device", "plan_s_1000"}
    for kind in ("cuda", "cpu"):
        assert set(report["interference"][kind]) >= {"n", "mae", "max_abs", "mean_rel", "coefficients"}
        assert set(report["gains"][kind]) >= {"vs_temporal", "vs_whole_device", "interference_cost"}
    policies = {(r["policy"], r["interference"]) for r in report["max_rate"]}
    assert policies == {("gpulet", True), ("gpulet", False), ("temporal", True), ("whole", True), ("gpulet-first", True)}
    for row in report["max_rate"]:
        assert set(row) >= {"device", "scenario", "devices", "level", "total_rps", "strategy", "gpulets_over_slo_under_interference"}
    for row in report["planning_time"]:
        assert set(row) >= {"devices", "variants", "runs", "median_s", "min_s", "max_s"}

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("RESULT gain_vs_temporal=")
    assert "gain_vs_whole_device=" in lines[-1] and "plan_s_1000=" in lines[-1]


def test_tiny_run_reports_the_replan_churn_of_both_modes(tmp_path, capsys):
    out = tmp_path / "planner.json"
    assert planner.main(["--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {(m["scenario"], m["devices"]) for m in report["churn"]} == {("scen2", 2), ("digits-heavy", 2)}
    for m in report["churn"]:
        for mode in ("fresh", "retain"):
            assert set(m[mode]) >= {"restarts_per_replan", "replans_moving_workers", "mean_unserved_share", "median_plan_s"}
            assert m[mode]["restarts_per_replan"] >= 0 and 0 <= m[mode]["mean_unserved_share"] <= 1
    assert set(report["result"]) >= {"restarts_fresh", "restarts_retain"}
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "restarts_per_replan_fresh=" in last and "restarts_per_replan_retain=" in last
