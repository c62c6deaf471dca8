"""A cut agent, as a user would see it: a real mesh with two agents, one frozen (kill -STOP) long
enough to be declared lost, then thawed. Its variant moves to the other agent, ``letmesh status``
shows it LOST; back, it registers once, no healthy worker is restarted, no worker process outlives
the plan. An agent stopped cleanly leaves at once instead."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from agents.process import die_with_parent
from mesh.keys import ensure_local_keyring
from letmesh.profiles import fetch_profiles
from letmesh.status import StatusUnavailable, fetch_status, format_status
from tests.integration.conftest import wait_until

FAST = {
    "LETMESH_CONTROLLER_PROFILE_REPEATS": "5",
    "LETMESH_CONTROLLER_PROFILE_COLOCATION": "0",
    "LETMESH_CONTROLLER_STOP_DRAIN_S": "1",
    "LETMESH_CONTROLLER_REJOIN_SETTLE_S": "2",
}


def status_or_none(mesh):
    try:
        return fetch_status(mesh.controller_address, timeout_s=2.0)
    except StatusUnavailable:
        return None


def worker_processes(agent_id: str) -> set[int]:
    """Pids of live worker processes started by ``agent_id`` (they carry it in their environment)."""
    found = set()
    marker = f"LETMESH_WORKER_AGENT_ID={agent_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"agents.worker" in cmdline and marker in environ:
            found.add(int(entry))
    return found


def serving(status, variant: str = "identity") -> dict[str, tuple[str, int]]:
    """worker id -> (agent, pid) of the ready workers serving ``variant``."""
    return {w.worker_id: (w.agent_id, w.pid) for w in status.workers if w.state == "ready" and variant in w.variants}


@pytest.mark.timeout(420)
def test_a_cut_agent_is_replaced_shown_lost_and_rejoins_once_without_restarts_or_orphans(mesh_factory) -> None:
    mesh = mesh_factory(extra_env=FAST)
    second_state = mesh.state_dir / "second-agent"
    ensure_local_keyring(mesh.keys_dir, agents=("local", "second"))  # letmesh keys add agent second
    second = subprocess.Popen(
        [sys.executable, "-m", "letmesh", "--log-level", "WARNING", "agent", "--controller", mesh.controller_address,
         "--agent-id", "second", "--state-dir", str(second_state), "--max-cores", "1", "--keys", str(mesh.keys_dir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent,
    )
    agent_procs = {"local": mesh.procs["agent"], "second": second}
    frozen = None
    try:
        wait_until(lambda: (s := status_or_none(mesh)) and sum(a.alive for a in s.agents) == 2, 60, 0.2)
        wait_until(lambda: (p := fetch_profiles(mesh.controller_address)).samples and not p.running, 240, 1.0)

        def planned_and_settled():
            s = status_or_none(mesh)
            if s is None or not serving(s) or any(".g" not in w.worker_id for w in s.workers):
                return None  # the first plan from profiles has not replaced the initial placement yet
            return s if all(w.state == "ready" for w in s.workers) else None

        before = wait_until(planned_and_settled, 120, 0.2)
        victim = sorted(agent for agent, _ in serving(before).values())[0]
        other = "second" if victim == "local" else "local"
        victim_pids = worker_processes(victim)
        assert victim_pids, "the victim runs the serving worker"

        frozen = agent_procs[victim]
        os.kill(frozen.pid, signal.SIGSTOP)  # its workers keep running: only the agent is cut off

        def replaced():
            s = status_or_none(mesh)
            if s is None:
                return None
            lost = not {a.agent_id: a.alive for a in s.agents}[victim]
            moved = serving(s) and all(agent == other for agent, _ in serving(s).values())
            return s if lost and moved else None

        during = wait_until(replaced, 90, 0.2)
        lines = {line.split()[0]: line for line in format_status(during).splitlines()
                 if line.startswith("  ") and line.split()}
        assert "LOST" in lines[victim], format_status(during)
        healthy = {w.worker_id: w.pid for w in during.workers if w.agent_id == other and w.state == "ready"}

        os.kill(frozen.pid, signal.SIGCONT)
        frozen = None

        def healed():
            s = status_or_none(mesh)
            if s is None:
                return None
            back = {a.agent_id: a for a in s.agents}[victim]
            planned = {w.pid for w in s.workers if w.agent_id == victim and w.state in ("ready", "starting")}
            return s if back.alive and worker_processes(victim) <= planned else None

        after = wait_until(healed, 60, 0.2)
        assert {a.agent_id: a.joins for a in after.agents}[victim] == 2, "registered once more, however long the cut"
        still = {w.worker_id: w.pid for w in after.workers if w.agent_id == other and w.state == "ready"}
        assert still == healthy, "no healthy worker was restarted"
        assert not victim_pids & worker_processes(victim), "the replaced workers were stopped, none orphaned"
        assert serving(after), "the variant is served"

        second.send_signal(signal.SIGTERM)  # a clean stop: it says goodbye and is not shown LOST
        second.wait(30)
        gone = wait_until(lambda: (s := status_or_none(mesh)) and "second" not in {a.agent_id for a in s.agents}
                          and s, 20, 0.2)
        assert not any(w.agent_id == "second" for w in gone.workers)
    finally:
        if frozen is not None:
            os.kill(frozen.pid, signal.SIGCONT)
        if second.poll() is None:
            second.send_signal(signal.SIGTERM)
            try:
                second.wait(15)
            except subprocess.TimeoutExpired:
                second.kill()
                second.wait()
