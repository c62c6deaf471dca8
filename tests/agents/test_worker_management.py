"""An agent managing its worker processes, against a controller played over ZeroMQ: a worker
replaced under its id, stopped and started again, or that cannot be started at all. The worker
processes are stand-ins (an interpreter that sleeps until SIGTERM), pinned as real ones are."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from prometheus_client import generate_latest

import agents.agent_actor as agent_actor
import agents.worker_fleet as worker_fleet
from agents import artifact_cache
from agents.agent_actor import AgentActor
from agents.config import AgentConfig
from agents.managed_worker import WorkerExit
from agents.process import die_with_parent, worker_environment
from mesh import cpu_policy
from protocol.codec import decode, encode
from protocol.message import (
    Heartbeat,
    RegisterAgent,
    RegisterAgentReply,
    StartWorker,
    StopWorker,
    WorkerCrashed,
    WorkerStarted,
    WorkerStopped,
)
from protocol.types import Partition, TensorSpec, VariantSpec

BOUND_S = 10.0
VARIANT = VariantSpec(name="identity", family="trivial", sha256="ab" * 32, size_bytes=100, max_batch=4,
                      inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 16)),),
                      outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 16)),))
# Exits on SIGTERM after ``DRAIN_S`` (a worker draining its queue), else sleeps; with ``EXIT_CODE``
# set it exits at once with that code (a worker that failed to start).
STAND_IN = ("import os, signal, sys, time\n"
            "os.environ['EXIT_CODE'] and sys.exit(int(os.environ['EXIT_CODE']))\n"
            "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(float(os.environ['DRAIN_S'])), sys.exit(0)))\n"
            "time.sleep(600)\n")


class Controller:
    """A ROUTER that registers the agent and records what it says."""

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:0")
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.said: list[object] = []
        self.beats: list[float] = []
        self.peer: bytes | None = None
        self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            self.peer, *frames = await self.sock.recv_multipart()
            msg, _ = decode(frames)
            if isinstance(msg, Heartbeat):
                self.beats.append(asyncio.get_running_loop().time())
                continue
            self.said.append(msg)
            if isinstance(msg, RegisterAgent):
                await self.send(RegisterAgentReply(agent_id=msg.agent_id, heartbeat_interval_s=0.1, controller_epoch=1))

    async def send(self, msg: object) -> None:
        await self.sock.send_multipart([self.peer, *encode(msg)])

    async def until(self, predicate, timeout_s: float = BOUND_S) -> None:
        async def wait() -> None:
            while not predicate():
                await asyncio.sleep(0.02)

        await asyncio.wait_for(wait(), timeout_s)

    def about(self, worker_id: str) -> list[object]:
        return [m for m in self.said if getattr(m, "worker_id", None) == worker_id]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close(linger=0)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def agent_options() -> dict:
    """AgentConfig fields a test sets beyond the fixture's (parametrize to change)."""
    return {}


@pytest.fixture
async def mesh(ctx, tmp_path, monkeypatch, agent_options):
    """(controller, agent, processes spawned); the agent stopped and every process gone at the end."""
    spawned: list[asyncio.subprocess.Process] = []
    refuse: list[Exception] = []  # spawns to fail, in order

    async def stand_in(cmd: StartWorker, usable: list[int], extra: dict[str, str]) -> asyncio.subprocess.Process:
        if refuse:
            raise refuse.pop(0)
        env = {**worker_environment(cmd, usable, extra), "DRAIN_S": os.environ.get("TEST_DRAIN_S", "0"),
               "EXIT_CODE": os.environ.get("TEST_EXIT_CODE", "")}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", STAND_IN, env=env,
                                                    stdin=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent)
        proc.env = env  # what a test checks the agent gave its worker
        spawned.append(proc)
        return proc

    monkeypatch.setattr(worker_fleet, "spawn_worker", stand_in)
    controller = Controller(ctx)
    agent = AgentActor(AgentConfig(controller=controller.address, agent_id="a1", state_dir=str(tmp_path),
                                   heartbeat_interval_s=0.1, missed_heartbeats=20, register_retry_s=0.1,
                                   register_retry_max_s=0.4, worker_restart_backoff_s=0.0, **agent_options), ctx=ctx)
    await asyncio.wait_for(agent.start(), BOUND_S)
    await asyncio.wait_for(agent.registered.wait(), BOUND_S)
    try:
        yield controller, agent, spawned, refuse
    finally:
        await asyncio.wait_for(agent.stop(), 3 * BOUND_S)
        await controller.close()
        left = [p.pid for p in spawned if alive(p.pid)]
        for p in spawned:
            if p.returncode is None:
                p.kill()
                await p.wait()
        assert not left, f"worker processes left after the agent stopped: {left}"


def start(cores: tuple[int, ...] = (0,), worker_id: str = "a1.w0", device_id: str = "cpu0") -> StartWorker:
    return StartWorker(worker_id=worker_id, partition=Partition(device_id=device_id, kind="cpu", cores=cores),
                       variants=(VARIANT,), gateways=(), controller="tcp://127.0.0.1:1")


@pytest.mark.parametrize("agent_options", [{}, {"worker_cpu_policy": "normal"}], ids=["default", "normal"])
async def test_workers_are_given_the_agents_cpu_policy_batch_unless_configured(mesh, agent_options) -> None:
    controller, agent, spawned, _ = mesh
    await controller.send(start())
    await controller.until(lambda: len(spawned) == 1)
    assert spawned[0].env[cpu_policy.ENV] == agent_options.get("worker_cpu_policy", "batch")


async def test_a_worker_replaced_under_its_id_runs_as_one_process_and_no_crash_is_reported(mesh) -> None:
    controller, agent, spawned, _ = mesh
    await controller.send(start(cores=(0,)))
    await controller.until(lambda: len(spawned) == 1 and agent.workers.get("a1.w0"))
    await controller.send(start(cores=(1,)))  # the same id on another partition
    await controller.until(lambda: len(spawned) == 2 and agent.workers.get("a1.w0") == spawned[1].pid)
    await asyncio.sleep(0.5)  # an old exit taken for the new worker's would relaunch it meanwhile
    assert [alive(p.pid) for p in spawned] == [False, True]
    assert not [m for m in controller.said if isinstance(m, WorkerCrashed)]
    assert agent.worker_crashes == 0


async def test_a_worker_stopped_and_started_again_is_reported_running_last(mesh) -> None:
    controller, agent, spawned, _ = mesh
    await controller.send(start())
    await controller.until(lambda: agent.workers.get("a1.w0"))
    await controller.send(StopWorker(worker_id="a1.w0"))
    await controller.send(start())
    await controller.until(lambda: len(spawned) == 2 and agent.workers.get("a1.w0") == spawned[1].pid)
    await asyncio.sleep(0.5)  # the first process's stop report, if it came late, would come by now
    said = [type(m) for m in controller.about("a1.w0")]
    assert said[-1] is WorkerStarted and WorkerCrashed not in said, said
    assert [alive(p.pid) for p in spawned] == [False, True]


async def test_a_worker_that_cannot_be_started_is_reported_and_started_when_asked_again(mesh) -> None:
    controller, agent, spawned, refuse = mesh
    refuse.append(OSError(11, "Resource temporarily unavailable"))  # fork refused once
    await controller.send(start())
    await controller.until(lambda: controller.about("a1.w0"))
    crashed = controller.about("a1.w0")[0]
    assert isinstance(crashed, WorkerCrashed) and not crashed.will_restart
    assert "a1.w0" not in agent.workers
    await controller.send(start())  # the controller's re-send
    await controller.until(lambda: agent.workers.get("a1.w0"))
    assert len(spawned) == 1 and alive(spawned[0].pid)


@pytest.mark.parametrize(("code", "restarted"), [(WorkerExit.NOTHING_LOADED, False), (1, True),
                                                (WorkerExit.FETCH_FAILED, True), (WorkerExit.BAD_SPEC, True)])
async def test_a_worker_that_could_load_nothing_is_not_restarted_and_one_that_crashed_is(
        mesh, monkeypatch, code: int, restarted: bool) -> None:
    """Started again, a worker that could load none of its variants would load the same files and
    fail the same way, each time a torch import long, until the restart limit."""
    monkeypatch.setenv("TEST_EXIT_CODE", str(int(code)))
    controller, agent, spawned, _ = mesh
    await controller.send(start())
    def reports() -> list[WorkerCrashed]:
        return [m for m in controller.about("a1.w0") if isinstance(m, WorkerCrashed)]

    await controller.until(reports)
    crashed = reports()[0]
    assert crashed.exit_code == code
    assert crashed.will_restart is restarted
    if restarted:
        await controller.until(lambda: len(spawned) >= 2)
    else:
        await asyncio.sleep(0.5)  # a restart (no back-off here) would have spawned by now
        assert len(spawned) == 1 and "a1.w0" not in agent.workers
        assert agent.worker_restarts == 0


async def test_heartbeats_go_on_while_a_replaced_worker_drains(mesh, monkeypatch) -> None:
    monkeypatch.setenv("TEST_DRAIN_S", "1.5")
    controller, agent, spawned, _ = mesh
    await controller.send(start(cores=(0,)))
    await controller.until(lambda: agent.workers.get("a1.w0"))
    await asyncio.sleep(0.3)  # the stand-in has set up its signal handler
    await controller.send(start(cores=(1,)))
    await controller.until(lambda: len(spawned) == 2, timeout_s=3 * BOUND_S)
    during = [b for b in controller.beats if b > controller.beats[-1] - 1.5]
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert gaps and max(gaps) < 1.0, gaps  # 0.1 s beats; the drain alone takes 1.5 s


async def test_a_long_lived_agent_keeps_no_record_of_workers_it_stopped(mesh) -> None:
    controller, agent, spawned, _ = mesh
    for i in range(15):
        await controller.send(start(worker_id=f"a1.w{i}"))
        await controller.until(lambda: agent.workers.get(f"a1.w{i}"))
        await controller.send(StopWorker(worker_id=f"a1.w{i}"))
        await controller.until(lambda: any(isinstance(m, WorkerStopped) for m in controller.about(f"a1.w{i}")))
    assert agent.workers == {}
    assert len(agent._tasks) <= 3  # the tick, and at most the last stop's tasks still finishing


async def test_stopping_a_worker_the_agent_does_not_run_is_answered_stopped(mesh) -> None:
    """A worker that crashed for good is forgotten by its agent; the controller's stop for it still
    gets its answer, so the controller does not wait on it forever."""
    controller, agent, spawned, refuse = mesh
    refuse.append(OSError(11, "Resource temporarily unavailable"))
    await controller.send(start(worker_id="a1.w5"))
    await controller.until(lambda: controller.about("a1.w5"))  # reported crashed
    await controller.send(StopWorker(worker_id="a1.w5"))
    await controller.until(lambda: any(isinstance(m, WorkerStopped) for m in controller.about("a1.w5")))


@pytest.mark.parametrize("agent_options", [{"artifact_cache_mb": 1}])
async def test_the_artifact_cache_is_kept_within_its_bound_sparing_what_runs_and_what_was_used_lately(
        mesh, tmp_path, monkeypatch) -> None:
    """1 MiB of cache: the worker's artifact (the oldest file) and its conversion stay, a conversion
    for a signature nothing runs and the least recently used artifact go; the newest unused one and
    one used a moment ago (another process may be loading it) stay. Nothing goes until the agent
    has been up CACHE_CHECK_S: before the controller's layout is in, it does not know what it runs."""
    controller, agent, spawned, _ = mesh
    cache = tmp_path / "artifacts"
    cache.mkdir()
    used_sig = artifact_cache.signature(VARIANT)
    unused, newest, lately = "cd" * 32, "ef" * 32, "12" * 32
    now = time.time()
    files = {  # name: (bytes, age in seconds)
        VARIANT.sha256: (600_000, 5000),
        f"{VARIANT.sha256}.{used_sig}.onnx": (200_000, 5000),
        f"{VARIANT.sha256}.{'0' * 12}.onnx": (200_000, 4000),  # a manifest that named the tensors otherwise
        unused: (400_000, 3000),
        newest: (100_000, 1000),
        lately: (100_000, 10),
    }
    for name, (nbytes, age) in files.items():
        (cache / name).write_bytes(b"x" * nbytes)
        os.utime(cache / name, (now - age, now - age))
    await controller.send(start())
    await controller.until(lambda: len(spawned) == 1)
    await asyncio.sleep(0.5)  # ticks every 0.1 s: none checks the cache yet
    assert agent.cache_removed == 0 and len(list(cache.iterdir())) >= len(files)
    monkeypatch.setattr(agent_actor, "CACHE_CHECK_S", 0.2)
    await controller.until(lambda: agent.cache_removed == 2)
    left = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))
    assert left == sorted([VARIANT.sha256, f"{VARIANT.sha256}.{used_sig}.onnx", newest, lately])
    assert (cache / VARIANT.sha256).stat().st_mtime >= now - 5, "the started worker's artifact counts as used now"
    assert "letmesh_agent_artifact_cache_removed_total 2.0" in generate_latest(agent.metrics.registry).decode()
