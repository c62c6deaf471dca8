"""Starting and stopping one gpu-let worker process on its partition.

The partition is enforced at the process boundary: on a CPU the worker pins itself to its
core set before torch starts its thread pools (the core list and thread count travel in the
environment); on CUDA the agent sets ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and
``CUDA_VISIBLE_DEVICES``. Every worker asks the kernel to kill it when its agent dies, so an
agent killed with SIGKILL leaves no orphans.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Mapping

from protocol.codec import encode
from protocol.message import StartWorker
from protocol.types import Partition

log = logging.getLogger(__name__)

SPEC_ENV = "LETMESH_WORKER_SPEC"
CORES_ENV = "LETMESH_WORKER_CORES"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def torch_device(partition: Partition) -> str:
    """Where a worker on ``partition`` computes: its GPU, the only one ``CUDA_VISIBLE_DEVICES``
    shows it, or the CPU cores it is pinned to."""
    return "cuda:0" if partition.kind == "cuda" else "cpu"


def visible_device(device_id: str, env: Mapping[str, str]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a process on ``device_id`` (``cudaN``: torch's N-th GPU as the
    agent sees them). An agent that was itself given a subset (``CUDA_VISIBLE_DEVICES=2,3``) counts
    within it, so its N-th entry is the GPU meant."""
    index = device_id.removeprefix("cuda")
    listed = [g.strip() for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[int(index)] if index.isdigit() and int(index) < len(listed) else index


def worker_environment(cmd: StartWorker, usable_cores: list[int], extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env[SPEC_ENV] = base64.b64encode(bytes(encode(cmd)[0])).decode()
    part = cmd.partition
    if part.kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = visible_device(part.device_id, os.environ)
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(min(100, max(1, part.mps_percent)))
        threads = 1
    else:
        # Indices into the usable cores, each once; none in range: the first usable core.
        cores = list(dict.fromkeys(usable_cores[i] for i in part.cores if 0 <= i < len(usable_cores))) or usable_cores[:1]
        env[CORES_ENV] = ",".join(str(c) for c in cores)
        threads = len(cores)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


async def spawn_worker(cmd: StartWorker, usable_cores: list[int], extra_env: dict[str, str]) -> asyncio.subprocess.Process:
    env = worker_environment(cmd, usable_cores, extra_env)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agents.worker",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )


async def stop_process(proc: asyncio.subprocess.Process, timeout_s: float) -> int:
    """SIGTERM (the worker drains), then SIGKILL after ``timeout_s``. Returns the exit code."""
    if proc.returncode is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            async with asyncio.timeout(timeout_s):
                return await proc.wait()
        except TimeoutError:
            log.warning("worker did not stop in time; killing", extra={"pid": proc.pid})
            try:
                proc.kill()
            except ProcessLookupError:
                pass
    return await proc.wait()
