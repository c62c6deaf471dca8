"""Serving runtimes beside TorchScript: ONNX Runtime and torch.export programs, on real artifacts."""

from __future__ import annotations

import dataclasses
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents.error import ModelLoadError
from agents.model_runner import ModelRunner
from letmesh.zoo import HELDOUT, onnx_bytes
from protocol.types import TensorSpec, VariantSpec

DIGITS = ("digits-linear", "digits-mlp", "digits-wide", "digits-cnn")


def spec_of(manifest: dict, backend: str, **changes) -> VariantSpec:
    def specs(items: list[dict]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name=i["name"], datatype=i["datatype"], shape=tuple(i["shape"])) for i in items)

    entry = manifest["artifacts"][backend] if "artifacts" in manifest else manifest
    spec = VariantSpec(name=manifest["variant"], family=manifest["family"], sha256=entry["sha256"],
                       size_bytes=entry["size_bytes"], backend=backend, max_batch=manifest["max_batch"],
                       inputs=specs(manifest["inputs"]), outputs=specs(manifest["outputs"]))
    return dataclasses.replace(spec, **changes)


def runner_for(repo: Path, variant: str, backend: str, **changes) -> ModelRunner:
    manifest = json.loads((repo / variant / "manifest.json").read_text())
    artifact = repo / variant / manifest["artifacts"][backend]["artifact"]
    return ModelRunner(spec_of(manifest, backend, **changes), artifact)


@pytest.fixture(scope="module")
def images(digits_repo: Path) -> np.ndarray:
    with np.load(digits_repo / HELDOUT) as data:
        return data["images"]


def test_an_onnx_variant_on_a_gpu_without_the_cuda_provider_runs_on_the_host_and_says_so(digits_repo, images,
                                                                                        monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])  # the default package
    manifest = json.loads((digits_repo / "digits-mlp" / "manifest.json").read_text())
    artifact = digits_repo / "digits-mlp" / manifest["artifacts"]["onnx"]["artifact"]
    on_gpu = ModelRunner(spec_of(manifest, "onnx"), artifact, "cuda:0")  # no ModelLoadError: nothing set aside
    on_cpu = ModelRunner(spec_of(manifest, "onnx"), artifact)

    np.testing.assert_array_equal(on_gpu.run([images[:9]])[0], on_cpu.run([images[:9]])[0])
    assert on_gpu.runtime == "onnx (on the host CPU: no CUDA provider in this onnxruntime)"
    assert on_cpu.runtime == "onnx"


@pytest.mark.parametrize("variant", DIGITS)
def test_onnx_and_torchscript_artifacts_of_a_variant_give_the_same_probabilities(digits_repo, images, variant):
    torchscript = runner_for(digits_repo, variant, "torchscript")
    onnx = runner_for(digits_repo, variant, "onnx")

    for batch in (1, 7, 32):
        (expected,) = torchscript.run([images[:batch]])
        (got,) = onnx.run([images[:batch]])
        assert got.dtype == np.float32 and got.shape == (batch, 10)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    (all_ts,) = torchscript.run([images])
    (all_onnx,) = onnx.run([images])
    np.testing.assert_array_equal(all_onnx.argmax(axis=1), all_ts.argmax(axis=1))


def test_onnx_runner_warms_up_every_batch_size_and_reads_received_frames(digits_repo, images):
    runner = runner_for(digits_repo, "digits-mlp", "onnx", max_batch=8)

    measured = runner.warm_up(repeats=2)

    assert sorted(measured) == [1, 2, 4, 8] and all(ms > 0 for ms in measured.values())
    frame = np.frombuffer(images[:3].tobytes(), dtype=np.float32).reshape(3, 64)  # read-only, like a zmq frame
    (out,) = runner.run([frame])
    np.testing.assert_allclose(out.sum(axis=1), np.ones(3), atol=1e-5)


@pytest.mark.parametrize(("damage", "says"), [
    (lambda blob: blob[: len(blob) // 2], "not a loadable ONNX model"),
    (lambda blob: b"\x00garbage" * 64, "not a loadable ONNX model"),
    (lambda blob: b"", "not a loadable ONNX model"),
])
def test_a_corrupt_onnx_artifact_fails_with_a_clear_error(digits_repo, tmp_path, damage, says):
    manifest = json.loads((digits_repo / "digits-mlp" / "manifest.json").read_text())
    broken = tmp_path / "model.onnx"
    broken.write_bytes(damage((digits_repo / "digits-mlp" / "model.onnx").read_bytes()))

    with pytest.raises(ModelLoadError, match=says) as raised:
        ModelRunner(spec_of(manifest, "onnx"), broken)

    assert "digits-mlp" in str(raised.value)


def test_an_onnx_model_that_disagrees_with_its_manifest_is_refused_at_load(digits_repo):
    manifest = json.loads((digits_repo / "digits-mlp" / "manifest.json").read_text())
    artifact = digits_repo / "digits-mlp" / "model.onnx"
    fp64 = (TensorSpec(name="image", datatype="FP64", shape=(-1, 64)),)
    two = (*fp64, TensorSpec(name="mask", datatype="FP32", shape=(-1, 64)))

    with pytest.raises(ModelLoadError, match="FP64 in the manifest but tensor\\(float\\)"):
        ModelRunner(spec_of(manifest, "onnx", inputs=fp64), artifact)
    with pytest.raises(ModelLoadError, match="do not match the ONNX model"):
        ModelRunner(spec_of(manifest, "onnx", inputs=two), artifact)


def test_onnx_input_names_other_than_the_manifests_bind_by_position(tmp_path):
    blob = onnx_bytes(nn.Linear(4, 2).eval(), torch.zeros(2, 4), ["input_0"], ["output_0"])
    path = tmp_path / "m.onnx"
    path.write_bytes(blob)
    spec = VariantSpec(name="lin", family="lin", sha256="0" * 64, size_bytes=len(blob), backend="onnx", max_batch=4,
                       inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),),
                       outputs=(TensorSpec(name="y", datatype="FP64", shape=(-1, 2)),))

    (y,) = ModelRunner(spec, path).run([np.ones((3, 4), dtype=np.float32)])

    assert y.shape == (3, 2) and y.dtype == np.float64


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 3.0, x.sum(dim=1, keepdim=True)


def exported_program(path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(Scale().eval(), (torch.zeros(2, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def scale_spec(size: int) -> VariantSpec:
    return VariantSpec(name="scale", family="scale", sha256="0" * 64, size_bytes=size, backend="torch_export",
                       max_batch=8, inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 16)),),
                       outputs=(TensorSpec(name="tripled", datatype="FP32", shape=(-1, 16)),
                                TensorSpec(name="total", datatype="FP32", shape=(-1, 1))))


def test_a_torch_export_program_serves_every_batch_size(tmp_path):
    path = exported_program(tmp_path / "model.pt2")
    runner = ModelRunner(scale_spec(path.stat().st_size), path)

    measured = runner.warm_up(repeats=1)
    x = np.arange(5 * 16, dtype=np.float32).reshape(5, 16)
    tripled, total = runner.run([x])

    assert sorted(measured) == [1, 2, 4, 8]
    np.testing.assert_array_equal(tripled, x * 3.0)
    np.testing.assert_array_equal(total, x.sum(axis=1, keepdims=True))


def test_a_corrupt_torch_export_program_fails_with_a_clear_error(tmp_path):
    path = exported_program(tmp_path / "model.pt2")
    path.write_bytes(path.read_bytes()[:200])

    with pytest.raises(ModelLoadError, match="not a loadable torch.export program"):
        ModelRunner(scale_spec(200), path)


class Weighted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((16,), 2.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.w, x.sum(dim=1, keepdim=True)


class _RunsCode:
    """A pickle that runs code when loaded: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_a_torch_export_program_with_a_pickled_weight_is_refused_before_it_runs_anything(tmp_path):
    """torch.export.load unpickles a weight flagged ``use_pickle`` with full pickle: an artifact
    could run any code on every worker that loads it (and at ``letmesh repo add``)."""
    import zipfile

    good = tmp_path / "good.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(Weighted().eval(), (torch.zeros(2, 16),), dynamic_shapes=({0: batch},)),
                      str(good))
    runner = ModelRunner(scale_spec(good.stat().st_size), good)  # plain tensor weights load and serve
    np.testing.assert_array_equal(runner.run([np.ones((1, 16), np.float32)])[0], np.full((1, 16), 2.0))

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as archive, zipfile.ZipFile(evil, "w") as out:
        (config_name,) = [n for n in archive.namelist() if n.endswith("weights_config.json")]
        config = json.loads(archive.read(config_name))
        (entry,) = config["config"].values()
        entry["use_pickle"] = True
        for name in archive.namelist():
            data = archive.read(name)
            if name == config_name:
                data = json.dumps(config).encode()
            elif name.endswith("/weights/" + entry["path_name"]):
                data = pickle.dumps(_RunsCode(marker), protocol=2)
            out.writestr(name, data)

    with pytest.raises(ModelLoadError, match="pickled Python objects"):
        ModelRunner(scale_spec(evil.stat().st_size), evil)
    assert not marker.exists()
    runner = ModelRunner(scale_spec(good.stat().st_size), good)  # and loading is as before afterwards
    assert runner.run([np.ones((1, 16), np.float32)])[0][0, 0] == 2.0


def test_a_torch_export_archive_with_compiled_code_is_refused_before_loading(tmp_path):
    """An AOTInductor package in a .pt2 is a shared library torch loads with the program."""
    import zipfile

    path = exported_program(tmp_path / "model.pt2")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("model/data/aotinductor/model/model.so", b"\x7fELF not really")
    with pytest.raises(ModelLoadError, match="carries compiled code .*model.so"):
        ModelRunner(scale_spec(path.stat().st_size), path)


def test_an_unknown_backend_or_missing_artifact_is_a_load_error(tmp_path):
    spec = dataclasses.replace(scale_spec(1), backend="tensorrt")
    with pytest.raises(ModelLoadError, match="backend 'tensorrt' is not one of"):
        ModelRunner(spec, tmp_path / "nothing")
    with pytest.raises(ModelLoadError, match="missing"):
        ModelRunner(scale_spec(1), tmp_path / "nothing")


def test_loading_torchscript_on_purpose_prints_no_deprecation_notice(digits_repo):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner_for(digits_repo, "digits-linear", "torchscript")

    assert not [w for w in caught if "jit" in str(w.message)]
