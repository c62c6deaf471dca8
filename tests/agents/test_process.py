"""Worker processes: the environment that enforces a partition, and starting and stopping real ones."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from agents.process import CORES_ENV, SPEC_ENV, spawn_worker, stop_process, torch_device, visible_device, worker_environment
from mesh import cpu_policy
from mesh.peer_routes import name_of
from protocol.codec import decode
from protocol.message import FetchArtifact, StartWorker
from protocol.types import Partition, TensorSpec, VariantSpec

BOUND_S = 5.0
WORKER_START_S = 60.0  # a fresh interpreter importing torch on a loaded 2-core machine
USABLE = sorted(os.sched_getaffinity(0))
VARIANT = VariantSpec(
    name="identity",
    family="trivial",
    sha256="ab" * 32,
    size_bytes=100,
    max_batch=4,
    inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 16)),),
    outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 16)),),
)


def start_cmd(partition: Partition, controller: str = "tcp://127.0.0.1:1", worker_id: str = "a1.w0") -> StartWorker:
    return StartWorker(worker_id=worker_id, partition=partition, variants=(VARIANT,), gateways=(),
                       controller=controller)


def cpu_part(*cores: int) -> Partition:
    return Partition(device_id="cpu0", kind="cpu", cores=cores)


def test_cpu_partition_pins_mapped_cores_and_threads() -> None:
    env = worker_environment(start_cmd(cpu_part(0, 2)), [3, 5, 7], {})
    assert env[CORES_ENV] == "3,7"  # partition cores index the usable cores
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE") == os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")


@pytest.mark.parametrize(
    ("cores", "usable", "pinned"),
    [((5, 9), [0, 1], "0"), ((), [4, 6], "4"), ((1, 7), [2, 3], "3"), ((-1,), [0, 1], "0"), ((-2, 1), [4, 6], "6"),
     ((0, 0, 1), [4, 6], "4,6")],
    ids=["all-out-of-range", "empty", "one-out-of-range", "negative", "negative-and-one", "repeated"],
)
def test_cores_outside_the_usable_set_are_dropped(cores, usable, pinned: str) -> None:
    env = worker_environment(start_cmd(cpu_part(*cores)), usable, {})
    assert env[CORES_ENV] == pinned
    assert env["OMP_NUM_THREADS"] == str(len(pinned.split(",")))


def test_cuda_partition_sets_device_and_mps_share() -> None:
    part = Partition(device_id="cuda1", kind="cuda", mps_percent=25)
    env = worker_environment(start_cmd(part), USABLE, {})
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env.get(CORES_ENV) == os.environ.get(CORES_ENV)


def test_an_agent_given_a_subset_of_gpus_counts_within_it() -> None:
    assert visible_device("cuda1", {}) == "1"
    assert visible_device("cuda1", {"CUDA_VISIBLE_DEVICES": "2,3"}) == "3"  # torch's second GPU is the host's 3
    assert visible_device("cuda0", {"CUDA_VISIBLE_DEVICES": "GPU-5f1c, GPU-9a2e"}) == "GPU-5f1c"
    assert visible_device("cuda2", {"CUDA_VISIBLE_DEVICES": "0"}) == "2"  # not in the list: as numbered


def test_a_worker_computes_on_its_partitions_device() -> None:
    # CUDA_VISIBLE_DEVICES shows a GPU worker its own GPU alone, as device 0, whichever it is on the host.
    assert torch_device(Partition(device_id="cuda1", kind="cuda", mps_percent=25)) == "cuda:0"
    assert torch_device(Partition(device_id="cuda0", kind="cuda", mps_percent=100)) == "cuda:0"
    assert torch_device(cpu_part(0)) == "cpu"


def test_extra_env_is_passed_but_the_partition_wins_and_the_parent_is_untouched() -> None:
    before = dict(os.environ)
    env = worker_environment(start_cmd(cpu_part(0)), USABLE, {"LETMESH_WORKER_AGENT_ID": "a1", "OMP_NUM_THREADS": "64"})
    assert env["LETMESH_WORKER_AGENT_ID"] == "a1"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["PATH"] == os.environ["PATH"]
    assert dict(os.environ) == before


def test_spec_travels_in_the_environment() -> None:
    cmd = start_cmd(cpu_part(0, 1), controller="tcp://10.0.0.1:5555")
    env = worker_environment(cmd, USABLE, {})
    msg, buffers = decode([base64.b64decode(env[SPEC_ENV])])
    assert msg == cmd and buffers == []


@pytest.fixture
async def silent_controller() -> AsyncIterator[tuple[zmq.asyncio.Socket, str]]:
    """A real ROUTER that receives what a worker sends and never answers."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close(linger=0)
    ctx.term()


@pytest.fixture
async def spawned() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes a test started; any still running at teardown is killed and fails the test."""
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    leaked = [p.pid for p in procs if p.returncode is None]
    for p in procs:
        if p.returncode is None:
            p.kill()
            await p.wait()
    assert not leaked, f"worker processes left running: {leaked}"


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def start_blocked_worker(sock: zmq.asyncio.Socket, address: str, tmp_path: Path,
                               procs: list[asyncio.subprocess.Process],
                               env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """A real worker pinned to the last usable core, blocked fetching its artifact from ``sock``."""
    cmd = start_cmd(cpu_part(len(USABLE) - 1), controller=address)
    proc = await spawn_worker(cmd, USABLE, {"LETMESH_STATE_DIR": str(tmp_path), "LETMESH_WORKER_AGENT_ID": "a1",
                                            **(env or {})})
    procs.append(proc)
    identity, *frames = await asyncio.wait_for(sock.recv_multipart(), WORKER_START_S)
    msg, _ = decode(frames)
    assert name_of(identity) == b"worker:a1.w0"  # its name, and a tag of its socket
    assert isinstance(msg, FetchArtifact) and msg.sha256 == VARIANT.sha256 and msg.offset == 0
    return proc


async def test_worker_blocked_fetching_is_stopped_and_leaves_no_process(silent_controller, spawned, tmp_path) -> None:
    sock, address = silent_controller
    proc = await start_blocked_worker(sock, address, tmp_path, spawned)
    assert os.sched_getaffinity(proc.pid) == {USABLE[-1]}

    # A worker pinned to a core that CI shares with other work may take seconds to unwind: the
    # grace before the kill is generous, what matters is that SIGTERM alone ends it.
    code = await asyncio.wait_for(stop_process(proc, timeout_s=BOUND_S), BOUND_S * 2)

    assert code == proc.returncode and code != -signal.SIGKILL  # SIGTERM ends the load; no kill needed
    assert gone(proc.pid)


@pytest.mark.skipif(not cpu_policy.supported() or cpu_policy.policy_of(0) == "other",
                    reason="needs SCHED_BATCH, and a test runner under SCHED_OTHER or SCHED_BATCH")
@pytest.mark.parametrize("policy", cpu_policy.POLICIES)
async def test_a_worker_runs_every_thread_under_the_cpu_policy_its_agent_gives(policy, silent_controller, spawned,
                                                                               tmp_path) -> None:
    sock, address = silent_controller
    other = {"batch": os.SCHED_OTHER, "normal": os.SCHED_BATCH}[policy]
    mine = os.sched_getscheduler(0)
    os.sched_setscheduler(0, other, os.sched_param(0))  # the worker starts under the other policy
    try:
        proc = await start_blocked_worker(sock, address, tmp_path, spawned, {cpu_policy.ENV: policy})
    finally:
        os.sched_setscheduler(0, mine, os.sched_param(0))
    threads = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]

    assert len(threads) > 1  # ZeroMQ's and the runtimes' threads, started after the policy was set
    assert {cpu_policy.policy_of(t) for t in threads} == {policy}
    await asyncio.wait_for(stop_process(proc, timeout_s=BOUND_S), BOUND_S * 2)


async def test_sigterm_while_loading_ends_the_worker_without_a_kill(silent_controller, spawned, tmp_path) -> None:
    sock, address = silent_controller
    proc = await start_blocked_worker(sock, address, tmp_path, spawned)

    code = await asyncio.wait_for(stop_process(proc, timeout_s=BOUND_S), BOUND_S * 2)

    assert code != -signal.SIGKILL
    assert list((tmp_path / "artifacts").glob("*.part")) == []  # the partial download is cleaned up


async def test_worker_stopped_right_after_spawn_ends_by_sigterm(spawned, tmp_path) -> None:
    proc = await spawn_worker(start_cmd(cpu_part(0)), USABLE, {"LETMESH_STATE_DIR": str(tmp_path)})
    spawned.append(proc)
    started = time.monotonic()

    code = await asyncio.wait_for(stop_process(proc, timeout_s=BOUND_S), BOUND_S * 2)

    assert code == -signal.SIGTERM
    assert time.monotonic() - started < BOUND_S  # no kill was needed
    assert gone(proc.pid)


async def test_stopping_an_exited_process_returns_its_code(spawned) -> None:
    proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 7")
    spawned.append(proc)
    await asyncio.wait_for(proc.wait(), BOUND_S)
    assert await asyncio.wait_for(stop_process(proc, timeout_s=0.1), BOUND_S) == 7
