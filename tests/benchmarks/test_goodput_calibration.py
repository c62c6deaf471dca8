"""The goodput benchmark's calibration, and its plain server, compute with OpenVINO as a letmesh worker does."""

from __future__ import annotations

import json
import os
import urllib.request

import numpy as np
import orjson
import pytest

from agents.backend import openvino_bf16
from benchmarks.support import goodput_models as gm
from benchmarks.support.server_under_test import BaselineServer


def test_calibration_measures_the_openvino_runtimes_asked_for_and_their_answers(tmp_path, capsys) -> None:
    model = gm.MODELS["small"]
    artifacts = gm.export(model)
    ts, onnx = tmp_path / gm.ARTIFACT, tmp_path / gm.ONNX_ARTIFACT
    ts.write_bytes(artifacts.torchscript)
    onnx.write_bytes(artifacts.onnx)

    assert gm.main(["small", str(ts), str(onnx), "20", "1", "3", "cpu", "40", "2", "openvino,openvino-bf16"]) == 0

    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["latency_ms"]) == {"torchscript", "onnx", "openvino", "openvino-bf16"}
    for table in out["latency_ms"].values():
        assert {"1", "2"} <= set(table) and all(ms > 0 for ms in table.values())
    reference = np.asarray(out["expected"]["torchscript"])
    np.testing.assert_allclose(out["expected"]["openvino"], reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["expected"]["openvino-bf16"], reference, rtol=0, atol=5e-3)
    assert out["fp32_peak_gflops"] > 0


def test_the_arithmetic_of_an_image_is_the_convolutions_and_the_linear_layer() -> None:
    # small, counted by hand: 2 x (output channels x positions x input channels x 9) a convolution
    # (32x32 for the first two, then 16x16 twice, then 8x8), and 2 x 256 x 10 for the linear layer.
    convs = [(32, 32 * 32, 3), (64, 32 * 32, 32), (128, 16 * 16, 64), (128, 16 * 16, 128), (256, 8 * 8, 128)]
    by_hand = sum(2 * cout * positions * cin * 9 for cout, positions, cin in convs) + 2 * 256 * 10
    assert gm.flops_per_image(gm.MODELS["small"]) == by_hand
    assert gm.flops_per_image(gm.MODELS["medium"]) > 5 * by_hand


@pytest.mark.timeout(180)
def test_the_baseline_server_answers_through_openvino_as_a_letmesh_worker_computes(tmp_path) -> None:
    model = gm.MODELS["small"]
    artifacts = gm.export(model)
    onnx = tmp_path / gm.ONNX_ARTIFACT
    onnx.write_bytes(artifacts.onnx)
    image = gm.sample_images(model, 1, seed=3)
    body = orjson.dumps({"inputs": [{"name": gm.INPUT, "datatype": "FP32", "shape": list(image.shape),
                                     "data": image.ravel().tolist()}]})
    server = BaselineServer(onnx, "openvino-bf16", model.variant, tuple(sorted(os.sched_getaffinity(0))))
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/v2/models/{model.variant}/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            (output,) = orjson.loads(reply.read())["outputs"]
    finally:
        server.stop()
    served = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(served, gm.open_runtime("openvino-bf16", onnx)(image), rtol=0, atol=1e-6)
    fp32 = gm.open_runtime("onnx", onnx)(image)
    assert np.abs(served - fp32).max() < 5e-3
    if openvino_bf16():  # computed in bfloat16 indeed, not in fp32 under another name
        assert np.abs(served - fp32).max() > 1e-6
