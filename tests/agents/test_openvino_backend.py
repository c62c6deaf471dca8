"""The OpenVINO backend: an ONNX artifact compiled by OpenVINO Runtime, in fp32 or, where a manifest
allows it and the CPU has it, bfloat16."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents.backend import openvino_bf16
from agents.error import ModelLoadError
from agents.model_runner import ModelRunner
from letmesh.zoo import HELDOUT, onnx_bytes
from protocol.types import TensorSpec, VariantSpec
from tests.agents.test_backend import DIGITS, spec_of


def ov_spec(manifest: dict, **changes) -> VariantSpec:
    """The spec of the variant's ONNX artifact, served by OpenVINO."""
    return dataclasses.replace(spec_of(manifest, "onnx"), backend="openvino", **changes)


def openvino_runner(repo: Path, variant: str, device: str = "cpu", **changes) -> ModelRunner:
    """The variant's ONNX artifact, served by OpenVINO."""
    manifest = json.loads((repo / variant / "manifest.json").read_text())
    artifact = repo / variant / manifest["artifacts"]["onnx"]["artifact"]
    return ModelRunner(ov_spec(manifest, **changes), artifact, device)


@pytest.fixture(scope="module")
def images(digits_repo: Path) -> np.ndarray:
    with np.load(digits_repo / HELDOUT) as data:
        return data["images"]


@pytest.mark.parametrize("variant", DIGITS)
def test_openvino_gives_the_probabilities_onnx_runtime_gives(digits_repo, images, variant):
    manifest = json.loads((digits_repo / variant / "manifest.json").read_text())
    artifact = digits_repo / variant / manifest["artifacts"]["onnx"]["artifact"]
    reference = ModelRunner(spec_of(manifest, "onnx"), artifact)
    served = openvino_runner(digits_repo, variant)

    for batch in (1, 7, 32):
        (expected,) = reference.run([images[:batch]])
        (got,) = served.run([images[:batch]])
        assert got.dtype == np.float32 and got.shape == (batch, 10)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert served.runtime == "openvino"


def test_outputs_of_one_batch_survive_the_next(digits_repo, images):
    runner = openvino_runner(digits_repo, "digits-mlp")

    (first,) = runner.run([images[:4]])
    kept = first.copy()
    runner.run([images[4:8]])

    np.testing.assert_array_equal(first, kept)


def test_bf16_computes_in_bfloat16_where_the_cpu_has_it_and_says_which(digits_repo, images):
    exact = openvino_runner(digits_repo, "digits-cnn")
    fast = openvino_runner(digits_repo, "digits-cnn", precision="bf16")

    (want,) = exact.run([images[:64]])
    (got,) = fast.run([images[:64]])

    if openvino_bf16():
        assert fast.runtime == "openvino (bf16)"
        assert not np.array_equal(got, want)  # the hint reached the compiler: other arithmetic
        np.testing.assert_allclose(got, want, rtol=0, atol=0.05)  # probabilities, 8 bits of mantissa
        assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.95
    else:
        assert fast.runtime == "openvino (bf16 asked; this CPU has none: fp32)"
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_fp32_is_kept_even_where_openvino_would_pick_bf16_by_itself(digits_repo, images):
    """On a CPU with AMX, OpenVINO computes in bf16 unless told otherwise: a manifest that asks
    nothing gets the artifact's own arithmetic."""
    (got,) = openvino_runner(digits_repo, "digits-wide").run([images[:64]])
    (want,) = openvino_runner(digits_repo, "digits-wide", precision="bf16").run([images[:64]])
    manifest = json.loads((digits_repo / "digits-wide" / "manifest.json").read_text())
    artifact = digits_repo / "digits-wide" / manifest["artifacts"]["onnx"]["artifact"]
    (reference,) = ModelRunner(spec_of(manifest, "onnx"), artifact).run([images[:64]])

    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5)
    if openvino_bf16():
        assert np.abs(want - reference).max() > np.abs(got - reference).max()


def test_openvino_warms_up_every_batch_size_and_reads_received_frames(digits_repo, images):
    runner = openvino_runner(digits_repo, "digits-mlp", max_batch=8)
    seen: set[int] = set()
    run = runner._run
    runner._run = lambda inputs: seen.add(len(inputs[0])) or run(inputs)

    measured = runner.warm_up(repeats=2)

    assert sorted(measured) == [1, 2, 4, 8] and all(ms > 0 for ms in measured.values())  # timed
    assert seen == set(range(1, 9))  # every size run once: its kernels fitted before a request needs them
    frame = np.frombuffer(images[:3].tobytes(), dtype=np.float32).reshape(3, 64)  # read-only, like a zmq frame
    (out,) = runner.run([frame])
    np.testing.assert_allclose(out.sum(axis=1), np.ones(3), atol=1e-5)


def test_on_a_gpu_openvino_runs_on_the_host_and_says_so(digits_repo, images):
    on_gpu = openvino_runner(digits_repo, "digits-mlp", "cuda:0")
    on_cpu = openvino_runner(digits_repo, "digits-mlp")

    np.testing.assert_array_equal(on_gpu.run([images[:9]])[0], on_cpu.run([images[:9]])[0])
    assert on_gpu.runtime == "openvino (on the host CPU: OpenVINO computes on the CPU)"


@pytest.mark.parametrize("damage", [lambda blob: blob[: len(blob) // 2], lambda blob: b"\x00garbage" * 64,
                                    lambda blob: b""])
def test_a_corrupt_artifact_fails_with_a_clear_error(digits_repo, tmp_path, damage):
    manifest = json.loads((digits_repo / "digits-mlp" / "manifest.json").read_text())
    broken = tmp_path / "model.onnx"
    broken.write_bytes(damage((digits_repo / "digits-mlp" / "model.onnx").read_bytes()))

    with pytest.raises(ModelLoadError, match="digits-mlp.*not an ONNX model OpenVINO can read: ") as raised:
        ModelRunner(ov_spec(manifest), broken)

    reason = str(raised.value).partition("can read: ")[2]
    assert reason in ("Model can't be parsed", "the graph is empty") or "parsed" in reason, reason


def test_a_model_that_disagrees_with_its_manifest_is_refused_at_load(digits_repo):
    manifest = json.loads((digits_repo / "digits-mlp" / "manifest.json").read_text())
    artifact = digits_repo / "digits-mlp" / "model.onnx"
    fp64 = (TensorSpec(name="image", datatype="FP64", shape=(-1, 64)),)
    two = (*fp64, TensorSpec(name="mask", datatype="FP32", shape=(-1, 64)))
    ten_classes = (TensorSpec(name="probabilities", datatype="FP32", shape=(-1, 12)),)

    with pytest.raises(ModelLoadError, match="FP64 in the manifest but f32"):
        ModelRunner(ov_spec(manifest, inputs=fp64), artifact)
    with pytest.raises(ModelLoadError, match="do not match the ONNX model"):
        ModelRunner(ov_spec(manifest, inputs=two), artifact)
    runner = ModelRunner(ov_spec(manifest, outputs=ten_classes, max_batch=2), artifact)
    with pytest.raises(ModelLoadError, match="has shape \\[1, 10\\] for 1 rows"):
        runner.warm_up(repeats=1)


def test_input_names_other_than_the_manifests_bind_by_position(tmp_path):
    net = nn.Linear(4, 2).eval()
    blob = onnx_bytes(net, torch.zeros(2, 4), ["input_0"], ["output_0"])
    path = tmp_path / "m.onnx"
    path.write_bytes(blob)
    spec = VariantSpec(name="lin", family="lin", sha256="0" * 64, size_bytes=len(blob), backend="openvino",
                       max_batch=4, inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),),
                       outputs=(TensorSpec(name="y", datatype="FP64", shape=(-1, 2)),))
    x = np.arange(12, dtype=np.float32).reshape(3, 4)

    (y,) = ModelRunner(spec, path).run([x])

    assert y.shape == (3, 2) and y.dtype == np.float64
    with torch.no_grad():
        np.testing.assert_allclose(y, net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
