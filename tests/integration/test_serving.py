"""A real mesh answers Open Inference Protocol clients: JSON, Triton's binary extension, errors."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from benchmarks.support.procfs import descendants
from letmesh.status import fetch_status, format_status
from mesh import cpu_policy
from tests.integration.conftest import wait_until


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def identity_body(values: list[float], **parameters) -> bytes:
    body = {"id": "r1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": values}]}
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body).encode()


def test_json_inference_returns_outputs_and_mesh_parameters(mesh) -> None:
    values = [float(i) for i in range(16)]
    status, _, raw = post(f"{mesh.http_url}/v2/models/identity/infer", identity_body(values))
    assert status == 200, raw
    body = json.loads(raw)
    assert body["id"] == "r1"
    assert body["model_name"] == "identity"
    (out,) = body["outputs"]
    assert out["name"] == "y" and out["shape"] == [1, 16] and out["data"] == values
    params = body["parameters"]
    assert params["letmesh_variant"] == "identity"
    assert params["letmesh_slo_status"] == "met"
    assert params["letmesh_compute_us"] >= 0 and params["letmesh_queue_us"] >= 0


def test_family_name_lets_the_mesh_choose_a_variant(mesh) -> None:
    status, _, raw = post(f"{mesh.http_url}/v2/models/trivial/infer", identity_body([1.0] * 16))
    assert status == 200, raw
    assert json.loads(raw)["parameters"]["letmesh_variant"] == "identity"


def test_triton_client_works_unchanged_with_binary_and_json_tensors(mesh) -> None:
    client = triton.InferenceServerClient(mesh.http_url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("identity")
        meta = client.get_model_metadata("identity")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
        x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
        for binary in (True, False):
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            wanted = triton.InferRequestedOutput("y", binary_data=binary)
            result = client.infer("identity", [tensor], outputs=[wanted])
            np.testing.assert_array_equal(result.as_numpy("y"), x)
        with pytest.raises(triton.InferenceServerException) as err:
            client.get_model_metadata("no-such-model")
        assert "unknown model" in str(err.value)
    finally:
        client.close()


def test_server_and_repository_metadata(mesh) -> None:
    with urllib.request.urlopen(f"{mesh.http_url}/v2", timeout=5) as resp:
        server = json.load(resp)
    assert server["name"] == "letmesh" and "binary_tensor_data" in server["extensions"]
    status, _, raw = post(f"{mesh.http_url}/v2/repository/index", b"")
    assert status == 200
    index = {entry["name"]: entry for entry in json.loads(raw)}
    assert index["identity"]["state"] == "READY"
    assert index["trivial"]["variants"] == ["identity"]


BAD_REQUESTS = [
    ("not json", b"{not json", {}, 400, "JSON"),
    ("wrong shape", json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 15],
                                            "data": [0.0] * 15}]}).encode(), {}, 400, "shape"),
    ("wrong dtype", json.dumps({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 16],
                                            "data": [0] * 16}]}).encode(), {}, 400, "FP32"),
    ("unknown input", json.dumps({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 16],
                                              "data": [0.0] * 16}]}).encode(), {}, 400, "z"),
    ("bad timeout", identity_body([0.0] * 16, timeout="soon"), {}, 400, "timeout"),
    ("binary size mismatch", b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,16],'
     b'"parameters":{"binary_data_size":64}}]}' + b"\0" * 10,
     {"Inference-Header-Content-Length": "86"}, 400, ""),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_a_clear_error_and_changes_nothing(mesh, case) -> None:
    _, body, headers, want_status, fragment = case
    before = fetch_status(mesh.controller_address)
    status, _, raw = post(f"{mesh.http_url}/v2/models/identity/infer", body, headers)
    assert status == want_status, raw
    message = json.loads(raw)["error"]
    assert fragment.lower() in message.lower()
    after = fetch_status(mesh.controller_address)
    assert [(w.worker_id, w.pid, w.restarts, w.state) for w in after.workers] == [
        (w.worker_id, w.pid, w.restarts, w.state) for w in before.workers
    ]
    status, _, _ = post(f"{mesh.http_url}/v2/models/identity/infer", identity_body([1.0] * 16))
    assert status == 200


def test_unknown_model_is_404(mesh) -> None:
    status, _, raw = post(f"{mesh.http_url}/v2/models/nope/infer", identity_body([0.0] * 16))
    assert status == 404 and "nope" in json.loads(raw)["error"]


def test_oversized_body_is_413(mesh) -> None:
    status, _, raw = post(f"{mesh.http_url}/v2/models/identity/infer", b"[" + b"0," * (9 << 20) + b"0]")
    assert status == 413
    assert "larger than" in json.loads(raw)["error"]


def test_a_deadline_that_cannot_be_met_is_504(mesh) -> None:
    status, _, raw = post(f"{mesh.http_url}/v2/models/identity/infer", identity_body([0.0] * 16, timeout=1))
    assert status == 504
    assert "deadline" in json.loads(raw)["error"]


def test_status_lists_agents_workers_and_models(mesh) -> None:
    status = fetch_status(mesh.controller_address)
    assert [a.agent_id for a in status.agents] == ["local"] and status.agents[0].alive
    assert [w.state for w in status.workers] == ["ready"]
    assert {m.name: m.state for m in status.models} == {"identity": "READY"}


def test_status_shows_how_a_worker_runs_against_its_warm_up(mesh) -> None:
    for _ in range(8):  # the worker reports once it has timed five batches
        status, _, raw = post(f"{mesh.http_url}/v2/models/identity/infer", identity_body([1.0] * 16))
        assert status == 200, raw
    wait_until(lambda: fetch_status(mesh.controller_address).workers[0].slowdown, 10, 0.1)
    (worker,) = fetch_status(mesh.controller_address).workers
    assert set(worker.slowdown) == {"identity"} and 0 < worker.slowdown["identity"] < float("inf")
    assert "compute vs warm-up:  identity x" in format_status(fetch_status(mesh.controller_address))
    # and the most memory its process has held (a CPU worker's own VmHWM): an interpreter with torch
    peak = re.search(r"identity  peak (\d+) MiB", format_status(fetch_status(mesh.controller_address)))
    assert peak and 50 < int(peak.group(1)) < 4096


@pytest.mark.skipif(not cpu_policy.supported() or cpu_policy.policy_of(0) == "other",
                    reason="needs SCHED_BATCH, and a test runner under SCHED_OTHER or SCHED_BATCH")
def test_the_gateway_and_workers_take_turns_on_a_core_and_the_control_plane_keeps_the_default(mesh) -> None:
    def policies(pid: int) -> set[str]:
        return {cpu_policy.policy_of(int(t)) for t in os.listdir(f"/proc/{pid}/task")}

    workers = [p for p in descendants(mesh.procs["agent"].pid)
               if b"agents.worker" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert workers
    # Every thread of the data plane (ZeroMQ's, the runtimes', the event loop's) runs SCHED_BATCH:
    # an arrival does not preempt the other mid-batch (mesh.cpu_policy). Rarely busy, the
    # controller and the agent keep what they were started with (this process's policy).
    assert policies(mesh.procs["gateway"].pid) == {"batch"}
    assert all(policies(w) == {"batch"} for w in workers)
    launcher = {cpu_policy.policy_of(os.getpid())}
    assert policies(mesh.procs["controller"].pid) == launcher
    assert policies(mesh.procs["agent"].pid) == launcher
