"""What ``letmesh up`` says while a mesh starts (``letmesh.startup``), and how it finds who holds a
port (``letmesh.port``)."""

from __future__ import annotations

import os
import socket

import pytest

from letmesh.port import PortTaken, check_free, holder
from letmesh.startup import StartupProgress
from protocol.message import StatusReply
from protocol.types import AgentStatus, DeviceInfo, Partition, WorkerState, WorkerStatus

CPU = DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=4, memory_bytes=2**30)


def status(*workers: WorkerState, agents: tuple[str, ...] = ("local",)) -> StatusReply:
    return StatusReply(
        controller_epoch=1, routing_version=1, gateways=(), models=(),
        agents=tuple(AgentStatus(agent_id=a, hostname="h", alive=True, devices=(CPU,), last_seen_s=0.0) for a in agents),
        workers=tuple(WorkerStatus(worker_id=f"w{i}", agent_id="local", state=s, partition=Partition(device_id="cpu0", kind="cpu"),
                                   variants=("v",)) for i, s in enumerate(workers)),
    )


def test_each_milestone_is_said_once_in_order() -> None:
    p = StartupProgress("tcp://127.0.0.1:5555", "http://127.0.0.1:8000")
    assert p.see(0.0) == []  # the controller has not answered yet
    assert p.see(0.5, status=status(agents=()), profiling=()) == ["controller up at tcp://127.0.0.1:5555"]
    assert p.see(1.0, status=status(), profiling=("local: 0/14",)) == [
        "agent local registered: cpu0 (cpu, 4 cores)", "profiling local: 0/14"]
    assert p.see(1.5, status=status(WorkerState.STARTING, WorkerState.STARTING), profiling=("local: 3/14",)) == [
        "workers ready: 0/2"]
    assert p.see(2.0, status=status(WorkerState.READY, WorkerState.STARTING), profiling=()) == [
        "profiles measured", "workers ready: 1/2"]
    assert p.see(2.5, status=status(WorkerState.READY, WorkerState.READY), gateway_ready=True) == [
        "workers ready: 2/2", "gateway ready at http://127.0.0.1:8000"]
    assert p.see(3.0, status=status(WorkerState.READY, WorkerState.READY), profiling=(), gateway_ready=True) == []


def test_profiling_progress_is_said_at_most_once_per_interval_and_stopping_workers_do_not_count() -> None:
    p = StartupProgress("c", "h", profiling_every_s=5.0)
    said = [line for t in range(12) for line in p.see(float(t), profiling=(f"local: {t}/14",))]
    assert said == ["profiling local: 0/14", "profiling local: 5/14", "profiling local: 10/14"]
    assert p.see(12.0, status=status(WorkerState.READY, WorkerState.STOPPING, agents=())) == [
        "controller up at c", "workers ready: 1/1"]


def test_a_held_port_is_named_with_its_holder_and_a_free_one_passes() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert holder(port).startswith(f"pid {os.getpid()} (")
        for host in ("127.0.0.1", "0.0.0.0"):
            with pytest.raises(PortTaken) as info:
                check_free(host, port, "gateway HTTP")
            assert str(info.value).startswith(f"port {port} (gateway HTTP, {host}) is already in use, held by pid {os.getpid()}")
    check_free("127.0.0.1", port, "gateway HTTP")  # released: free again (TIME_WAIT does not count)
    check_free("127.0.0.1", 0, "any free port")


def test_a_gpu_is_shown_by_its_multiprocessors_and_whether_mps_splits_it() -> None:
    from letmesh.startup import device_text
    from protocol.types import DeviceInfo

    gpu = DeviceInfo(device_id="cuda0", kind="cuda", name="NVIDIA H200", cores=132, memory_bytes=150 << 30,
                     sm_count=132, mps=True)
    assert device_text(gpu) == "cuda0 (cuda, NVIDIA H200, 132 SMs, MPS)"
    assert device_text(DeviceInfo(device_id="cuda1", kind="cuda", name="T4", cores=40, memory_bytes=16 << 30,
                                  sm_count=40)) == "cuda1 (cuda, T4, 40 SMs, no MPS daemon: one partition)"
    one = DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=1, memory_bytes=1 << 30)
    assert device_text(one, memory=True) == "cpu0 (cpu, 1 core, 1.0 GiB)"
