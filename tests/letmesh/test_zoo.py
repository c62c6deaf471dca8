"""The demo model repository: real trained models, honest accuracy, idempotent rebuilds."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from letmesh.zoo import HELDOUT, build_zoo, quiet_jit

DIGITS = ("digits-linear", "digits-mlp", "digits-wide", "digits-cnn")
# Lowered for test speed; every accuracy below is still measured on the full held-out split.
EPOCHS_SCALE = 0.5


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[str]]:
    root = tmp_path_factory.mktemp("zoo")
    lines: list[str] = []
    manifests = build_zoo(root, progress=lines.append, epochs_scale=EPOCHS_SCALE)
    return root, manifests, lines


def load(path: Path) -> torch.jit.ScriptModule:
    with quiet_jit():
        return torch.jit.load(str(path)).eval()


def by_variant(manifests: list[dict]) -> dict[str, dict]:
    return {m["variant"]: m for m in manifests}


def file_times(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def heldout(root: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(root / HELDOUT) as data:
        return data["images"], data["labels"]


def test_digits_family_has_at_least_four_variants_in_manifest_format(zoo):
    root, manifests, _ = zoo
    variants = by_variant(manifests)
    assert [m["variant"] for m in manifests if m["family"] == "digits"] == list(DIGITS)
    for name in DIGITS:
        m = variants[name]
        on_disk = json.loads((root / name / "manifest.json").read_text())
        assert on_disk == m
        assert m["backend"] == "torchscript" and m["version"] == "1"
        assert m["artifact"] == "model.pt"
        assert m["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 64]}]
        assert m["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
        assert m["max_batch"] >= 1 and m["default_slo_ms"] > 0
        assert set(m["profile_ms"]) == {"1", str(m["max_batch"])}
        assert all(v > 0 for v in m["profile_ms"].values())
        assert m["energy_j"] > 0 and "estimate" in m["description"]
        assert "16.0" in m["description"] and "16.0" in m["preprocess"]


def test_accuracy_is_the_artifacts_own_top1_on_the_heldout_split(zoo):
    root, manifests, _ = zoo
    images, labels = heldout(root)
    assert images.dtype == np.float32 and images.shape == (540, 64)
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert 0.0 <= images.min() and images.max() <= 1.0
    for m in manifests:
        if m["family"] != "digits":
            continue
        model = load(root / m["variant"] / "model.pt")
        with torch.no_grad():
            predicted = model(torch.from_numpy(images)).argmax(dim=1).numpy()
        accuracy = float((predicted == labels).mean())
        assert accuracy > 0.8, m["variant"]
        assert abs(accuracy - m["accuracy"]) < 1e-6, m["variant"]
        assert m["accuracy_metric"] == "top1 on 540 held-out digits"


def test_variants_differ_clearly_in_compute_cost(zoo):
    root, manifests, _ = zoo
    flops = {}
    for name in DIGITS:
        model = load(root / name / "model.pt")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 64))
        flops[name] = counter.get_total_flops()
        assert by_variant(manifests)[name]["flops_per_row"] == flops[name]
    costs = [flops[name] for name in DIGITS]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    assert max(costs) == flops["digits-cnn"]
    assert flops["digits-cnn"] >= 100 * flops["digits-linear"]


def test_manifest_sha256_and_size_describe_the_artifact(zoo):
    root, manifests, _ = zoo
    for m in manifests:
        blob = (root / m["variant"] / m["artifact"]).read_bytes()
        assert m["sha256"] == hashlib.sha256(blob).hexdigest()
        assert m["size_bytes"] == len(blob)


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_artifacts_return_probability_rows(zoo, batch):
    root, _, _ = zoo
    images, _ = heldout(root)
    for name in DIGITS:
        with torch.no_grad():
            out = load(root / name / "model.pt")(torch.from_numpy(images[:batch]))
        assert out.shape == (batch, 10) and out.dtype == torch.float32
        assert torch.all(out >= 0)
        torch.testing.assert_close(out.sum(dim=1), torch.ones(batch), atol=1e-5, rtol=0)


def test_trivial_identity_returns_its_input(zoo):
    root, manifests, _ = zoo
    m = by_variant(manifests)["identity"]
    assert m["family"] == "trivial" and m["accuracy"] == 1.0
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert m["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 16]}]
    x = torch.randn(5, 16)
    with torch.no_grad():
        y = load(root / "identity" / "model.pt")(x)
    assert torch.equal(y, x)


def test_progress_reports_each_trained_variant_with_its_accuracy(zoo):
    _, manifests, lines = zoo
    for index, name in enumerate(DIGITS, start=1):
        accuracy = by_variant(manifests)[name]["accuracy"]
        assert any(f"{name} ({index}/4)" in line and f"accuracy {accuracy:.3f}" in line
                   for line in lines)


def test_second_build_of_a_complete_repository_writes_nothing(zoo):
    root, manifests, _ = zoo
    before = file_times(root)
    lines: list[str] = []
    again = build_zoo(root, progress=lines.append, epochs_scale=EPOCHS_SCALE)
    assert again == manifests
    assert file_times(root) == before
    assert not any(line.startswith("training") for line in lines)


def test_corrupted_artifact_is_rebuilt_and_intact_variants_are_kept(zoo, tmp_path):
    root, manifests, _ = zoo
    copy = tmp_path / "zoo"
    shutil.copytree(root, copy)
    broken = copy / "digits-linear" / "model.pt"
    broken.write_bytes(broken.read_bytes()[:-100] + b"\0" * 100)
    before = file_times(copy)

    lines: list[str] = []
    rebuilt = by_variant(build_zoo(copy, progress=lines.append, epochs_scale=EPOCHS_SCALE))

    after = file_times(copy)
    changed = {path for path in after if after[path] != before[path]}
    assert changed == {"digits-linear/model.pt", "digits-linear/manifest.json"}
    blob = broken.read_bytes()
    assert rebuilt["digits-linear"]["sha256"] == hashlib.sha256(blob).hexdigest()
    images, labels = heldout(copy)
    with torch.no_grad():
        predicted = load(broken)(torch.from_numpy(images)).argmax(dim=1).numpy()
    accuracy = float((predicted == labels).mean())
    assert accuracy > 0.8
    assert accuracy == pytest.approx(rebuilt["digits-linear"]["accuracy"], abs=1e-6)
    trained = [line for line in lines if line.startswith("training")]
    assert trained == ["training digits-linear (1/4) ..."]


@pytest.mark.parametrize("damage", ["garbled manifest", "missing heldout"])
def test_damaged_repository_is_repaired(zoo, tmp_path, damage):
    root, manifests, _ = zoo
    copy = tmp_path / "zoo"
    shutil.copytree(root, copy)
    if damage == "garbled manifest":
        (copy / "identity" / "manifest.json").write_text("{not json")
    else:
        (copy / HELDOUT).unlink()

    repaired = by_variant(build_zoo(copy, epochs_scale=EPOCHS_SCALE))

    assert (copy / HELDOUT).read_bytes() == (root / HELDOUT).read_bytes()
    for name in DIGITS:
        assert repaired[name] == by_variant(manifests)[name]
    identity = json.loads((copy / "identity" / "manifest.json").read_text())
    blob = (copy / "identity" / "model.pt").read_bytes()
    assert identity == repaired["identity"]
    assert identity["sha256"] == hashlib.sha256(blob).hexdigest()


def test_digits_variants_list_an_onnx_export_beside_the_torchscript_artifact(zoo):
    root, manifests, _ = zoo
    for name in DIGITS:
        m = by_variant(manifests)[name]
        assert set(m["artifacts"]) == {"torchscript", "onnx"}
        served = m["artifacts"]["torchscript"]
        assert (served["artifact"], served["sha256"], served["accuracy"]) == (m["artifact"], m["sha256"], m["accuracy"])
        onnx = m["artifacts"]["onnx"]
        blob = (root / name / onnx["artifact"]).read_bytes()
        assert onnx["artifact"] == "model.onnx"
        assert onnx["sha256"] == hashlib.sha256(blob).hexdigest() and onnx["size_bytes"] == len(blob)
        assert onnx["max_abs_diff"] <= 1e-5
        assert abs(onnx["accuracy"] - m["accuracy"]) <= 1 / 540  # at most one near-tie flips
        assert all(v > 0 for v in onnx["profile_ms"].values())


def test_building_for_onnx_rewrites_only_the_digits_manifests_and_serves_the_onnx_file(zoo, tmp_path):
    from controller.repository import load_repository

    root, manifests, _ = zoo
    copy = tmp_path / "zoo"
    shutil.copytree(root, copy)
    before = file_times(copy)

    onnx = by_variant(build_zoo(copy, epochs_scale=EPOCHS_SCALE, backend="onnx"))

    after = file_times(copy)
    assert {p for p in after if after[p] != before[p]} == {f"{name}/manifest.json" for name in DIGITS}
    variants = load_repository(copy)
    for name in DIGITS:
        assert onnx[name]["backend"] == "onnx" and onnx[name]["artifact"] == "model.onnx"
        assert onnx[name]["accuracy"] == onnx[name]["artifacts"]["onnx"]["accuracy"]
        assert variants[name].spec().backend == "onnx"
        assert variants[name].artifact == copy / name / "model.onnx"
    assert variants["identity"].spec().backend == "torchscript"
    back = by_variant(build_zoo(copy, epochs_scale=EPOCHS_SCALE))
    assert all(back[name] == by_variant(manifests)[name] for name in DIGITS)


def test_an_unknown_serving_backend_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="tensorrt"):
        build_zoo(tmp_path / "zoo", backend="tensorrt")
    assert not (tmp_path / "zoo").exists()
