"""The namespace lab itself: hosts reach each other through the bridge, a cut is silent, and
nothing it made outlives it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.multihost.mesh import wait_for
from tests.multihost.netns import NetnsLab, remove_stale, unavailable_reason

pytestmark = pytest.mark.timeout(120)

LISTEN = "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 7000)); s.listen(); time.sleep(300)"


def connect(address: str, timeout_s: float) -> str:
    """"ok", "refused" or "timeout" for a TCP connect from this (root) namespace."""
    with socket.socket() as s:
        s.settimeout(timeout_s)
        try:
            s.connect((address, 7000))
            return "ok"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"


def connect_from(lab: NetnsLab, host: str, address: str) -> str:
    code = ("import socket; s=socket.socket(); s.settimeout(2)\n"
            f"try: s.connect(('{address}', 7000)); print('ok')\n"
            "except TimeoutError: print('timeout')\n")
    done = subprocess.run(lab.command(host, [sys.executable, "-c", code]), capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


def names_with(tag: str) -> list[str]:
    found = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if tag in line]


def test_a_cut_host_is_silently_unreachable_until_healed(lab_factory) -> None:
    lab = lab_factory(["h1", "h2"])
    lab.spawn("h1", [sys.executable, "-c", LISTEN], label="listener")
    h1 = lab.address("h1")
    wait_for(lambda: connect(h1, 2.0) == "ok", 30, what="listener reachable through the bridge")
    assert connect_from(lab, "h2", h1) == "ok"

    lab.cut("h1")
    assert connect(h1, 1.0) == "timeout", "a cut must drop silently, not refuse"
    assert connect_from(lab, "h2", h1) == "timeout"

    lab.heal("h1")
    wait_for(lambda: connect(h1, 2.0) == "ok", 30, what="reachable again after the heal")


def test_close_leaves_no_process_namespace_or_link_even_for_a_process_outside_its_group(tmp_path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = NetnsLab(["h1"], log_dir=tmp_path)
    lab.open()
    try:
        inside = lab.spawn("h1", ["sleep", "300"])
        lab.spawn("h1", ["setsid", "--fork", "sleep", "301"])  # leaves the group it was started in
        wait_for(lambda: len(lab.pids("h1")) >= 2, 10, what="both sleepers running")
        pids = lab.pids("h1")
        assert inside.pid in pids
    finally:
        lab.close()
    assert names_with(lab.tag) == []
    for pid in pids:
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10, what=f"pid {pid} gone")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_names_left_by_a_dead_run_are_removed_and_a_live_run_is_left_alone() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, live = f"lmn{gone.pid}q", f"lmn{os.getpid()}y"
    if os.path.exists(f"/proc/{gone.pid}"):
        pytest.skip("the dead run's pid was reused already")
    subprocess.run(["ip", "netns", "add", f"{dead}-h1"], check=True)
    subprocess.run(["ip", "link", "add", "name", f"{dead}br", "type", "bridge"], check=True)
    subprocess.run(["ip", "netns", "add", f"{live}-h1"], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", f"{dead}-h1", "sleep", "300"])
    try:
        wait_for(lambda: subprocess.run(["ip", "netns", "pids", f"{dead}-h1"], capture_output=True,
                                        text=True).stdout.strip(), 10, what="a process in the stale namespace")
        removed = remove_stale()
        assert {f"{dead}-h1", f"{dead}br"} <= set(removed)
        assert names_with(dead) == []
        assert sleeper.wait(10) == -signal.SIGKILL
        assert names_with(live), "a namespace of a live run was removed"
    finally:
        sleeper.kill()
        sleeper.wait()
        for args in (["netns", "del", f"{dead}-h1"], ["link", "del", f"{dead}br"], ["netns", "del", f"{live}-h1"]):
            subprocess.run(["ip", *args], capture_output=True)
