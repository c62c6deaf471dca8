"""The goodput benchmark end to end in a tiny run: both servers pinned, every figure present, every request answered.

Speed is never asserted here; the benchmark itself reports it.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from benchmarks import goodput
from benchmarks.support.procfs import children

pytestmark = pytest.mark.timeout(420)

STEP_REQUESTS = 30
STEP_S = 0.5
KEYS = ("small_vs_naive", "small_of_limit", "cpu_ms_per_req_small")


def test_tiny_run_pins_each_server_answers_every_request_and_reports_the_result_line(tmp_path, capsys):
    before = set(children(os.getpid()))
    out = tmp_path / "goodput.json"
    argv = ["--quick", "--models", "small", "--step-requests", str(STEP_REQUESTS), "--step-s", str(STEP_S), "--bisect", "0", "--sweeps", "2",
            "--low-requests", "20", "--idle-s", "1", "--settle-s", "0.2", "--onnx-upgrade", "--out", str(out)]

    assert goodput.main(argv) == 0

    report = json.loads(out.read_text())
    server_cores, _ = goodput.pick_cores()
    small = report["models"]["small"]
    assert small["slo_ms"] > 0 and small["max_batch"] >= 1
    for backend in ("torchscript", "onnx"):
        assert small["compute_limit"][backend]["rps"] > 0
        assert small["batch1_ms"][backend] > 0
    assert small["artifacts_max_abs_diff"] < 1e-4
    assert set(small["servers"]) == {"letmesh", "baseline"}
    for name, server in small["servers"].items():
        assert server["affinity"] == list(server_cores), name  # every process of the server on its one core
        assert server["output_max_abs_diff"] < 1e-4, name  # both serve the model this process computed
        assert server["cpu_ms_per_req"] > 0, name
        assert server["idle_cpu_ms_per_s"] >= 0 and server["cpu_ms_per_req_less_idle"] <= server["cpu_ms_per_req"]
        assert server["max_rate"] >= 0 and len(server["max_rate_per_sweep"]) == 2
        # The true maximum lies between the last rate that passed and the first that failed above it.
        for failed, passed in zip(server["first_failing_per_sweep"], server["max_rate_per_sweep"]):
            assert failed is None or failed > passed
        steps = [server["low_rate"], server["warm_up"], *(s for sw in server["sweeps"] for s in sw["steps"])]
        for step in steps:
            assert sum(step["statuses"].values()) == step["sent"]  # one answer (or timeout) per request
        # Each step at least STEP_REQUESTS requests and STEP_S seconds of them.
        assert all(step["sent"] == max(STEP_REQUESTS, math.ceil(step["rate"] * STEP_S))
                   for sw in server["sweeps"] for step in sw["steps"])
        assert any(step["sent"] > STEP_REQUESTS for sw in server["sweeps"] for step in sw["steps"])
        assert server["max_rate"] == min(server["max_rate_per_sweep"])  # the lower median of two: a rate a step ran
        assert server["low_rate"]["sent"] == 20
    # The sweeps alternate, the order flipping each time: letmesh, baseline, baseline, letmesh.
    spans = sorted((sw["began_monotonic_s"], sw["ended_monotonic_s"], name)
                   for name, server in small["servers"].items() for sw in server["sweeps"])
    assert [name for _, _, name in spans] == ["letmesh", "baseline", "baseline", "letmesh"]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # letmesh's agent decided, on this machine, which runtime serves the TorchScript artifact, and says so.
    (runtime,) = small["servers"]["letmesh"]["runtimes"].values()
    assert (runtime.startswith(("onnx (converted from TorchScript: ", "onnx up to batch "))
            or runtime.endswith("kept TorchScript)")), runtime
    assert small["servers"]["baseline"]["runtimes"] == {}
    assert small["servers"]["letmesh"]["idle_cpu_ms_per_s"] > 0  # heartbeats run with no request at all
    # Where each server's CPU went at the low rate, by part: the mesh's roles (their ZeroMQ I/O
    # threads apart) and the model time its worker reported; the plain server is one part.
    mesh_low, base_low = small["servers"]["letmesh"]["low_rate"], small["servers"]["baseline"]["low_rate"]
    parts = mesh_low["cpu_ms_per_req_by_part"]
    assert {"gateway", "worker", "controller", "agent", "gateway ZeroMQ I/O", "worker ZeroMQ I/O"} <= set(parts)
    assert parts["gateway"] > 0 and parts["worker"] > 0 and parts["gateway ZeroMQ I/O"] > 0
    assert 0 < mesh_low["model_ms_per_req"]
    assert set(base_low["cpu_ms_per_req_by_part"]) == {"server"} and base_low["model_ms_per_req"] is None
    assert base_low["cpu_ms_per_req_by_part"]["server"] > 0
    # The ceiling a ratio can reach here: the faster runtime's compute limit (the upgrade may serve
    # on ONNX) over the baseline's max rate, printed beside the ratio.
    best = max(small["compute_limit"][b]["rps"] for b in ("torchscript", "onnx"))
    baseline_max = small["servers"]["baseline"]["max_rate"]
    if baseline_max > 0:
        assert math.isclose(small["ceiling_vs_naive"], best / baseline_max)
    # Each runtime's limit in GFLOP/s beside the core's fp32 matrix-multiply rate, measured on that core.
    assert small["fp32_peak_gflops"] > 0
    for name, lim in small["compute_limit"].items():
        assert math.isclose(small["gflops_at_limit"][name], lim["rps"] * small["mflop_per_image"] / 1000)
    # Past the sweeps, both servers are asked for 1.5x the higher max rate, the same arrivals for each.
    top = max(server["max_rate"] for server in small["servers"].values())
    overloads = [server["overload"] for server in small["servers"].values()]
    if top > 0:
        for over in overloads:
            assert over["rate"] == pytest.approx(1.5 * top)
            assert over["sent"] == max(STEP_REQUESTS, math.ceil(over["rate"] * STEP_S))
            assert sum(over["statuses"].values()) == over["sent"]
            assert over["goodput_rps"] == pytest.approx(over["good"] / over["sent"] * over["rate"])
    text = capsys.readouterr().out
    if top > 0:
        assert f"asked for {overloads[0]['rate']:.0f} req/s (1.5x the higher max rate): letmesh " in text
    assert f"arithmetic: {small['mflop_per_image']:.1f} MFLOP an image" in text
    assert f"CPU ms a request by part, letmesh: at {small['low_rate']:g} req/s gateway {parts['gateway']:.2f} " in text
    assert f"CPU ms a request by part, baseline: at {small['low_rate']:g} req/s server " in text
    assert f"the compute limit allows at most {small['ceiling_vs_naive']:.2f}x on one core" in text

    last = text.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    fields = dict(item.split("=", 1) for item in last.removeprefix("RESULT ").split())
    assert list(fields) == list(KEYS)
    assert float(fields["cpu_ms_per_req_small"]) > 0
    assert all(not math.isinf(float(fields[key])) for key in KEYS)

    assert set(children(os.getpid())) <= before  # every server process was stopped and reaped
