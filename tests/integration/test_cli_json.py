"""``--json`` output of ``letmesh status``, ``profile`` and ``bandit report`` against a live mesh:
what a script reading stdout gets is JSON alone, and it describes the mesh that is running."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from letmesh.launcher import LocalMesh

QUICK_PROFILING = {"LETMESH_CONTROLLER_PROFILE_REPEATS": "3", "LETMESH_CONTROLLER_PROFILE_COLOCATION": "0"}


def letmesh(*argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "letmesh", *argv], capture_output=True, text=True, timeout=timeout_s)


def infer(mesh: LocalMesh, model: str) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}).encode()
    request = urllib.request.Request(f"{mesh.http_url}/v2/models/{model}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200


def test_status_profile_and_bandit_report_print_json_describing_the_live_mesh(mesh_factory) -> None:
    mesh = mesh_factory(extra_env=QUICK_PROFILING)
    keys = ["--controller", mesh.controller_address, "--keys", str(mesh.keys_dir)]
    infer(mesh, "trivial")  # a family request: logged as a bandit decision

    status = letmesh("status", *keys, "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    (agent,) = doc["agents"]
    assert agent["agent_id"] == "local" and agent["alive"] is True and agent["devices"][0]["cores"] >= 1
    assert any(w["state"] == "ready" and w["variants"] == ["identity"] for w in doc["workers"])
    assert {m["name"]: m["state"] for m in doc["models"]}["identity"] == "READY"
    assert doc["gateways"] == [f"tcp://127.0.0.1:{mesh.data_port}"]  # the address, without its server key

    profile = letmesh("profile", *keys, "--wait", "--wait-timeout", "90", "--json")
    assert profile.returncode == 0, profile.stderr
    doc = json.loads(profile.stdout)  # the progress lines went to stderr
    assert doc["running"] == []
    assert {(s["variant"], s["device_kind"]) for s in doc["samples"]} == {("identity", "cpu")}
    assert all(s["p50_ms"] > 0 and s["batch"] >= 1 for s in doc["samples"])

    report = letmesh("bandit", "report", "--state-dir", str(mesh.state_dir), "--family", "trivial", "--json")
    assert report.returncode == 0, report.stderr
    (family,) = json.loads(report.stdout)["families"]
    assert family["family"] == "trivial" and family["estimates"] is None  # no model saved before any feedback

    missing = letmesh("bandit", "report", "--state-dir", str(mesh.state_dir / "nowhere"), "--json")
    assert missing.returncode == 1 and missing.stdout == "" and "no controller state" in missing.stderr


def test_profile_wait_that_runs_out_says_so_and_exits_1(mesh_factory) -> None:
    # Profiling that cannot finish within --wait-timeout: what is stored so far, and not a success.
    mesh = mesh_factory(extra_env={"LETMESH_CONTROLLER_PROFILE_REPEATS": "5000000"})
    keys = ["--controller", mesh.controller_address, "--keys", str(mesh.keys_dir)]

    profile = letmesh("profile", *keys, "--wait", "--wait-timeout", "1", "--json")

    assert profile.returncode == 1, profile.stderr
    (running,) = json.loads(profile.stdout)["running"]  # "<agent>: <done>/<measurements>"
    assert running.startswith("local: ")
    assert f"profiling still running ({running}) after --wait-timeout 1 s" in profile.stderr
