"""The CUDA check, run as far as a host without a GPU allows: it refuses plainly, and its partition
stage (the worker's model runner in one fresh process per MPS percentage, then two at once) runs
end to end on the CPU and reports every figure. Speed is never asserted here."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import cuda_check
from benchmarks.support.procfs import children

pytestmark = pytest.mark.timeout(300)


def test_without_a_gpu_the_check_says_so_and_exits_2(tmp_path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU: run benchmarks/cuda_check.py itself")
    assert cuda_check.main(["--out", str(tmp_path / "c.json")]) == 2
    assert "torch sees no CUDA device on this host" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_the_partition_stage_reports_each_share_and_the_pair(tmp_path, capsys) -> None:
    import torch

    if torch.cuda.is_available():  # it would start an MPS daemon and report the GPU: the script's own job there
        pytest.skip("this host has a GPU: run benchmarks/cuda_check.py itself")
    before = set(children(os.getpid()))
    out = tmp_path / "cuda_check.json"
    argv = ["--device", "cpu", "--skip", "goodput,mesh", "--probe-batch", "2", "--probe-run-s", "0.2",
            "--out", str(out)]

    assert cuda_check.main(argv) == 0

    report = json.loads(out.read_text())
    stages = report["stages"]
    assert stages["probe"]["ok"] and stages["probe"]["result"][0]["kind"] == "cpu"
    parts = stages["partitions"]["result"]
    assert set(parts["solo"]) == {"100", "50", "25"}
    for percent, solo in parts["solo"].items():
        assert solo["mps_percent"] == percent  # each probe process ran under its own share
        assert solo["batch"] == 2 and solo["runs"] >= 1 and solo["samples_per_s"] > 0
        assert set(solo["warmup_ms"]) == {"1", "2"}
    assert len(parts["pair_at_50"]) == 2 and len(parts["pair_slowdown"]) == 2
    assert report["result"]["mps"] == 0  # no MPS daemon here
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT gpu_seen=0 mps=0 ")
    assert set(children(os.getpid())) <= before  # every probe process was reaped
