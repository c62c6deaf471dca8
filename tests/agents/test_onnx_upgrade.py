"""A TorchScript variant served through ONNX Runtime: only when its conversion answers the same and
runs faster, decided once per artifact on a host, and never at the cost of serving it at all."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents import onnx_upgrade
from agents.model_runner import ModelRunner
from mesh.latency import reported
from protocol.types import TensorSpec, VariantSpec

SHAPE = (3, 16, 16)


def conv_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def save_torchscript(module: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.freeze(torch.jit.trace(module, torch.zeros(1, *shape))).save(str(path))
    return path


def spec_for(path: Path, shape: tuple[int, ...] = SHAPE, outputs: int = 10, datatype: str = "FP32") -> VariantSpec:
    return VariantSpec(name="conv", family="conv", sha256="0" * 64, size_bytes=path.stat().st_size,
                       backend="torchscript", max_batch=8,
                       inputs=(TensorSpec(name="image", datatype=datatype, shape=(-1, *shape)),),
                       outputs=(TensorSpec(name="logits", datatype="FP32", shape=(-1, outputs)),))


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    cache = tmp_path / "artifacts"
    cache.mkdir()
    return save_torchscript(conv_net(0), cache / ("a" * 64), SHAPE)


@pytest.fixture
def speed_not_judged(monkeypatch):
    """Whether ONNX Runtime is faster depends on the machine; these tests are about the rest."""
    monkeypatch.setattr(onnx_upgrade, "MIN_SPEEDUP", 0.0)
    monkeypatch.setattr(onnx_upgrade, "KEEP_SPEEDUP", 0.0)


def images(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, *SHAPE)).astype(np.float32)


def test_a_conversion_that_answers_the_same_is_served_and_decided_once(artifact, speed_not_judged, monkeypatch):
    spec = spec_for(artifact)
    upgraded = ModelRunner(spec, artifact, onnx_upgrade=True)
    plain = ModelRunner(spec, artifact)

    assert upgraded.backend == "onnx" and plain.backend == "torchscript"
    assert upgraded.runtime.startswith("onnx (converted from TorchScript: ") and "at batch 8" in upgraded.runtime
    for batch in (1, 5, 8):
        (got,), (want,) = upgraded.run([images(batch)]), plain.run([images(batch)])
        assert got.shape == (batch, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=onnx_upgrade.RTOL, atol=onnx_upgrade.ATOL)

    def no_export(*args):
        raise AssertionError("the verdict is kept: a second process must not convert again")

    monkeypatch.setattr(onnx_upgrade, "_export", no_export)
    assert ModelRunner(spec, artifact, onnx_upgrade=True).runtime == upgraded.runtime
    saved = json.loads(onnx_upgrade.verdict_path(spec, artifact).read_text())
    assert saved["runtime"] == "onnx" and saved["versions"]["torch"] == torch.__version__


def test_a_conversion_that_is_not_faster_is_not_served(artifact, monkeypatch):
    monkeypatch.setattr(onnx_upgrade, "MIN_SPEEDUP", math.inf)
    runner = ModelRunner(spec_for(artifact), artifact, onnx_upgrade=True)

    assert runner.backend == "torchscript"
    assert runner.runtime.startswith("torchscript (ONNX Runtime tried: ") and runner.runtime.endswith("kept TorchScript)")
    assert not onnx_upgrade.converted_path(spec_for(artifact), artifact).exists(), "a conversion that lost is not kept"
    assert runner.run([images(2)])[0].shape == (2, 10)


def test_a_conversion_whose_answers_differ_is_refused(artifact, speed_not_judged, monkeypatch, tmp_path):
    # The exporter is handed a model with other weights: a real ONNX model that answers differently.
    other = save_torchscript(conv_net(1), tmp_path / "other.pt", SHAPE)
    export = onnx_upgrade._export
    monkeypatch.setattr(onnx_upgrade, "_export", lambda spec, path, onnx_path: export(spec, other, onnx_path))

    runner = ModelRunner(spec_for(artifact), artifact, onnx_upgrade=True)

    assert runner.backend == "torchscript"
    assert "output 'logits' at batch 1 differs" in runner.runtime
    np.testing.assert_array_equal(runner.run([images(3)])[0], ModelRunner(spec_for(artifact), artifact).run([images(3)])[0])


class Svd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x.reshape(x.shape[0], 4, 4))


def test_a_model_the_exporter_cannot_express_is_served_by_torchscript(tmp_path):
    path = save_torchscript(Svd().eval(), tmp_path / "svd.pt", (16,))
    spec = spec_for(path, shape=(16,), outputs=4)

    runner = ModelRunner(spec, path, onnx_upgrade=True)

    assert runner.backend == "torchscript"
    assert "not converted: UnsupportedOperatorError" in runner.runtime and "svdvals" in runner.runtime
    assert runner.run([np.eye(4, dtype=np.float32).reshape(1, 16)])[0].tolist() == [[1.0, 1.0, 1.0, 1.0]]


def test_only_torchscript_on_a_cpu_with_floating_point_inputs_is_tried(artifact):
    spec = spec_for(artifact)
    assert onnx_upgrade.upgrade(dataclasses.replace(spec, backend="onnx"), artifact)[2] is None
    assert onnx_upgrade.upgrade(spec, artifact, device="cuda:0")[2] is None
    _, path, verdict = onnx_upgrade.upgrade(spec_for(artifact, datatype="INT64"), artifact)
    assert path == artifact and verdict.runtime == "torchscript" and "floating-point" in verdict.reason


class RowSums(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True) * 2.0


def test_a_model_with_a_variable_length_input_stays_on_torchscript_and_takes_any_length(tmp_path, speed_not_judged):
    # A conversion traced at one length would answer only that length.
    path = tmp_path / ("b" * 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.freeze(torch.jit.script(RowSums()).eval()).save(str(path))
    spec = VariantSpec(name="sums", family="sums", sha256="0" * 64, size_bytes=path.stat().st_size,
                       backend="torchscript", max_batch=8,
                       inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, -1)),),
                       outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 1)),))
    runner = ModelRunner(spec, path, onnx_upgrade=True)
    assert "varies" in runner.runtime
    for length in (1, 5):
        assert runner.run([np.ones((2, length), np.float32)])[0].tolist() == [[2.0 * length]] * 2


def test_a_damaged_conversion_is_converted_again(artifact, speed_not_judged):
    spec = spec_for(artifact)
    ModelRunner(spec, artifact, onnx_upgrade=True)
    converted = onnx_upgrade.converted_path(spec, artifact)
    blob = bytearray(converted.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    converted.write_bytes(bytes(blob))

    runner = ModelRunner(spec, artifact, onnx_upgrade=True)

    assert runner.backend == "onnx"
    np.testing.assert_allclose(runner.run([images(4)])[0], ModelRunner(spec, artifact).run([images(4)])[0],
                               rtol=onnx_upgrade.RTOL, atol=onnx_upgrade.ATOL)


def test_variants_that_name_one_artifact_differently_each_get_their_own_conversion(artifact, speed_not_judged):
    # One artifact (one sha256 in the agent's cache) behind two manifests that name its tensors
    # differently: each needs a graph with its own names.
    first = spec_for(artifact)
    second = dataclasses.replace(first, name="conv-renamed",
                                 inputs=(dataclasses.replace(first.inputs[0], name="pixels"),),
                                 outputs=(dataclasses.replace(first.outputs[0], name="scores"),))
    plain = ModelRunner(first, artifact).run([images(3)])[0]

    runners = [ModelRunner(first, artifact, onnx_upgrade=True), ModelRunner(second, artifact, onnx_upgrade=True)]

    assert [r.backend for r in runners] == ["onnx", "onnx"]
    for runner in runners:
        np.testing.assert_allclose(runner.run([images(3)])[0], plain, rtol=onnx_upgrade.RTOL, atol=onnx_upgrade.ATOL)
        assert sorted(runner.warm_up(repeats=1)) == [1, 2, 4, 8]
    assert onnx_upgrade.converted_path(first, artifact) != onnx_upgrade.converted_path(second, artifact)
    assert ModelRunner(first, artifact, onnx_upgrade=True).runtime == runners[0].runtime, "each verdict kept"


def test_a_worker_batching_below_the_judged_sizes_reuses_the_verdict_and_a_larger_batch_is_judged(artifact, monkeypatch):
    # The profiler opens the manifest's spec (max batch 8); a worker's plan caps the batch (here 2
    # and 4), or a new manifest raises it (16). Timings are set; runtimes and outputs are real.
    lead = {1: 1.4, 2: 1.3, 4: 1.2, 8: 1.1, 16: 1.05}
    timed: list[int] = []

    def speedup(ts, onnx, inputs):
        timed.append(inputs[0].shape[0])
        return lead[inputs[0].shape[0]]

    monkeypatch.setattr(onnx_upgrade, "_speedup", speedup)
    manifest = spec_for(artifact)
    profiled = ModelRunner(manifest, artifact, onnx_upgrade=True)
    assert profiled.backend == "onnx" and "1.10x at batch 8" in profiled.runtime
    assert timed == [1, 2, 4, 8]

    for capped in (2, 4):
        runner = ModelRunner(dataclasses.replace(manifest, max_batch=capped), artifact, onnx_upgrade=True)
        assert runner.backend == "onnx" and "1.10x at batch 8" in runner.runtime
    assert timed == [1, 2, 4, 8], "a batch within the judged sizes is not judged again"

    converted = onnx_upgrade.converted_path(manifest, artifact).read_bytes()
    larger = ModelRunner(dataclasses.replace(manifest, max_batch=16), artifact, onnx_upgrade=True)
    assert timed == [1, 2, 4, 8, 16], "only the sizes not judged before are timed"
    assert larger.backend == "onnx" and "1.40x at batch 1" in larger.runtime and "1.05x at batch 16" in larger.runtime
    assert onnx_upgrade.converted_path(manifest, artifact).read_bytes() == converted, "the conversion is kept"
    assert len(list(artifact.parent.glob("*.onnx.json"))) == 1, "one verdict per artifact and signature"


def test_a_larger_batch_that_fails_keeps_onnx_runtime_for_the_sizes_it_won(artifact, monkeypatch):
    def speedup(ts, onnx, inputs):
        if inputs[0].shape[0] > 8:
            raise RuntimeError("onnxruntime: out of memory")
        return 1.3

    monkeypatch.setattr(onnx_upgrade, "_speedup", speedup)
    manifest = spec_for(artifact)
    assert ModelRunner(manifest, artifact, onnx_upgrade=True).backend == "onnx"

    larger = ModelRunner(dataclasses.replace(manifest, max_batch=16), artifact, onnx_upgrade=True)

    assert larger.runtime.startswith("onnx up to batch 8, torchscript above (converted from TorchScript: 1.30x at batch 1")
    assert "above batch 8: not converted: RuntimeError: onnxruntime: out of memory" in larger.runtime
    assert onnx_upgrade.converted_path(manifest, artifact).exists(), "the conversion others serve by is kept"
    plain = ModelRunner(manifest, artifact)
    for batch in (4, 12):
        np.testing.assert_allclose(larger.run([images(batch)])[0], plain.run([images(batch)])[0],
                                   rtol=onnx_upgrade.RTOL, atol=onnx_upgrade.ATOL)
    assert ModelRunner(manifest, artifact, onnx_upgrade=True).backend == "onnx"


def test_a_split_verdict_decides_for_a_worker_of_any_max_batch(artifact, monkeypatch):
    # A loss within the judged sizes ends ONNX Runtime's range for every larger one too.
    lead = {1: 1.4, 2: 1.2, 4: 0.98, 8: 0.95}
    monkeypatch.setattr(onnx_upgrade, "_speedup", lambda ts, onnx, inputs: lead[inputs[0].shape[0]])
    manifest = spec_for(artifact)
    first = ModelRunner(manifest, artifact, onnx_upgrade=True).runtime
    assert first.startswith("onnx up to batch 2, torchscript above")

    def no_export(*args):
        raise AssertionError("the verdict covers this max batch: nothing is converted or timed again")

    monkeypatch.setattr(onnx_upgrade, "_export", no_export)
    monkeypatch.setattr(onnx_upgrade, "_speedup", no_export)
    for max_batch in (2, 16):
        runner = ModelRunner(dataclasses.replace(manifest, max_batch=max_batch), artifact, onnx_upgrade=True)
        assert runner.runtime == first


def test_a_conversion_gone_before_the_worker_opens_it_leaves_the_variant_on_torchscript(artifact, speed_not_judged,
                                                                                        monkeypatch):
    # Another process judged the artifact again between this one's verdict and its load, and kept
    # no conversion: the original artifact still serves.
    from agents import model_runner

    decided = model_runner.upgrade

    def raced(spec, path, device="cpu"):
        spec, converted, verdict = decided(spec, path, device)
        converted.unlink()
        return spec, converted, verdict

    monkeypatch.setattr(model_runner, "upgrade", raced)
    runner = ModelRunner(spec_for(artifact), artifact, onnx_upgrade=True)

    assert runner.backend == "torchscript" and runner.runtime.startswith("torchscript (the ONNX conversion could not be opened")
    np.testing.assert_array_equal(runner.run([images(3)])[0], ModelRunner(spec_for(artifact), artifact).run([images(3)])[0])


def test_a_conversion_kept_per_artifact_alone_is_not_served_and_is_removed(artifact, speed_not_judged):
    # The cache's earlier layout: one conversion and verdict per artifact, whatever the manifest.
    legacy = artifact.with_name(artifact.name + ".onnx"), artifact.with_name(artifact.name + ".onnx.json")
    legacy[0].write_bytes(b"not a model")
    legacy[1].write_text(json.dumps({"runtime": "onnx", "reason": "stale"}))

    runner = ModelRunner(spec_for(artifact), artifact, onnx_upgrade=True)

    assert runner.backend == "onnx" and "stale" not in runner.runtime
    assert not any(p.exists() for p in legacy)


def test_processes_opening_one_artifact_at_once_convert_it_once(artifact, speed_not_judged, monkeypatch):
    calls = []
    export = onnx_upgrade._export

    def counted(*args):
        calls.append(threading.get_ident())
        export(*args)

    monkeypatch.setattr(onnx_upgrade, "_export", counted)
    verdicts = []
    threads = [threading.Thread(target=lambda: verdicts.append(onnx_upgrade.upgrade(spec_for(artifact), artifact)[2]))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert len(calls) == 1 and len(verdicts) == 3 and len(set(verdicts)) == 1


def test_an_attempt_that_fails_midway_leaves_the_variant_on_torchscript(artifact, monkeypatch):
    def broken(*args):
        raise RuntimeError("onnxruntime: out of memory")

    monkeypatch.setattr(onnx_upgrade, "_judge", broken)
    runner = ModelRunner(spec_for(artifact), artifact, onnx_upgrade=True)

    assert runner.backend == "torchscript" and "not converted: RuntimeError: onnxruntime: out of memory" in runner.runtime
    assert not onnx_upgrade.converted_path(spec_for(artifact), artifact).exists()
    assert runner.run([images(2)])[0].shape == (2, 10)


def test_onnx_serves_the_batch_sizes_up_to_its_first_loss():
    up_to = onnx_upgrade.onnx_up_to
    assert up_to({1: 1.4, 2: 1.3, 4: 1.1, 8: 0.99}) == 4
    assert up_to({1: 1.4, 2: 1.03, 4: 1.0, 8: 0.9}) == 4, "past batch 1, as fast is enough"
    assert up_to({1: 1.4, 2: 0.9, 4: 1.2, 8: 1.3}) == 1, "a win past a loss does not count"
    assert up_to({1: 1.04, 2: 1.3}) == 0, "at batch 1 it must win by MIN_SPEEDUP to be worth converting"
    assert up_to({8: 1.2, 1: 1.3, 4: 1.2, 2: 1.3}) == 8


def test_where_onnx_wins_only_at_small_batches_each_runtime_serves_its_own_sizes(artifact, monkeypatch):
    # ONNX Runtime's lead shrinking with the batch, as measured on a ResNet-18: the timings are set,
    # the runtimes and their outputs are real.
    lead = {1: 1.4, 2: 1.2, 4: 0.98, 8: 0.95}
    timed: list[int] = []

    def speedup(ts, onnx, inputs):
        timed.append(inputs[0].shape[0])
        return lead[inputs[0].shape[0]]

    monkeypatch.setattr(onnx_upgrade, "_speedup", speedup)
    from agents import model_runner

    served: list[tuple[str, int]] = []
    real_open = model_runner.open_backend

    def recording(spec, path, device="cpu"):
        run = real_open(spec, path, device)
        return lambda inputs: served.append((spec.backend, inputs[0].shape[0])) or run(inputs)

    monkeypatch.setattr(model_runner, "open_backend", recording)
    spec = spec_for(artifact)
    runner = ModelRunner(spec, artifact, onnx_upgrade=True)

    assert runner.runtime.startswith("onnx up to batch 2, torchscript above (converted from TorchScript: 1.40x at batch 1, "
                                     "1.20x at batch 2, 0.98x at batch 4, outputs within")
    assert timed == [1, 2, 4], "no size past ONNX Runtime's first loss is timed"
    plain = ModelRunner(spec, artifact)
    for batch in (1, 2, 3, 8):
        served.clear()
        np.testing.assert_allclose(runner.run([images(batch)])[0], plain.run([images(batch)])[0],
                                   rtol=onnx_upgrade.RTOL, atol=onnx_upgrade.ATOL)
        assert served[0] == ("onnx" if batch <= 2 else "torchscript", batch)
    # The warm-up curve has a point on each side of the switch (batch 3 runs on TorchScript);
    # the worker reports the warm-up sizes, the curve a gateway rebuilds.
    measured = runner.warm_up(repeats=1)
    assert sorted(measured) == [1, 2, 3, 4, 8]
    assert reported(measured, spec.max_batch) == tuple(measured[b] for b in (1, 2, 4, 8))
    saved = json.loads(onnx_upgrade.verdict_path(spec, artifact).read_text())
    assert saved["runtime"] == "mixed" and saved["onnx_up_to"] == 2
    assert onnx_upgrade.converted_path(spec, artifact).exists(), "the conversion serves the small batches: it is kept"
    assert ModelRunner(spec, artifact, onnx_upgrade=True).runtime == runner.runtime, "decided once"
