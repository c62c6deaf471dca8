"""benchmarks/cpu_policy.py's summary: steps of the two policies paired by load and round, medians and ranges."""

from __future__ import annotations

import math

import pytest

from benchmarks import cpu_policy


def step(policy: str, load: float, rnd: int, p99: float, cpu: float, good: float = 1.0) -> dict:
    return {"policy": policy, "load": load, "round": rnd, "p99_ms": p99, "p50_ms": p99 / 4, "cpu_ms_per_req": cpu,
            "good_fraction": good}


def test_ratios_pair_each_batch_step_with_the_normal_step_of_its_load_and_round() -> None:
    steps = [step("batch", 0.6, 0, 10.0, 2.0), step("normal", 0.6, 0, 20.0, 2.5),
             step("normal", 0.9, 0, 30.0, 2.0), step("batch", 0.9, 0, 15.0, 1.0, good=0.98),
             step("batch", 0.6, 1, 12.0, 2.0), step("normal", 0.6, 1, 12.0, 2.0),
             step("batch", 0.9, 1, 40.0, 3.0)]  # its normal step missing: not paired

    summary = cpu_policy.summarise(steps)

    assert summary["ratios"]["p99"] == {"median": 0.5, "min": 0.5, "max": 1.0, "pairs": 3, "below_1": 2}
    assert summary["ratios"]["cpu"]["median"] == pytest.approx(0.8) and summary["ratios"]["cpu"]["min"] == 0.5
    batch_09 = summary["by_load"]["0.9"]["batch"]
    assert batch_09["p99_ms"] == {"median": 27.5, "min": 15.0, "max": 40.0}
    assert summary["mean_good_fraction"] == {"batch": pytest.approx(0.995), "normal": 1.0}


def test_a_load_with_one_policy_only_reports_no_ratio() -> None:
    summary = cpu_policy.summarise([step("batch", 0.6, 0, 10.0, 2.0)])
    assert summary["ratios"] == {} and summary["by_load"]["0.6"]["normal"] == {}
    assert math.isclose(summary["mean_good_fraction"]["batch"], 1.0)


def test_options_refuse_loads_and_rounds_the_benchmark_cannot_run() -> None:
    with pytest.raises(SystemExit):
        cpu_policy.parse_options(["--loads", "0.5,0"])
    with pytest.raises(SystemExit):
        cpu_policy.parse_options(["--loads", "half"])
    with pytest.raises(SystemExit):
        cpu_policy.parse_options(["--rounds", "0"])
    opts = cpu_policy.parse_options(["--quick"])
    assert opts.rounds == 1 and opts.step_s == 4.0 and opts.loads == (0.6, 0.75, 0.9)
