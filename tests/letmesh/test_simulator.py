"""``letmesh simulate``: the discrete-event replay of a plan through the workers' batching code.

Plans here are mostly built by hand, so each case has an outcome known in advance: exact
latencies, batch counts and utilisation, not just "something happened"."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from controller.planning import Assignment, Demand, GpuLet, LatencyModel, Plan, ProfilePoint, ProfileTable
from letmesh.commands.planning import add_simulate_arguments
from letmesh.arrivals import TraceError, poisson_arrivals, read_trace
from letmesh.simulator import run_simulate, simulate
from mesh.slowdown import MIN_BATCHES

# latency of a batch of b: 2 + b ms for "a", 1 + 0.5 b ms for "b" (margin 1: the batcher sees exactly this)
LAT = {"a": lambda b: 2.0 + b, "b": lambda b: 1.0 + 0.5 * b}


def latency_model() -> LatencyModel:
    points = [ProfilePoint(v, "cuda", p, b, f(b) * 100 / p, f(b) * 100 / p) for v, f in LAT.items()
              for p in (50, 100) for b in (1, 2, 4, 8, 16, 32)]
    return LatencyModel(ProfileTable(points), margin=1.0)


def gpulet(device: str, *assignments: tuple[str, int, float], size: int = 100, slowdown: float = 1.0) -> GpuLet:
    return GpuLet(device, "cuda", size, tuple(Assignment(v, b, r, LAT[v](b)) for v, b, r in assignments), 50.0, slowdown)


def steady(interval_s: float, count: int, variant: int = 0, start: float = 0.0) -> list[tuple[float, int]]:
    return [(start + i * interval_s, variant) for i in range(count)]


def test_below_capacity_every_request_is_served_alone_within_its_slo() -> None:
    result = Plan((gpulet("gpu0", ("a", 8, 100.0)),))
    sim = simulate(result, [Demand("a", 100.0, 50.0)], latency_model(), steady(0.010, 500), window_s=5.0)
    (v,) = sim.variants
    assert (v.requests, v.within_slo, v.dropped, v.served_late) == (500, 500, 0, 0)
    assert sim.attainment == 1.0
    assert v.p50_ms == pytest.approx(3.0) and v.p99_ms == pytest.approx(3.0)  # alone: L(1) = 3 ms, no queueing
    (g,) = sim.gpulets
    assert (g.batches, g.served) == (500, 500)
    assert g.utilisation == pytest.approx(500 * 0.003 / 5.0)
    assert sim.goodput_rps == pytest.approx(100.0)


def test_requests_arriving_while_busy_form_the_next_batch() -> None:
    # four at once: the first runs alone at once (the worker does not wait), the other three together
    result = Plan((gpulet("gpu0", ("a", 8, 100.0)),))
    sim = simulate(result, [Demand("a", 100.0, 50.0)], latency_model(), [(0.0, 0)] * 4, window_s=1.0)
    (g,) = sim.gpulets
    assert (g.batches, g.served) == (2, 4)
    assert sim.end_s == pytest.approx(0.003 + 0.005)  # L(1) then L(3)
    assert sim.variants[0].p99_ms == pytest.approx(8.0, rel=0.01)


def test_above_capacity_violations_appear_and_goodput_is_capped() -> None:
    # max batch 4: at most 4 requests per 6 ms, about 667 rps; offer 1000 rps with a 20 ms SLO
    result = Plan((gpulet("gpu0", ("a", 4, 600.0)),))
    sim = simulate(result, [Demand("a", 1000.0, 20.0)], latency_model(), steady(0.001, 2000), window_s=2.0)
    (v,) = sim.variants
    assert v.dropped > 0 and v.attainment < 0.8
    assert v.requests == v.within_slo + v.served_late + v.dropped + v.rejected + v.unrouted == 2000
    assert v.served_late == 0  # service is exactly as predicted: the batcher never starts a batch that ends late
    # At most 4 requests per 6 ms over the time served (the window and the drain after it).
    assert sim.goodput_rps * sim.window_s <= sim.end_s * 1000 * 4 / 6.0 + 1
    assert sim.gpulets[0].utilisation > 0.95


def test_a_slo_below_batch_one_latency_drops_everything_as_hopeless() -> None:
    result = Plan((gpulet("gpu0", ("a", 8, 10.0)),))
    sim = simulate(result, [Demand("a", 10.0, 2.5)], latency_model(), steady(0.1, 10), window_s=1.0)
    v = sim.variants[0]
    assert (v.dropped, v.within_slo, sim.attainment, sim.gpulets[0].batches) == (10, 0, 0.0, 0)
    assert v.p50_ms is None


def test_variants_sharing_a_gpulet_are_served_earliest_deadline_first() -> None:
    # "a" (1 s SLO) starts the gpu-let busy; meanwhile "a" then "b" (10 ms SLO) queue: "b" goes first
    result = Plan((gpulet("gpu0", ("a", 1, 10.0), ("b", 1, 10.0)),))
    arrivals = [(0.0, 0), (0.001, 0), (0.002, 1)]
    sim = simulate(result, [Demand("a", 10.0, 1000.0), Demand("b", 10.0, 10.0)], latency_model(), arrivals, window_s=1.0)
    a, b = sim.variants
    assert b.p50_ms == pytest.approx(3.0 - 2.0 + 1.5)  # waits for a's first batch (ends at 3 ms), then runs 1.5 ms
    assert a.p99_ms == pytest.approx(4.5 - 0.001 * 1000 + 3.0, rel=0.02)  # the second "a" runs after "b": 4.5 + 3 - 1 ms
    assert sim.attainment == 1.0


def test_routing_follows_the_plan_weights_and_is_seeded() -> None:
    result = Plan((gpulet("gpu0", ("a", 8, 300.0)), gpulet("gpu1", ("a", 8, 100.0))))
    demands = [Demand("a", 400.0, 50.0)]
    arrivals = steady(0.0025, 4000)
    first = simulate(result, demands, latency_model(), arrivals, window_s=10.0, seed=7)
    again = simulate(result, demands, latency_model(), arrivals, window_s=10.0, seed=7)
    other = simulate(result, demands, latency_model(), arrivals, window_s=10.0, seed=8)
    served = [g.served for g in first.gpulets]
    assert sum(served) == 4000
    assert served[0] / 4000 == pytest.approx(0.75, abs=0.03)
    assert first == again
    assert [g.served for g in other.gpulets] != served


def test_unplanned_variants_are_counted_unrouted() -> None:
    result = Plan((gpulet("gpu0", ("a", 8, 10.0)),), unserved={"b": 10.0})
    sim = simulate(result, [Demand("a", 10.0, 50.0), Demand("b", 10.0, 50.0)], latency_model(),
                   [(0.0, 0), (0.1, 1), (0.2, 1)], window_s=1.0)
    assert [(v.requests, v.unrouted) for v in sim.variants] == [(1, 0), (2, 2)]
    assert sim.drop_fraction == pytest.approx(2 / 3)


def test_underestimated_interference_slows_only_colocated_gpulets_and_makes_requests_late() -> None:
    # gpu0 is split in two gpu-lets (they interfere); gpu1 is whole. Batches planned at alpha 1.2.
    result = Plan((gpulet("gpu0", ("a", 8, 50.0), size=50, slowdown=1.2), gpulet("gpu0", ("b", 8, 50.0), size=50, slowdown=1.2),
                   gpulet("gpu1", ("a", 8, 50.0))))
    demands = [Demand("a", 100.0, 14.0), Demand("b", 50.0, 50.0)]
    arrivals = sorted(steady(0.02, 100, 0) + steady(0.02, 100, 1, start=0.005))
    predicted = simulate(result, demands, latency_model(), arrivals, window_s=2.0, seed=1)
    worse = simulate(result, demands, latency_model(), arrivals, window_s=2.0, seed=1, interference_actual=2.0)
    assert predicted.attainment == 1.0
    assert [g.service_factor for g in worse.gpulets] == [2.0, 2.0, 1.0]
    a = worse.variants[0]
    assert a.served_late > 0 and worse.attainment < 1.0
    assert worse.gpulets[2].busy_s == pytest.approx(predicted.gpulets[2].busy_s)
    # Each batch gpu0 ran took twice its 7.2 ms prediction. As a worker's batcher does, the
    # simulated one believes the slowdown once MIN_BATCHES were timed: a request it would finish
    # past its 14 ms SLO is dropped then, not run late (it served all 48 late before).
    assert worse.gpulets[0].busy_s == pytest.approx(worse.gpulets[0].batches * 2 * 0.0072)
    assert a.served_late == MIN_BATCHES and a.dropped == a.requests - a.within_slo - MIN_BATCHES > 0


def test_the_queues_drain_when_the_last_batch_completes_not_at_a_wake_up_no_batch_followed() -> None:
    # 32 requests in 0.31 ms: the 8th fills the first batch at 0.07 ms, then four batches of 8 run
    # back to back (10 ms each). A batcher that waits for a fuller batch leaves wake-ups behind
    # that no batch follows; the last of them (at 47 ms) was reported as when the queues drained.
    result = Plan((gpulet("gpu0", ("a", 8, 100.0)),))
    for batching in ("proteus", "nexus"):
        sim = simulate(result, [Demand("a", 100.0, 50.0)], latency_model(), [(i * 1e-5, 0) for i in range(32)],
                       window_s=1.0, batching=batching)
        assert (sim.gpulets[0].batches, sim.within_slo) == (4, 32)
        assert sim.end_s == pytest.approx(0.00007 + 4 * 0.010)


def test_no_request_is_no_attainment_rather_than_a_perfect_one(tmp_path) -> None:
    result = Plan((gpulet("gpu0", ("a", 8, 100.0)),))
    sim = simulate(result, [Demand("a", 100.0, 50.0)], latency_model(), [], window_s=1.0)
    assert sim.requests == 0 and sim.attainment is None and sim.variants[0].attainment is None
    assert sim.to_json()["attainment"] is None


def test_arrivals_out_of_order_are_refused() -> None:
    result = Plan((gpulet("gpu0", ("a", 8, 10.0)),))
    with pytest.raises(ValueError, match="time order"):
        simulate(result, [Demand("a", 10.0, 50.0)], latency_model(), [(1.0, 0), (0.5, 0)], window_s=2.0)


def test_poisson_arrivals_are_seeded_and_have_the_right_rates() -> None:
    one = list(poisson_arrivals([300.0, 0.0, 100.0], 50.0, seed=3))
    assert one == list(poisson_arrivals([300.0, 0.0, 100.0], 50.0, seed=3))
    assert one != list(poisson_arrivals([300.0, 0.0, 100.0], 50.0, seed=4))
    counts = [sum(1 for _, v in one if v == i) for i in range(3)]
    assert counts[1] == 0
    assert counts[0] == pytest.approx(15_000, abs=5 * 15_000**0.5)
    assert counts[2] == pytest.approx(5_000, abs=5 * 5_000**0.5)
    assert all(0 <= t < 50.0 for t, _ in one) and [t for t, _ in one] == sorted(t for t, _ in one)


# --- trace files ---------------------------------------------------------------------------------


def test_trace_replay_sorts_arrivals_and_matches_direct_arrivals(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("variant,time_s,note\na,0.030,x\nb,0.000,\na,0.010,\nb,0.020,\n\n")
    trace = read_trace(path, ["a", "b"])
    assert list(trace) == [(0.0, 1), (0.01, 0), (0.02, 1), (0.03, 0)]
    assert trace.end_s == 0.03
    assert trace.note() == "trace: rows are not in time order (line 3 is earlier than the one before it); replayed sorted by time_s"
    assert list(read_trace(path, ["a", "b"], until_s=0.02)) == [(0.0, 1), (0.01, 0)]
    result = Plan((gpulet("gpu0", ("a", 8, 10.0), ("b", 8, 10.0)),))
    demands = [Demand("a", 10.0, 50.0), Demand("b", 10.0, 50.0)]
    from_trace = simulate(result, demands, latency_model(), trace, window_s=0.04)
    direct = simulate(result, demands, latency_model(), [(0.0, 1), (0.01, 0), (0.02, 1), (0.03, 0)], window_s=0.04)
    assert from_trace == direct and from_trace.attainment == 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("when,variant\n1,a\n", "header naming the columns time_s and variant"),
        ("time_s,variant\n0.5,a\n0.7,zzz\n0.8,zzz\n", "zzz (2)"),
        ("time_s,variant\nsoon,a\n", "trace.csv:2: expected time_s,variant"),
        ("time_s,variant\n-1,a\n", "time_s must be a finite number >= 0"),
        ("time_s,variant\n", "has no arrivals"),
    ],
)
def test_bad_traces_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(TraceError) as err:
        read_trace(path, ["a"])
    assert message in str(err.value)


# --- the command ---------------------------------------------------------------------------------


def write_inputs(tmp_path: Path) -> dict[str, Path]:
    rows = ["variant,device_kind,partition,batch,p50_ms,p99_ms"]
    for v, f in LAT.items():
        for p in (20, 40, 50, 60, 80, 100):
            for b in (1, 2, 4, 8, 16, 32):
                ms = f(b) * 100 / p
                rows.append(f"{v},cuda,{p},{b},{ms:.4f},{ms:.4f}")
    profiles = tmp_path / "profiles.csv"
    profiles.write_text("\n".join(rows) + "\n")
    workload = tmp_path / "workload.toml"
    workload.write_text('[[models]]\nvariant = "a"\nrate_rps = 200\nslo_ms = 40\n\n'
                        '[[models]]\nvariant = "b"\nrate_rps = 300\nslo_ms = 30\n\n'
                        '[[devices]]\nkind = "cuda"\ncount = 2\n')
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,variant\n" + "".join(f"{i * 0.004:.3f},{'ab'[i % 2]}\n" for i in range(500)))
    return {"profiles": profiles, "workload": workload, "trace": trace}


def namespace(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="letmesh simulate")
    add_simulate_arguments(parser)
    return parser.parse_args(argv)


def test_simulate_command_with_poisson_arrivals_writes_the_report_and_json(tmp_path: Path, capsys) -> None:
    paths = write_inputs(tmp_path)
    out = tmp_path / "sim.json"
    argv = ["--workload", str(paths["workload"]), "--profiles", str(paths["profiles"]), "--poisson", "--duration-s", "5",
            "--seed", "11", "--json", str(out), "--show-layout"]
    assert run_simulate(namespace(argv)) == 0
    text = capsys.readouterr().out
    assert "SLO attainment" in text and "goodput" in text and "gpu0" in text
    doc = json.loads(out.read_text())["simulation"]
    assert doc["requests"] == sum(v["requests"] for v in doc["variants"])
    assert doc["requests"] == pytest.approx(2500, abs=5 * 2500**0.5)
    assert doc["attainment"] > 0.99
    assert {v["variant"] for v in doc["variants"]} == {"a", "b"}
    assert all(0 <= g["utilisation"] <= 1 for g in doc["gpulets"])
    assert run_simulate(namespace(argv)) == 0  # same seed, same numbers
    capsys.readouterr()
    assert json.loads(out.read_text())["simulation"] == doc


def test_simulate_command_replays_a_trace(tmp_path: Path, capsys) -> None:
    paths = write_inputs(tmp_path)
    argv = ["--workload", str(paths["workload"]), "--profiles", str(paths["profiles"]), "--trace", str(paths["trace"]),
            "--minimal-fleet"]
    assert run_simulate(namespace(argv)) == 0
    text = capsys.readouterr().out
    assert "simulated 500 requests over 1.996 s" in text
    assert "devices needed (gpulet)" in text
    assert "not in time order" not in text

    # Two traces concatenated, each from 0: replayed merged, and the report says the file was out of order.
    paths["trace"].write_text(paths["trace"].read_text() + "".join(f"{i * 0.004:.3f},a\n" for i in range(10)))
    assert run_simulate(namespace(argv)) == 0
    text = capsys.readouterr().out
    assert "simulated 510 requests" in text
    assert "trace: rows are not in time order (line 502 is earlier than the one before it)" in text


def test_simulate_on_the_minimal_fleet_with_nothing_servable_is_refused(tmp_path: Path, capsys) -> None:
    paths = write_inputs(tmp_path)
    tight = tmp_path / "tight.toml"
    tight.write_text('[[models]]\nvariant = "a"\nrate_rps = 200\nslo_ms = 0.01\n\n[[devices]]\nkind = "cuda"\ncount = 2\n')
    argv = ["--workload", str(tight), "--profiles", str(paths["profiles"]), "--poisson", "--duration-s", "1",
            "--minimal-fleet"]
    assert run_simulate(namespace(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("letmesh simulate: cannot serve a on any number of these devices")
    assert "no number of these devices (cuda) serves any variant with demand" in err


def test_simulate_command_needs_an_arrival_source_and_valid_inputs(tmp_path: Path, capsys) -> None:
    paths = write_inputs(tmp_path)
    base = ["--workload", str(paths["workload"]), "--profiles", str(paths["profiles"])]
    with pytest.raises(SystemExit):
        namespace(base)  # neither --poisson nor --trace
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,variant\n0.1,nobody\n")
    assert run_simulate(namespace([*base, "--trace", str(bad)])) == 2
    assert "letmesh simulate:" in capsys.readouterr().err
    assert run_simulate(namespace([*base, "--poisson", "--interference-actual", "0"])) == 2
    assert "--interference-actual" in capsys.readouterr().err


def test_simulate_refuses_an_infinite_slowdown_and_a_wait_the_policy_ignores(tmp_path: Path, capsys) -> None:
    paths = write_inputs(tmp_path)
    base = ["--workload", str(paths["workload"]), "--profiles", str(paths["profiles"]), "--poisson", "--duration-s", "1"]
    for value in ("inf", "1e308", "nan"):  # inf and 1e308 gave NaN latencies and JSON no parser reads
        assert run_simulate(namespace([*base, "--interference-actual", value])) == 2
        assert "--interference-actual must be above 0 and at most 100" in capsys.readouterr().err
    assert run_simulate(namespace([*base, "--batching", "proteus", "--max-wait-ms", "20"])) == 2
    assert "--max-wait-ms applies to --batching edf" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    assert run_simulate(namespace([*base, "--json", str(tmp_path / "out")])) == 2  # before the run, not after
    err = capsys.readouterr()
    assert "is a folder" in err.err and "simulated" not in err.out
