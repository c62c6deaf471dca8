"""``letmesh demo``: a real mesh answers held-out digits in both dialects, the report tells the truth."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from gateway import oip, oip_response
from letmesh.demo import (
    Family,
    Job,
    Outcome,
    binary_request,
    exit_code,
    format_report,
    json_request,
    outcome_of_response,
    run_demo,
)
from protocol.types import TensorSpec

DIGITS = ("digits-linear", "digits-mlp", "digits-wide", "digits-cnn")
IMAGE = TensorSpec(name="image", datatype="FP32", shape=(-1, 64))
PROBABILITIES = TensorSpec(name="probabilities", datatype="FP32", shape=(-1, 10))
FAMILY = Family(
    name="digits",
    variants=("digits-cnn", "digits-linear"),
    accuracy={"digits-cnn": 0.98, "digits-linear": 0.95},
    input_name="image",
    input_width=64,
    output_name="probabilities",
)


@pytest.fixture(scope="module")
def repository(digits_repo: Path) -> Path:
    return digits_repo


def live_processes_mentioning(marker: str) -> list[str]:
    """Command lines of live processes whose command line or environment contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline or marker.encode() in environ:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.timeout(180)
def test_demo_serves_every_request_accurately_and_leaves_nothing_running(repository, tmp_path, capsys):
    state = tmp_path / "state"

    code = run_demo(repository, state, requests=40, concurrency=4)

    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"mesh ready at http://127\.0\.0\.1:\d+: 4 digit variants on \d+ workers", out), out
    assert re.search(r"'digits': 40 requests \(30 JSON, 10 binary tensors\)", out), out
    assert re.search(r"answered\s+40 of 40 \(HTTP 200\), errors 0", out), out
    accuracy = float(re.search(r"accuracy\s+(\d\.\d+) \(\d+/40 correct", out).group(1))
    assert accuracy > 0.8, out
    table = out.split("each variant asked directly", 1)[1].split("errors", 1)[0]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:] if line.startswith("  digits-")}
    assert sorted(rows) == sorted(DIGITS), out
    for name, cells in rows.items():
        assert float(cells[2]) > 0.8, f"{name} measured accuracy: {out}"
        assert cells[3] == "50/50", out
    assert "errors: none" in out, out
    assert "stopping the mesh" in out
    # The controller and agent carry the state dir on their command lines, workers in their environment.
    assert live_processes_mentioning(str(state.resolve())) == []


def test_demo_reports_a_missing_heldout_set_without_starting_a_mesh(tmp_path, capsys):
    state = tmp_path / "state"

    assert run_demo(tmp_path / "empty-repo", state, requests=5) == 1

    assert "digits-heldout.npz" in capsys.readouterr().err
    assert not state.exists()


def job(binary: bool, label: int = 3, model: str = "digits") -> Job:
    image = np.linspace(0.0, 1.0, 64, dtype=np.float32)
    return Job(request_id="r-1", model=model, binary=binary, image=image, label=label)


@pytest.mark.parametrize("binary", [False, True])
def test_request_bodies_are_what_the_gateway_parses(binary):
    body, headers = (binary_request if binary else json_request)(job(binary), FAMILY)
    length = headers.get(oip.HEADER_LENGTH)

    parsed = oip.parse_infer_request(body, None if length is None else int(length), [IMAGE], [PROBABILITIES],
                                     max_batch=32)

    assert parsed.id == "r-1"
    np.testing.assert_array_equal(parsed.inputs["image"], job(binary).image.reshape(1, 64))
    assert parsed.binary_outputs == {"probabilities": binary}


@pytest.mark.parametrize("binary", [False, True])
def test_a_gateway_response_in_either_dialect_becomes_a_prediction(binary):
    body, headers = (binary_request if binary else json_request)(job(binary, label=3), FAMILY)
    length = headers.get(oip.HEADER_LENGTH)
    parsed = oip.parse_infer_request(body, None if length is None else int(length), [IMAGE], [PROBABILITIES],
                                     max_batch=32)
    probabilities = np.full((1, 10), 0.05, dtype=np.float32)
    probabilities[0, 3] = 0.55
    payload, response_headers = oip_response.encode_infer_response(
        model_name="digits", model_version="1", request_id=parsed.id,
        outputs=[("probabilities", probabilities)], parsed=parsed,
        parameters={"letmesh_variant": "digits-cnn", "letmesh_slo_status": "met", "letmesh_queue_us": 120,
                    "letmesh_compute_us": 900, "letmesh_batch_size": 2, "letmesh_latency_us": 1500},
    )

    outcome = outcome_of_response(job(binary, label=3), 200, payload, response_headers.get(oip.HEADER_LENGTH),
                                  0.002, "probabilities")

    assert (oip.HEADER_LENGTH in response_headers) == binary
    assert outcome.answered and outcome.correct
    assert (outcome.variant, outcome.predicted, outcome.compute_us, outcome.batch_size) == ("digits-cnn", 3, 900, 2)


def test_an_error_response_keeps_its_status_and_message():
    outcome = outcome_of_response(job(False), 503, oip_response.error_body("no ready worker for 'digits-cnn'"), None,
                                  0.001, "probabilities")

    assert not outcome.answered
    assert (outcome.status, outcome.error) == (503, "no ready worker for 'digits-cnn'")


def test_a_200_answer_to_someone_elses_request_is_an_error():
    body = json.dumps({"id": "r-2", "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 10],
                                                 "data": [0.1] * 10}]}).encode()

    outcome = outcome_of_response(job(False), 200, body, None, 0.001, "probabilities")

    assert not outcome.answered and "does not match" in outcome.error


def answered(model: str, label: int, predicted: int, latency_s: float, variant: str) -> Outcome:
    return Outcome(model=model, binary=False, label=label, status=200, latency_s=latency_s, variant=variant,
                   predicted=predicted, slo_status="met", queue_us=100, compute_us=1000, batch_size=1)


def test_report_counts_accuracy_routing_and_every_failure():
    family_outcomes = [
        answered("digits", 1, 1, 0.010, "digits-cnn"),
        answered("digits", 2, 2, 0.020, "digits-cnn"),
        answered("digits", 3, 5, 0.030, "digits-linear"),
        Outcome(model="digits", binary=True, label=4, status=504, latency_s=0.2, error="deadline exceeded: late"),
    ]
    variant_outcomes = [
        answered("digits-cnn", 1, 1, 0.004, "digits-cnn"),
        answered("digits-linear", 1, 7, 0.002, "digits-linear"),
        Outcome(model="digits-linear", binary=False, label=2, status=0, latency_s=30.0,
                error="ServerDisconnectedError: gone"),
    ]

    report = format_report(family=FAMILY, family_outcomes=family_outcomes, variant_outcomes=variant_outcomes,
                           family_elapsed_s=0.5)

    assert "4 requests (3 JSON, 1 binary tensors), 8 requests/s" in report
    assert re.search(r"answered\s+3 of 4 \(HTTP 200\), errors 1", report)
    assert re.search(r"accuracy\s+0\.667 \(2/3 correct", report)
    assert "served by    digits-cnn 2, digits-linear 1" in report
    rows = {line.split()[0]: line.split() for line in report.splitlines() if line.startswith("  digits-")}
    assert rows["digits-cnn"][1:4] == ["0.980", "1.000", "1/1"]
    assert rows["digits-cnn"][-1] == "2"
    assert rows["digits-linear"][1:4] == ["0.950", "0.000", "1/2"]
    assert "errors (2 of 7 requests):" in report
    assert "1 x HTTP 504 from digits: deadline exceeded: late" in report
    assert "1 x no response from digits-linear: ServerDisconnectedError: gone" in report
    assert exit_code([*family_outcomes, *variant_outcomes]) == 1
    assert exit_code(family_outcomes[:3]) == 0
