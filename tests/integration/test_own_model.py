"""Serving your own model: a torch model exported by the user, added with `letmesh repo add`, served by
a whole mesh over HTTP with the shapes and values the model computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from tests.controller.test_model_import import export, scorer
from tests.integration.test_serving import post


def repo_add(model_file: Path, repo: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "letmesh", "repo", "add", str(model_file), "--repository", str(repo),
                           "--name", name, "--family", "scorer", "--accuracy", "0.87",
                           "--input", "features:FP32:-1,6", *extra],
                          capture_output=True, text=True, timeout=120)


def test_a_model_added_with_repo_add_is_served_through_http(mesh_factory, tmp_path: Path) -> None:
    model = scorer()
    repo = tmp_path / "repo"
    added = repo_add(export(model, tmp_path / "scorer.pt"), repo, "scorer-ts", "--output", "scores:FP32:-1,3")
    assert added.returncode == 0, added.stderr
    assert "added scorer-ts (family scorer, torchscript)" in added.stdout
    # Its family's other variant names its output "scores": one added without saying so would
    # answer "output", and a request to the family could not know which name comes back.
    mismatched = repo_add(export(model, tmp_path / "scorer.onnx"), repo, "scorer-onnx")
    assert mismatched.returncode == 1
    assert "outputs output:FP32:-1,3 differ from scores:FP32:-1,3 of 'scorer-ts'" in mismatched.stderr
    added = repo_add(tmp_path / "scorer.onnx", repo, "scorer-onnx", "--output", "scores:FP32:-1,3")
    assert added.returncode == 0, added.stderr

    refused = repo_add(tmp_path / "scorer.pt", repo, "scorer-wrong", "--output", "scores:FP32:-1,5")
    assert refused.returncode == 1 and "output 'scores' has shape [1, 3]" in refused.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["scorer-onnx", "scorer-ts"]

    mesh = mesh_factory(repository=repo)
    rows = np.linspace(-1.0, 1.0, 3 * 6, dtype=np.float32).reshape(3, 6)
    with torch.no_grad():
        expected = model(torch.from_numpy(rows)).numpy()
    body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 6],
                                   "data": rows.ravel().tolist()}]}).encode()
    for name in ("scorer-ts", "scorer-onnx", "scorer"):
        status, _, raw = post(f"{mesh.http_url}/v2/models/{name}/infer", body)
        assert status == 200, (name, raw)
        reply = json.loads(raw)
        (out,) = reply["outputs"]
        assert out["shape"] == [3, 3] and out["name"] == "scores", name
        if name != "scorer":
            assert reply["parameters"]["letmesh_variant"] == name
        else:  # the family: the mesh picks one of the two
            assert reply["parameters"]["letmesh_variant"] in ("scorer-ts", "scorer-onnx")
        np.testing.assert_allclose(np.asarray(out["data"], dtype=np.float32).reshape(3, 3), expected, atol=1e-5)
