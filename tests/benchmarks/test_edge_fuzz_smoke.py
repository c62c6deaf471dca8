"""The edge fuzz benchmark end to end in a tiny run: its figures present, and no 500 among them."""

from __future__ import annotations

import json

import pytest

from benchmarks import edge_fuzz

pytestmark = pytest.mark.timeout(90)


def test_tiny_run_reports_its_figures_and_no_500(tmp_path, capsys) -> None:
    out = tmp_path / "edge_fuzz.json"
    assert edge_fuzz.main(["--quick", "--bodies", "200", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert sum(report["statuses"].values()) == 200
    assert report["status_500"] == 0 and report["in_flight_after"] == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "RESULT bodies=200 status_500=0 in_flight_after=0"
