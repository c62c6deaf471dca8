"""The accuracy-scaling benchmark end to end in its tiny mode: every figure present, one row per
scheme, the RESULT line last.

Accuracy, violation rates and their ratios are never asserted here; the benchmark reports them.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import accuracy_scaling

pytestmark = pytest.mark.timeout(60)

RESULT_KEYS = ("acc_drop_vs_clipper_la", "violations_vs_clipper_ha", "violations_vs_infaas", "solve_s_p99")


def test_tiny_run_reports_every_scheme_and_ends_with_the_result_line(tmp_path, capsys):
    out = tmp_path / "accuracy_scaling.json"

    assert accuracy_scaling.main(["--tiny", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "options", "workload", "fleet", "simplifications", "runs", "schemes", "ratios",
                           "solves", "result"}
    names = (*accuracy_scaling.SCHEMES, *accuracy_scaling.ABLATIONS)
    assert sorted(r["scheme"] for r in report["runs"]) == sorted(names)  # one seed: one row each
    assert set(report["schemes"]) == set(names)
    for row in report["runs"]:
        assert set(row) >= {"effective_accuracy", "accuracy_drop", "violation_rate", "goodput_rps", "throughput_rps",
                            "late_rate", "dropped_rate", "shed_rate", "unrouted_rate", "requests", "on_time"}
        assert row["requests"] == report["workload"]["traces"][0]["requests"]  # every scheme saw the same arrivals
    for metrics in report["schemes"].values():
        assert set(metrics["violation_rate"]) == {"median", "min", "max"}
    assert set(report["solves"]) >= {"count", "p50_s", "p99_s", "max_s", "statuses", "time_limit_hits"}
    assert set(report["result"]) == set(RESULT_KEYS)

    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    assert [field.split("=")[0] for field in last.split()[1:]] == list(RESULT_KEYS)


def test_the_same_seed_gives_the_same_trace():
    catalog = accuracy_scaling.load_catalog().take(3)
    fleet = accuracy_scaling.make_fleet(catalog, 4)
    shape = accuracy_scaling.Shape(3, 1.0, 0.6, 2.5, 0.25, 1, 0.3, 5.0)

    a, b = (accuracy_scaling.make_trace(shape, fleet, seed=7) for _ in range(2))

    assert a.times == b.times and a.families == b.families
    assert a.times == sorted(a.times) and 0 <= a.times[0] and a.times[-1] < shape.duration_s
