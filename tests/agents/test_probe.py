"""Whether an MPS control daemon listens (what decides if a GPU is split into gpu-lets or kept whole),
and which models meant for a GPU compute on the host CPU instead."""

from __future__ import annotations

import os
import socket

import pytest

from agents.probe import host_cpu_reason, mps_daemon_running


def test_no_pipe_folder_or_an_empty_one_means_no_daemon(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "absent"))
    assert mps_daemon_running() is False
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))  # a folder a daemon left behind
    assert mps_daemon_running() is False


def test_a_listening_control_socket_means_a_daemon_and_a_dead_one_does_not(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    path = str(tmp_path / "control")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1)
        assert mps_daemon_running() is True
    finally:
        listener.close()
    assert os.path.exists(path)  # a killed daemon leaves its socket file behind
    assert mps_daemon_running() is False


def test_a_control_entry_that_is_no_socket_counts_as_the_daemons(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    os.mkfifo(tmp_path / "control")  # named pipes are the other kind of entry the daemon makes
    assert mps_daemon_running() is True


@pytest.mark.parametrize(("backend", "providers", "reason"), [
    ("onnx", ["CPUExecutionProvider"], "no CUDA provider in this onnxruntime"),
    ("onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"], ""),
    ("openvino", ["CUDAExecutionProvider", "CPUExecutionProvider"], "OpenVINO computes on the CPU"),
    ("torchscript", ["CPUExecutionProvider"], ""),
])
def test_a_model_meant_for_a_gpu_runs_on_the_host_cpu_only_where_its_runtime_cannot_reach_the_gpu(
        monkeypatch, backend, providers, reason):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)

    assert host_cpu_reason(backend, "cuda:1") == reason
    assert host_cpu_reason(backend, "cpu") == ""
