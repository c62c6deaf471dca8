"""Hosts with a GPU beside their CPU: each device is profiled in turn, no plan moves work off a GPU
that is still being measured, and the GPU's profile re-plans the mesh onto it."""

from __future__ import annotations

import asyncio

from protocol.message import (
    Heartbeat,
    ProfileDevice,
    ProfileProgress,
    RegisterAgent,
    RegisterAgentReply,
    StatusReply,
)
from protocol.types import DeviceInfo, ProfileSample

BOUND_S = 10.0
CPU = DeviceInfo(device_id="cpu0", kind="cpu", name="test cpu", cores=1, memory_bytes=1 << 30)
GPU = DeviceInfo(device_id="cuda0", kind="cuda", name="test gpu", cores=132, memory_bytes=80 << 30, sm_count=132)


def measured(command: ProfileDevice, kind: str, ms_per_sample: float) -> tuple[ProfileSample, ...]:
    return tuple(ProfileSample(variant=v.name, device_kind=kind, partition=p, batch=b, p50_ms=0.2 + ms_per_sample * b,
                               p99_ms=0.3 + ms_per_sample * b, runs=20)
                 for v in command.variants for p in command.partitions for b in command.batches)


async def report(agent, command: ProfileDevice, agent_id: str, kind: str, ms_per_sample: float) -> None:
    await agent.send(ProfileProgress(request_id=command.request_id, agent_id=agent_id, device_kind=kind, completed=1,
                                     total=1, samples=measured(command, kind, ms_per_sample), done=True))


async def replanned(agent, count: int) -> StatusReply:
    async def wait() -> StatusReply:
        while len((status := await agent.sync()).replans) < count:
            await asyncio.sleep(0.05)
        return status

    return await asyncio.wait_for(wait(), BOUND_S)


def planned_on(status: StatusReply, agent_id: str) -> list[tuple[str, int]]:
    """Where the newest plan put ``agent_id``'s workers: those of its latest generation, whether the
    move still waits for them or has given up on them (these fake agents start nothing, so a move
    gives up after the start timeout and its workers are left stopping)."""
    planned = [w for w in status.workers if w.worker_id.startswith(f"{agent_id}.g")]
    newest = max((int(w.worker_id.split(".")[1][1:]) for w in planned), default=None)
    return sorted((w.partition.device_id, w.partition.mps_percent) for w in planned
                  if w.worker_id.split(".")[1] == f"g{newest}")


async def test_the_gpu_is_profiled_after_the_cpu_and_no_plan_is_made_without_it(start_controller, peer) -> None:
    # No worker of these fake agents ever starts: a move gives up at once, so the next one may begin.
    controller = await start_controller(heartbeat_interval_s=0.05, missed_heartbeats=200, worker_start_timeout_s=0.2)
    agent = peer(controller.address, b"agent:a1")
    await agent.send(RegisterAgent(agent_id="a1", hostname="gpu-host", devices=(CPU, GPU), pid=1))
    await agent.expect(RegisterAgentReply)
    first = await agent.expect(ProfileDevice)
    assert first.device_id == "cpu0"
    await agent.sync()  # every reply to the registration is in hand
    assert not [p for p in agent.pending if isinstance(p, ProfileDevice)]  # one run at a time per agent
    await report(agent, first, "a1", "cpu", 5.0)

    second = await agent.expect(ProfileDevice, lambda p: p.device_id == "cuda0")
    assert second.partitions == (100,)  # no MPS daemon on this host: the GPU is measured whole
    for _ in range(20):  # twenty ticks of the controller with the CPU measured and the GPU not yet
        await asyncio.wait_for(agent.expect(Heartbeat), BOUND_S)
    status = await agent.sync()
    # A plan now would know the CPU alone and move work off the GPU the first placement gave it.
    assert status.replans == ()
    assert any(w.partition.device_id == "cuda0" for w in status.workers)

    await report(agent, second, "a1", "cuda", 0.05)
    status = await replanned(agent, 1)
    on_gpu = [w for w in planned_on(status, "a1") if w[0] == "cuda0"]
    assert on_gpu == [("cuda0", 100)]  # whole: nothing would enforce a share


async def test_a_gpu_host_joining_a_planned_mesh_takes_work_once_its_gpu_is_profiled(start_controller, peer) -> None:
    controller = await start_controller(heartbeat_interval_s=0.05, missed_heartbeats=200, worker_start_timeout_s=0.2)
    cpu_host = peer(controller.address, b"agent:a1")
    await cpu_host.send(RegisterAgent(agent_id="a1", hostname="cpu-host", devices=(CPU,), pid=1))
    await cpu_host.expect(RegisterAgentReply)
    await report(cpu_host, await cpu_host.expect(ProfileDevice), "a1", "cpu", 5.0)
    status = await replanned(cpu_host, 1)
    assert {device for device, _ in planned_on(status, "a1")} == {"cpu0"}

    gpu_host = peer(controller.address, b"agent:a2")
    await gpu_host.send(RegisterAgent(agent_id="a2", hostname="gpu-host", devices=(CPU, GPU), pid=2))
    await gpu_host.expect(RegisterAgentReply)
    command = await gpu_host.expect(ProfileDevice)
    assert command.device_id == "cuda0"  # its CPU's kind is measured already
    await report(gpu_host, command, "a2", "cuda", 0.05)
    # Demand has not moved; the GPU's profile alone re-plans, and the new plan uses the GPU.
    status = await replanned(gpu_host, 2)
    assert ("cuda0", 100) in planned_on(status, "a2")


async def test_a_plan_held_for_a_gpu_whose_profiling_fails_is_made_without_it(start_controller, peer) -> None:
    controller = await start_controller(heartbeat_interval_s=0.05, missed_heartbeats=200, worker_start_timeout_s=0.2)
    agent = peer(controller.address, b"agent:a1")
    await agent.send(RegisterAgent(agent_id="a1", hostname="gpu-host", devices=(CPU, GPU), pid=1))
    await agent.expect(RegisterAgentReply)
    await report(agent, await agent.expect(ProfileDevice), "a1", "cpu", 5.0)
    command = await agent.expect(ProfileDevice, lambda p: p.device_id == "cuda0")
    await agent.send(ProfileProgress(request_id=command.request_id, agent_id="a1", device_kind="cuda", completed=0,
                                     total=1, done=True, error="CUDA error: out of memory"))
    # No GPU profile will come: the plan that waited for one is made with the CPU alone.
    status = await replanned(agent, 1)
    assert {device for device, _ in planned_on(status, "a1")} == {"cpu0"}


def test_a_gpu_without_mps_is_offered_whole_to_accuracy_scaling_and_to_the_planner() -> None:
    from controller.replanner import scaling_slots

    with_mps = DeviceInfo(device_id="cuda0", kind="cuda", name="g", cores=132, memory_bytes=1, sm_count=132, mps=True)
    slots, capacity = scaling_slots({"a1": (with_mps,), "a2": (GPU,)})
    sizes = {agent: sorted(s.size for s in slots if s.agent_id == agent) for agent in ("a1", "a2")}
    assert sizes == {"a1": [50, 50, 100], "a2": [100]}  # two halves nothing would hold to 50 % are not offered
    assert capacity == {("a1", "cuda0"): 100, ("a2", "cuda0"): 100}
