"""The overhead benchmark end to end in a tiny run on a real mesh: every figure present, every reply a 200.

Speed is never asserted here; the benchmark itself reports it.
"""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import overhead
from benchmarks.support.procfs import children

pytestmark = pytest.mark.timeout(90)

REQUESTS = 30
LEVELS = (1, 4)
REQUIRED = ("p50_ms", "p99_ms", "peak_rps", "inprocess_p50_ms")


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_tiny_run_reports_every_figure_with_only_200s_and_leaves_no_process(tmp_path, capsys):
    before = set(children(os.getpid()))
    out = tmp_path / "overhead.json"
    # A generous deadline: a scheduling stall on a busy shared machine must not turn into a 504 here.
    argv = ["--quick", "--runs", "1", "--requests", str(REQUESTS), "--duration-s", "1", "--trials", "1",
            "--concurrency", ",".join(map(str, LEVELS)), "--slo-ms", "10000", "--out", str(out)]

    assert overhead.main(argv) == 0

    report = json.loads(out.read_text())
    assert report["non_200"] == 0
    assert report["wrong_outputs"] == 0

    assert [f["form"] for f in report["low_load"]] == ["json", "binary"]
    for form in report["low_load"]:
        assert form["statuses"] == {"200": REQUESTS}
        assert form["runs"][0]["n"] == REQUESTS
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
            assert _positive(form["summary"][key]["median"]), (form["form"], key)
        assert set(form["breakdown_us"]) == set(overhead.BREAKDOWN_NOTES)
        assert _positive(form["breakdown_us"]["client_round_trip_us"])
        assert _positive(form["breakdown_us"]["gateway_handler_us"])

    levels = report["load"]["levels"]
    assert [lv["concurrency"] for lv in levels] == list(LEVELS)
    for lv in levels:
        assert set(lv["statuses"]) == {"200"}, lv["statuses"]
        assert lv["statuses"]["200"] == lv["latency"]["n"] > 0
        assert _positive(lv["rps_median"])
        assert _positive(lv["latency"]["p99_ms"])

    assert _positive(report["in_process"]["summary"]["p50_ms"]["median"])
    assert report["environment"]["usable_cores"] >= 1
    for key in REQUIRED:
        assert _positive(report["result"][key]), key
    assert report["result"]["peak_rps"] == max(lv["rps_median"] for lv in levels)

    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(item.split("=", 1) for item in last.removeprefix("RESULT ").split())
    assert last.startswith("RESULT ")
    assert all(float(fields[key]) > 0 for key in REQUIRED)

    assert set(children(os.getpid())) <= before  # every mesh process was stopped and reaped
