"""The accuracy-scaling benchmark end to end in its tiny mode: every figure present, one row per
scheme, the RESULT line last.

Accuracy, violation rates and their ratios are never asserted here; the benchmark reports them.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import accuracy_scaling
from benchmarks.scaling.schemes import Scheme
from benchmarks.scaling.sim import SWITCH_MODES, Simulator
from benchmarks.scaling.workload import (
    Shape,
    Trace,
    load_catalog,
    make_fleet,
    make_trace,
)

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
    catalog = load_catalog().take(3)
    fleet = make_fleet(catalog, 4)
    shape = Shape(3, 1.0, 0.6, 2.5, 0.25, 1, 0.3, 5.0)

    a, b = (make_trace(shape, fleet, seed=7) for _ in range(2))

    assert a.times == b.times and a.families == b.families
    assert a.times == sorted(a.times) and 0 <= a.times[0] and a.times[-1] < shape.duration_s


class _SwitchOnce(Scheme):
    """One slot, one family: switch to the cheapest variant at t=1 s; route everything to slot 0."""

    def start(self, sim, trace):
        sim.deploy(0, sim.fleet.ladder(0)[-1])

    def route(self, sim, now, k):
        return 0 if sim.up(0) is not None else -2

    def tick(self, sim, now, window):
        if now == 1.0:
            sim.switch(0, sim.fleet.ladder(0)[0], now)


@pytest.mark.parametrize("mode, gap", [(SWITCH_MODES[0], False), (SWITCH_MODES[1], True)])
def test_make_before_break_keeps_serving_while_the_next_variant_loads(mode, gap):
    fleet = make_fleet(load_catalog().take(1), 1)
    times = [i * 0.01 for i in range(300)]  # 100 req/s for 3 s, well within either variant's rate
    trace = Trace(times, [0] * len(times), None, None, (100.0,), ())
    sim = Simulator(fleet, "edf", load_s=1.0, switch_mode=mode)
    scheme = _SwitchOnce()
    scheme.start(sim, trace)
    sim.run(trace, scheme, 3.0)
    c = sim.per_family[0]
    assert c.requests == 300 and sim.counts.switches == 1
    assert sim.up(0) == fleet.ladder(0)[0]  # the switch happened either way
    assert (c.unrouted >= 90) is gap  # break-before-make: about the second of loading served nothing
    assert c.on_time + c.unrouted == 300
