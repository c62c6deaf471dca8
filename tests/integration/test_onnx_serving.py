"""A variant whose manifest names the ONNX backend serves through a whole mesh, with its own platform."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from letmesh.status import fetch_status, format_status
from letmesh.zoo import HELDOUT, MANIFEST, quiet_jit, serving
from protocol.types import WorkerState
from tests.integration.test_serving import post

VARIANT = "digits-mlp"


@pytest.fixture
def onnx_repo(digits_repo: Path, tmp_path: Path) -> Path:
    """One digits variant, served from its ONNX export (the TorchScript file stays beside it, unused)."""
    repo = tmp_path / "onnx-repo"
    shutil.copytree(digits_repo / VARIANT, repo / VARIANT)
    manifest = json.loads((repo / VARIANT / MANIFEST).read_text())
    (repo / VARIANT / MANIFEST).write_text(json.dumps(serving(manifest, "onnx")))
    return repo


def trained_probabilities(digits_repo: Path, variant: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` held-out images and what the trained TorchScript model answers for them."""
    with np.load(digits_repo / HELDOUT) as data:
        images = data["images"][:n]
    with quiet_jit():
        reference = torch.jit.load(str(digits_repo / variant / "model.pt")).eval()
    with torch.no_grad():
        return images, reference(torch.from_numpy(images)).numpy()


def test_an_onnx_variant_answers_with_the_probabilities_of_the_trained_model(mesh_factory, onnx_repo, digits_repo):
    images, expected = trained_probabilities(digits_repo, VARIANT, 3)

    mesh = mesh_factory(repository=onnx_repo)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [3, 64], "data": images.ravel().tolist()}]}
    status, _, raw = post(f"{mesh.http_url}/v2/models/{VARIANT}/infer", json.dumps(body).encode())

    assert status == 200, raw
    reply = json.loads(raw)
    (out,) = reply["outputs"]
    assert out["name"] == "probabilities" and out["shape"] == [3, 10]
    np.testing.assert_allclose(np.asarray(out["data"], dtype=np.float32).reshape(3, 10), expected, atol=1e-5, rtol=0)
    assert reply["parameters"]["letmesh_variant"] == VARIANT
    with urllib.request.urlopen(f"{mesh.http_url}/v2/models/{VARIANT}", timeout=5) as resp:
        assert json.load(resp)["platform"] == "onnxruntime_onnx"


def test_with_the_onnx_upgrade_a_torchscript_variant_answers_the_same_and_status_says_what_serves_it(
        mesh_factory, digits_repo, tmp_path):
    variant = "digits-cnn"
    repo = tmp_path / "torchscript-repo"
    shutil.copytree(digits_repo / variant, repo / variant)
    assert json.loads((repo / variant / MANIFEST).read_text())["backend"] == "torchscript"
    images, expected = trained_probabilities(digits_repo, variant, 4)

    mesh = mesh_factory(repository=repo, onnx_upgrade=True)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [4, 64], "data": images.ravel().tolist()}]}
    status, _, raw = post(f"{mesh.http_url}/v2/models/{variant}/infer", json.dumps(body).encode())

    assert status == 200, raw
    (out,) = json.loads(raw)["outputs"]
    np.testing.assert_allclose(np.asarray(out["data"], dtype=np.float32).reshape(4, 10), expected, atol=1e-5, rtol=0)
    # Whichever runtime won on this machine, the worker says which, and status shows it.
    mesh_status = fetch_status(mesh.controller_address, keys_dir=mesh.keys_dir)
    (worker,) = [w for w in mesh_status.workers if variant in w.variants and w.state == WorkerState.READY]
    runtime = worker.runtimes[variant]
    assert runtime.startswith("onnx (converted from TorchScript: ") or runtime.endswith("kept TorchScript)"), runtime
    assert f"{variant} runs on {runtime}" in format_status(mesh_status)
    # The agent's profiler and the worker read one verdict, kept beside the artifact.
    (verdict,) = (mesh.state_dir / "artifacts").glob("*.onnx.json")
    assert json.loads(verdict.read_text())["runtime"] == runtime.split()[0]


def test_openvino_variants_answer_through_the_mesh_and_status_says_which_arithmetic(mesh_factory, digits_repo,
                                                                                     tmp_path):
    repo = tmp_path / "openvino-repo"
    precisions = {"digits-mlp": "fp32", "digits-cnn": "bf16"}
    for variant, precision in precisions.items():
        shutil.copytree(digits_repo / variant, repo / variant)
        manifest = serving(json.loads((repo / variant / MANIFEST).read_text()), "onnx")
        (repo / variant / MANIFEST).write_text(json.dumps({**manifest, "backend": "openvino", "precision": precision}))

    mesh = mesh_factory(repository=repo)
    mesh_status = fetch_status(mesh.controller_address, keys_dir=mesh.keys_dir)
    for variant, precision in precisions.items():
        images, expected = trained_probabilities(digits_repo, variant, 5)
        body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [5, 64], "data": images.ravel().tolist()}]}
        status, _, raw = post(f"{mesh.http_url}/v2/models/{variant}/infer", json.dumps(body).encode())

        assert status == 200, raw
        (out,) = json.loads(raw)["outputs"]
        got = np.asarray(out["data"], dtype=np.float32).reshape(5, 10)
        np.testing.assert_allclose(got, expected, atol=1e-5 if precision == "fp32" else 0.05, rtol=0)
        with urllib.request.urlopen(f"{mesh.http_url}/v2/models/{variant}", timeout=5) as resp:
            assert json.load(resp)["platform"] == "openvino"
        (worker,) = [w for w in mesh_status.workers if variant in w.variants and w.state == WorkerState.READY]
        if precision == "fp32":
            assert variant not in worker.runtimes  # as its manifest says: nothing to tell
        else:
            runtime = worker.runtimes[variant]
            assert runtime.startswith("openvino (bf16"), runtime
            assert f"{variant} runs on {runtime}" in format_status(mesh_status)
