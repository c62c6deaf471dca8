"""The partition benchmark's summary and RESULT line: a fault that never resumed in some run stays visible.

The benchmark itself needs root and minutes (network namespaces); tests/multihost runs the same
scenarios end to end.
"""

from __future__ import annotations

from benchmarks import partition


def run(resume_s, failed=10):
    figures = dict.fromkeys(partition.FIGURES, 1.0)
    return {**figures, "failed": failed, "resume_s": resume_s}


def test_a_run_that_never_resumed_makes_the_median_never_rather_than_the_others_median() -> None:
    summary = partition.across([run(2.0), run(None), run(4.0)])
    assert summary["resume_s"]["median"] is None and summary["resume_s"]["missing"] == 1
    assert summary["failed"] == {"median": 10, "min": 10, "max": 10}


def test_median_and_spread_across_runs() -> None:
    summary = partition.across([run(2.0, failed=5), run(6.0, failed=30), run(4.0, failed=10)])
    assert summary["resume_s"] == {"median": 4.0, "min": 2.0, "max": 6.0}
    assert summary["failed"]["median"] == 10


def test_result_line_names_every_headline_figure_and_says_never_for_a_missing_one() -> None:
    line = partition.result_line({"lost": 0, "failed_agent_cut": 568, "resume_s_agent": 12.07,
                                  "resume_s_controller": None, "orphans": 0, "rogue_accepted": 1})
    assert line == ("RESULT lost=0 failed_agent_cut=568 resume_s_agent=12.07 resume_s_controller=never "
                    "orphans=0 rogue_accepted=1")


def test_quick_cuts_are_short_and_the_full_run_cuts_for_a_minute() -> None:
    quick, full = partition.parse_options(["--quick"]), partition.parse_options([])
    assert (quick.agent_cut_s, quick.controller_cut_s, quick.runs) == (15.0, 15.0, 1)
    assert (full.agent_cut_s, full.controller_cut_s, full.runs) == (60.0, 60.0, 3)
