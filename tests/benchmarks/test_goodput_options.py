"""The goodput benchmark's regime: measured by default, fixed by --slo-ms / --max-batch."""

from __future__ import annotations

import io
import zipfile

import pytest

from benchmarks import goodput

SERVED_MS = {1: 2.0, 2: 3.0, 4: 5.0, 8: 9.0, 16: 17.0}


def test_by_default_the_slo_is_the_measured_one_and_the_max_batch_fits_half_of_it() -> None:
    opts = goodput.parse_options(["--models", "small"])
    assert goodput.regime(SERVED_MS, 40.0, opts) == (40.0, 16)
    assert goodput.regime(SERVED_MS, 12.0, opts) == (12.0, 4)


def test_a_fixed_slo_and_max_batch_replace_what_the_host_measured() -> None:
    assert goodput.regime(SERVED_MS, 40.0, goodput.parse_options(["--models", "small", "--slo-ms", "20"])) == (20.0, 8)
    fixed = goodput.parse_options(["--models", "medium", "--slo-ms", "300", "--max-batch", "16"])
    assert goodput.regime(SERVED_MS, 12.0, fixed) == (300.0, 16)
    assert goodput.regime(SERVED_MS, 12.0, goodput.parse_options(["--max-batch", "2"])) == (12.0, 2)


@pytest.mark.parametrize("argv", [
    ["--slo-ms", "100"],  # both models: one SLO cannot suit both
    ["--models", "small", "--slo-ms", "0"],
    ["--models", "small", "--max-batch", "0"],
    ["--models", "small", "--overload", "1"],  # no overload: the max rate itself
    ["--models", "small", "--overload", "-2"],
    ["--models", "small", "--settle-s", "0"],
])
def test_nonsense_regimes_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        goodput.parse_options(argv)


@pytest.mark.parametrize(("argv", "served", "precision"), [
    ([], "torchscript", "fp32"),
    (["--backend", "onnx"], "onnx", "fp32"),
    (["--openvino", "fp32"], "openvino", "fp32"),
    (["--openvino", "bf16"], "openvino-bf16", "bf16"),
])
def test_letmesh_serves_the_runtime_asked_for_from_a_repository_the_controller_loads(tmp_path, argv, served,
                                                                                     precision) -> None:
    from benchmarks.support import goodput_models as gm
    from controller.repository import load_repository

    opts = goodput.parse_options(["--models", "small", *argv])
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:  # the controller checks a TorchScript archive is whole
        z.writestr("model/data.pkl", b"weights")
    artifacts = gm.Artifacts(torchscript=archive.getvalue(), onnx=b"onnx bytes", max_abs_diff=0.0)
    profile = {name: {1: 1.0, 2: 1.5} for name in ("torchscript", "onnx", *gm.OPENVINO)}

    repo = gm.write_repository(tmp_path, gm.MODELS["small"], artifacts, backend=opts.served, slo_ms=30.0,
                               max_batch=2, profile_ms=profile)

    assert opts.served == served
    (variant,) = load_repository(repo).values()
    assert variant.backend == served.removesuffix("-bf16") and variant.precision == precision
    assert variant.artifact.read_bytes() == (archive.getvalue() if served == "torchscript" else b"onnx bytes")


@pytest.mark.parametrize("argv", [["--openvino", "bf16", "--onnx-upgrade"], ["--openvino", "fp16"]])
def test_openvino_is_not_mixed_with_the_onnx_upgrade_nor_given_an_unknown_precision(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        goodput.parse_options(argv)


def test_like_for_like_the_baseline_computes_through_letmeshs_openvino_precision() -> None:
    assert goodput.parse_options(["--models", "small"]).baseline_runtime == "torchscript"
    assert goodput.parse_options(["--models", "small", "--openvino", "bf16"]).baseline_runtime == "torchscript"
    opts = goodput.parse_options(["--models", "small", "--openvino", "bf16", "--baseline-openvino"])
    assert opts.baseline_runtime == opts.served == "openvino-bf16"
    with pytest.raises(SystemExit):
        goodput.parse_options(["--models", "small", "--baseline-openvino"])  # no precision to take
    # The RESULT line names a like-for-like ratio apart, so runs compared later are not mixed up.
    model = {"vs_naive": 1.5, "of_limit": 0.9, "servers": {"letmesh": {"cpu_ms_per_req": 2.0}}}
    assert goodput.result_figures({"small": model}, opts) == {
        "small_vs_same_runtime": 1.5, "small_of_limit": 0.9, "cpu_ms_per_req_small": 2.0}
    assert set(goodput.result_figures({"small": model}, goodput.parse_options(["--openvino", "bf16"]))) == {
        "small_vs_naive", "small_of_limit", "cpu_ms_per_req_small"}
