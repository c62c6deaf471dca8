"""The memory an agent offers for its CPU device: the host's, bounded by the cgroup it runs in
(as a container's limit bounds it) and by the operator's --max-memory-mb. A planner that took the
host's RAM inside a 512 MiB container would place workers the kernel then kills."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from agents.probe import cgroup_memory_limit, memory_headroom_bytes, total_memory_bytes, usable_memory_bytes
from benchmarks.support.cgroup import memory_cgroup
from protocol.codec import decode, encode
from protocol.message import RegisterAgent, RegisterAgentReply

MIB = 2**20
ROOT = Path(__file__).resolve().parents[2]


def _proc(tmp: Path, cgroup: str, mountinfo: str) -> str:
    proc = tmp / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return str(proc)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_the_tightest_limit_along_the_path_wins_and_max_means_none(tmp_path) -> None:
    mount = tmp_path / "c g"  # mountinfo writes the space as \040
    _write(mount / "memory.max", "max\n")  # the root has no file in real life; "max" must read as none
    _write(mount / "slice" / "memory.max", str(700 * MIB))
    _write(mount / "slice" / "svc" / "memory.max", "max\n")
    proc = _proc(tmp_path, "0::/slice/svc\n",
                 f"30 24 0:26 / {str(mount).replace(' ', chr(92) + '040')} rw,nosuid shared:4 - cgroup2 cgroup2 rw\n")
    assert cgroup_memory_limit(proc) == 700 * MIB
    _write(mount / "slice" / "svc" / "memory.max", str(300 * MIB))
    assert cgroup_memory_limit(proc) == 300 * MIB


def test_v1_memory_hierarchy_and_a_container_root_mounted_at_its_own_cgroup(tmp_path) -> None:
    mount = tmp_path / "memory"
    _write(mount / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    proc = _proc(tmp_path, "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
                 f"40 30 0:35 /docker/abc {mount} ro,nosuid - cgroup cgroup rw,memory\n"
                 f"41 30 0:36 /docker/abc {tmp_path}/cpu ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n")
    assert cgroup_memory_limit(proc) == 0
    _write(mount / "memory.limit_in_bytes", f"{512 * MIB}\n")  # the container's own cgroup is the mount's root
    assert cgroup_memory_limit(proc) == 512 * MIB


def test_nothing_readable_means_no_limit_and_the_host_and_cap_bound_the_offer(tmp_path) -> None:
    assert cgroup_memory_limit(str(tmp_path / "absent")) == 0
    proc = _proc(tmp_path, "garbage\n", "not a mount line\n")
    assert cgroup_memory_limit(proc) == 0
    host = total_memory_bytes()
    assert host > 0
    assert usable_memory_bytes(0, proc) == host
    assert usable_memory_bytes(300 * MIB, proc) == 300 * MIB
    assert usable_memory_bytes(host * 2, proc) == host


def test_what_the_agent_holds_itself_is_not_offered(tmp_path) -> None:
    mount = tmp_path / "cg"
    _write(mount / "memory.max", str(600 * MIB))
    proc = _proc(tmp_path, "0::/\n", f"30 24 0:26 / {mount} rw - cgroup2 cgroup2 rw\n")
    _write(Path(proc) / "status", "Name:\tletmesh\nVmHWM:\t   80000 kB\nVmRSS:\t   51200 kB\n")
    assert usable_memory_bytes(0, proc) == 550 * MIB
    assert usable_memory_bytes(500 * MIB, proc) == 500 * MIB  # the operator's cap is the workers' own


def test_headroom_is_the_least_left_under_any_limit_along_the_path_counting_reclaimable_files(tmp_path) -> None:
    mount = tmp_path / "cg"
    _write(mount / "slice" / "memory.max", str(700 * MIB))
    _write(mount / "slice" / "memory.current", str(600 * MIB))
    _write(mount / "slice" / "memory.stat", f"anon {500 * MIB}\ninactive_file {40 * MIB}\n")
    _write(mount / "slice" / "svc" / "memory.max", str(600 * MIB))
    _write(mount / "slice" / "svc" / "memory.current", str(450 * MIB))
    _write(mount / "slice" / "svc" / "memory.stat", f"inactive_file {10 * MIB}\nactive_file {30 * MIB}\n")
    proc = _proc(tmp_path, "0::/slice/svc\n", f"30 24 0:26 / {mount} rw - cgroup2 cgroup2 rw\n")
    assert memory_headroom_bytes(proc) == 140 * MIB  # the slice: 700 - 600 + 40; the service has 160
    _write(mount / "slice" / "memory.max", "max\n")
    assert memory_headroom_bytes(proc) == 160 * MIB


def test_v1_headroom_and_none_beyond_the_hosts_without_a_limit(tmp_path) -> None:
    mount = tmp_path / "memory"
    _write(mount / "memory.limit_in_bytes", f"{512 * MIB}\n")
    _write(mount / "memory.usage_in_bytes", f"{500 * MIB}\n")
    _write(mount / "memory.stat", f"cache {100 * MIB}\ntotal_inactive_file {50 * MIB}\n")
    proc = _proc(tmp_path, "4:memory:/docker/abc\n", f"40 30 0:35 /docker/abc {mount} ro - cgroup cgroup rw,memory\n")
    assert memory_headroom_bytes(proc) == 62 * MIB
    _write(mount / "memory.usage_in_bytes", f"{600 * MIB}\n")  # past the limit by what it could reclaim
    assert memory_headroom_bytes(proc) == 0  # full, not unknown
    host = memory_headroom_bytes(str(tmp_path / "absent"))  # no cgroup: what the host has available
    assert 0 < host <= total_memory_bytes()


def _memory_cgroup(limit: int) -> tuple[Path, Path]:
    """A real memory cgroup with ``limit`` set: (the directory, its procs file). Skips when this
    host lets us make none."""
    group = memory_cgroup(limit, prefix="letmesh-test")
    if group is None:
        pytest.skip("no memory cgroup can be made here (needs root and a memory controller)")
    return group.path, group.procs


def _register_from_agent(tmp_path: Path, flags: list[str], procs: Path | None) -> RegisterAgent:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:0")
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)

    command = [sys.executable, "-m", "letmesh", "agent", "--controller", address, "--state-dir", str(tmp_path / "agent"),
               *flags]
    if procs is not None:  # the shell joins the cgroup, then becomes the agent
        command = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *command]
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out)
    try:
        assert router.poll(60_000), f"the agent did not register within 60 s: {log.read_text()[-2000:]}"
        peer, *frames = router.recv_multipart()
        msg, _ = decode(frames)
        assert isinstance(msg, RegisterAgent)
        router.send_multipart([peer, *encode(RegisterAgentReply(agent_id=msg.agent_id, heartbeat_interval_s=1.0,
                                                                 controller_epoch=1))])
        return msg
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        router.close(linger=0)
        ctx.term()


def _cpu_memory(msg: RegisterAgent) -> int:
    return next(d.memory_bytes for d in msg.devices if d.kind == "cpu")


def test_an_agent_in_a_memory_limited_cgroup_offers_the_limit_less_its_own_not_the_hosts_memory(tmp_path) -> None:
    limit = 900 * MIB
    assert total_memory_bytes() > limit
    group, procs = _memory_cgroup(limit)
    try:
        msg = _register_from_agent(tmp_path, [], procs)
        # The limit, less what the agent itself held then (its interpreter and libraries: tens of MiB).
        assert limit - 200 * MIB < _cpu_memory(msg) < limit - 10 * MIB
    finally:
        group.rmdir()


def test_max_memory_mb_caps_what_the_agent_offers(tmp_path) -> None:
    msg = _register_from_agent(tmp_path, ["--max-memory-mb", "700"], None)
    assert _cpu_memory(msg) == 700 * MIB
