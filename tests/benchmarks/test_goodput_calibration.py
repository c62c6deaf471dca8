"""The goodput benchmark's calibration measures OpenVINO when asked, opened as a letmesh worker opens it."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.support import goodput_models as gm


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
