"""The chaos benchmark end to end in a tiny run on a real mesh: one outcome per scheduled request, every
figure present, the RESULT line complete, and no process left behind.

The figures themselves (unanswered, late, crashes) are what the benchmark reports, never asserted here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import chaos
from benchmarks.support.procfs import children

pytestmark = pytest.mark.timeout(240)

PHASE_S, FAMILY_RPS, NAMED_RPS = 3.0, 20.0, 10.0
CLASSES = ("kill_worker", "poison_nan")
CLASS_KEYS = ("sent", "statuses", "ok", "unanswered", "dropped", "refused", "late_200", "late_answers", "late_from_send",
              "max_answer_s", "shed_without_retry_after", "recovery_s", "settled_s", "client_bound", "crashes",
              "unexpected_exits", "actor_crashes", "after", "by_stream", "notes", "gateway_loop_lag_max_ms")
RESULT_KEYS = ("unanswered", "dropped", "late_200", "late", "late_send", "refused", "client_errors", "server_errors",
               "crashes", "leak_mb", "recovery_s_max")


def test_tiny_run_accounts_for_every_request_and_leaves_no_process(tmp_path: Path, capsys) -> None:
    before = set(children(os.getpid()))
    out = tmp_path / "chaos.json"
    argv = ["--quick", "--repo", "trivial", "--classes", ",".join(CLASSES), "--phase-s", str(PHASE_S),
            "--fault-at-s", "1", "--family-rps", str(FAMILY_RPS), "--named-rps", str(NAMED_RPS),
            "--fuzz-bodies", "200", "--fuzz-frames", "200", "--out", str(out)]

    assert chaos.main(argv) == 0

    report = json.loads(out.read_text())
    assert [c["fault"] for c in report["classes"]] == list(CLASSES)
    scheduled = int(FAMILY_RPS * PHASE_S) + int(NAMED_RPS * PHASE_S)
    for c in report["classes"]:
        assert set(CLASS_KEYS) <= set(c), set(CLASS_KEYS) - set(c)
        assert c["sent"] == scheduled, "every scheduled request has an outcome"
        assert sum(c["statuses"].values()) == c["sent"], "and exactly one"
        assert c["ok"] == c["statuses"].get("200", 0)
        assert c["late_from_send"] <= c["late_answers"], "the client's own lag only ever adds lateness"
        assert set(c["by_stream"]) == {"trivial", "identity"}
        assert c["gateway_loop_lag_max_ms"] is not None, "the gateway's loop-lag gauge was read during the phase"
        assert sum(s["sent"] for s in c["by_stream"].values()) == c["sent"]
    assert report["classes"][0]["notes"]["pid"] > 0  # the worker that was killed

    fuzz = report["fuzz"]
    assert fuzz["http"]["bodies"] == 200
    assert sum(fuzz["http"]["statuses"].values()) == 200
    assert fuzz["control"]["frames"] + fuzz["control"]["refused"] == 200
    assert {"controller", "gateway", "agent"} <= set(fuzz["rss_growth_mb"])
    assert report["left_behind"] == []

    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    fields = dict(item.split("=", 1) for item in last.removeprefix("RESULT ").split())
    assert set(RESULT_KEYS) <= set(fields)
    assert int(fields["unanswered"]) == report["result"]["unanswered"] >= 0
    # Every way a request can fail counts in the headline, not only in its class's table.
    for key, per_class in (("refused", "refused"), ("client_errors", "client_errors"), ("dropped", "dropped")):
        assert int(fields[key]) == sum(c[per_class] for c in report["classes"])
    assert int(fields["server_errors"]) == sum(n for c in report["classes"] for k, n in c["statuses"].items()
                                               if k.isdigit() and int(k) >= 500 and k not in ("503", "504"))

    assert set(children(os.getpid())) <= before  # every mesh process was stopped and reaped
