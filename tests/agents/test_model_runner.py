"""Loading real TorchScript artifacts, running batches, and the warm-up latency model."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents.error import ModelLoadError
from agents.model_runner import ModelRunner
from letmesh.zoo import build_trivial, quiet_jit
from protocol.types import TensorSpec, VariantSpec
from tests.agents.held_up import held_up

# ModelRunner loads with torch.jit.load, which warns that TorchScript is deprecated on every load.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")


def spec_of(manifest: dict, **changes) -> VariantSpec:
    def specs(items: list[dict]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name=i["name"], datatype=i["datatype"], shape=tuple(i["shape"])) for i in items)

    spec = VariantSpec(
        name=manifest["variant"],
        family=manifest["family"],
        sha256=manifest["sha256"],
        size_bytes=manifest["size_bytes"],
        backend=manifest["backend"],
        max_batch=manifest["max_batch"],
        inputs=specs(manifest["inputs"]),
        outputs=specs(manifest["outputs"]),
    )
    return dataclasses.replace(spec, **changes)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[VariantSpec, Path]:
    root = tmp_path_factory.mktemp("trivial")
    manifest = build_trivial(root)
    return spec_of(manifest), root / "identity" / manifest["artifact"]


def scripted(module: nn.Module, path: Path) -> Path:
    with quiet_jit():
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


class TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2.0, x.sum(dim=1, keepdim=True)


class NamedOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"total": x.sum(dim=1, keepdim=True), "doubled": x * 2.0}


def with_outputs(spec: VariantSpec, *outputs: tuple[str, str, tuple[int, ...]]) -> VariantSpec:
    return dataclasses.replace(spec, outputs=tuple(TensorSpec(name=n, datatype=d, shape=s) for n, d, s in outputs))


def test_identity_returns_its_input(identity) -> None:
    spec, path = identity
    runner = ModelRunner(spec, path)
    x = np.random.default_rng(0).standard_normal((3, 16), dtype=np.float32)

    (y,) = runner.run([x])

    assert y.dtype == np.float32 and y.shape == (3, 16)
    np.testing.assert_array_equal(y, x)


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning")
def test_read_only_input_from_a_received_frame_runs(identity) -> None:
    spec, path = identity
    runner = ModelRunner(spec, path)
    x = np.arange(32, dtype=np.float32)
    frame = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(2, 16)  # read-only, like a zmq frame
    assert not frame.flags.writeable

    (y,) = runner.run([frame])

    np.testing.assert_array_equal(y, x.reshape(2, 16))


def test_tuple_outputs_follow_the_spec_order_and_datatypes(identity, tmp_path: Path) -> None:
    spec, _ = identity
    spec = with_outputs(spec, ("doubled", "FP64", (-1, 16)), ("total", "FP32", (-1, 1)))
    runner = ModelRunner(spec, scripted(TwoOutputs(), tmp_path / "two.pt"))
    x = np.ones((4, 16), dtype=np.float32)

    doubled, total = runner.run([x])

    assert doubled.dtype == np.float64 and doubled.shape == (4, 16)
    np.testing.assert_array_equal(doubled, np.full((4, 16), 2.0))
    assert total.dtype == np.float32
    np.testing.assert_array_equal(total, np.full((4, 1), 16.0, dtype=np.float32))


def test_dict_outputs_are_picked_by_spec_name(identity, tmp_path: Path) -> None:
    spec, _ = identity
    spec = with_outputs(spec, ("doubled", "FP32", (-1, 16)), ("total", "FP32", (-1, 1)))
    runner = ModelRunner(spec, scripted(NamedOutputs(), tmp_path / "named.pt"))
    x = np.full((2, 16), 0.5, dtype=np.float32)

    doubled, total = runner.run([x])

    np.testing.assert_array_equal(doubled, np.ones((2, 16), dtype=np.float32))
    np.testing.assert_array_equal(total, np.full((2, 1), 8.0, dtype=np.float32))


@pytest.mark.parametrize(
    ("max_batch", "sizes"),
    [(1, [1]), (5, [1, 2, 4, 5]), (8, [1, 2, 4, 8]), (32, [1, 2, 4, 8, 16, 32])],
)
def test_warm_up_measures_powers_of_two_up_to_max_batch(identity, max_batch: int, sizes: list[int]) -> None:
    spec, path = identity
    runner = ModelRunner(dataclasses.replace(spec, max_batch=max_batch), path)

    measured = runner.warm_up(repeats=2)

    assert sorted(measured) == sizes
    assert all(ms > 0 for ms in measured.values())
    for size, ms in measured.items():
        assert runner.latency_s(size) == pytest.approx(ms / 1000.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_warm_up_is_not_inflated_by_a_neighbour_that_holds_the_core_now_and_then(identity, monkeypatch,
                                                                                 threads: int) -> None:
    monkeypatch.setattr("agents.model_runner.cpu_threads", lambda: threads)
    spec, path = identity
    runner = ModelRunner(dataclasses.replace(spec, max_batch=4), path)
    held_up(runner, every=2, seconds=0.05)
    measured = runner.warm_up(repeats=5)
    assert all(ms < 25 for ms in measured.values()), measured  # the tiny model's own time, not the 50 ms


def test_on_one_cpu_thread_warm_up_counts_only_the_models_own_time(identity, monkeypatch) -> None:
    monkeypatch.setattr("agents.model_runner.cpu_threads", lambda: 1)
    spec, path = identity
    runner = ModelRunner(dataclasses.replace(spec, max_batch=2), path)
    held_up(runner, every=1, seconds=0.05)  # held up on every run
    measured = runner.warm_up(repeats=3)
    assert all(ms < 25 for ms in measured.values()), measured


def test_example_inputs_fill_the_batch_dimension(identity) -> None:
    spec, path = identity
    (x,) = ModelRunner(spec, path).example_inputs(4)
    assert x.shape == (4, 16) and x.dtype == np.float32


def test_latency_before_warm_up_is_zero(identity) -> None:
    spec, path = identity
    assert ModelRunner(spec, path).latency_s(4) == 0.0


def test_latency_interpolates_between_and_extrapolates_beyond_measured_sizes(identity) -> None:
    spec, path = identity
    runner = ModelRunner(dataclasses.replace(spec, max_batch=8), path)
    ms = runner.warm_up(repeats=3)
    s = {b: v / 1000.0 for b, v in ms.items()}

    assert runner.latency_s(3) == pytest.approx((s[2] + s[4]) / 2)
    assert runner.latency_s(6) == pytest.approx(s[4] + (s[8] - s[4]) / 2)
    for lo, hi in ((2, 4), (4, 8)):
        for b in range(lo + 1, hi):
            assert min(s[lo], s[hi]) <= runner.latency_s(b) <= max(s[lo], s[hi])
    assert runner.latency_s(0) == pytest.approx(s[1])  # below the smallest: the smallest
    beyond = [runner.latency_s(b) for b in (8, 9, 12, 16, 64)]
    assert beyond == sorted(beyond) and len(set(beyond)) == len(beyond)  # strictly increasing
    assert runner.latency_s(16) == pytest.approx(2 * s[8])  # linear in the batch beyond


@pytest.mark.parametrize(("outputs", "says"), [
    ((("doubled", "INT8", (-1, 16)), ("total", "FP32", (-1, 1))), "float32 from the model but INT8"),
    ((("doubled", "FP32", (-1, 7)), ("total", "FP32", (-1, 1))), "shape \\[1, 16\\] for 1 rows"),
    ((("doubled", "FP32", (-1, 16)),), "gives 2 outputs, the manifest declares 1"),
], ids=["narrowing-datatype", "fixed-size", "count"])
def test_outputs_unlike_the_manifest_fail_the_load_instead_of_serving_wrong_numbers(identity, tmp_path: Path,
                                                                                     outputs, says) -> None:
    spec, _ = identity
    runner = ModelRunner(with_outputs(spec, *outputs), scripted(TwoOutputs(), tmp_path / "two.pt"))
    with pytest.raises(ModelLoadError, match=says):
        runner.warm_up(repeats=1)


class _ArgMax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.argmax(dim=1, keepdim=True)  # int64


def test_an_integer_output_declared_narrower_fails_the_load(identity, tmp_path: Path) -> None:
    spec, _ = identity
    path = scripted(_ArgMax(), tmp_path / "argmax.pt")
    with pytest.raises(ModelLoadError, match="int64 from the model but INT8"):
        ModelRunner(with_outputs(spec, ("y", "INT8", (-1, 1))), path).warm_up(repeats=1)
    ModelRunner(with_outputs(spec, ("y", "INT64", (-1, 1))), path).warm_up(repeats=1)  # as declared: fine


@pytest.mark.parametrize(("row_s", "runs"), [(0.001, {1: 6, 2: 6, 4: 6, 8: 6}),
                                             (0.06, {1: 5, 2: 3, 4: 3, 8: 3})])
def test_a_slow_variant_warms_up_in_fewer_runs_with_the_same_figures(identity, row_s: float,
                                                                     runs: dict[int, int]) -> None:
    """Each size gets a checked first run and up to five timed ones; a variant whose runs take a
    while stops once two or more add up to 0.2 s, so its worker is ready sooner."""
    spec, path = identity
    runner = ModelRunner(dataclasses.replace(spec, max_batch=8), path)
    run, now, calls = runner._run, [0.0], collections.Counter()

    def costly(inputs):
        rows = inputs[0].shape[0]
        calls[rows] += 1
        now[0] += rows * row_s  # what the model's own time would read on its clock
        return run(inputs)

    runner._run = costly
    runner.clock = lambda: lambda: now[0]
    measured = runner.warm_up()
    assert dict(calls) == runs
    assert measured == pytest.approx({b: b * row_s * 1000.0 for b in (1, 2, 4, 8)})
