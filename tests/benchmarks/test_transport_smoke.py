"""The transport benchmark end to end in a tiny run: both transports measured in alternating blocks."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest

from benchmarks import transport

pytestmark = pytest.mark.timeout(120)


def test_the_blocks_alternate_and_start_with_either_transport_in_turn() -> None:
    assert transport.schedule(3) == ["letmesh", "pyzmq", "pyzmq", "letmesh", "letmesh", "pyzmq"]


def test_tiny_run_measures_both_transports_and_reports_their_ratio(tmp_path, capsys) -> None:
    out = tmp_path / "transport.json"
    before = set(Path(tempfile.gettempdir()).glob("lm-trip-*"))
    cores = os.sched_getaffinity(0)
    assert transport.main(["--pairs", "2", "--trips", "50", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for mode in transport.MODES:
        blocks = report["blocks"][mode]
        assert len(blocks) == 2
        assert all(b["router_us"] > 0 and b["dealer_us"] > 0 for b in blocks)
    ratios = [a["trip_us"] / b["trip_us"] for a, b in zip(report["blocks"]["letmesh"], report["blocks"]["pyzmq"])]
    assert report["ratios"] == pytest.approx(ratios)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"RESULT trip_letmesh_vs_pyzmq=\d+\.\d{3} letmesh_trip_us=\d+\.\d "
                        r"pyzmq_trip_us=\d+\.\d below_1=\d/2", last), last
    assert set(Path(tempfile.gettempdir()).glob("lm-trip-*")) == before, "the sockets' folder was left behind"
    assert os.sched_getaffinity(0) == cores, "the benchmark left this process pinned to one core"
