"""The healthchecks of docker-compose.yml, run as commands against a real mesh on loopback: each passes
while its role serves and fails when nothing is there, so `restart`/`depends_on` act on the truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from letmesh.launcher import free_port

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("controller", "gateway", "agent")


def local_command(test: list[str], *, controller: str, keys: Path, http: str, agent: str) -> list[str]:
    """A compose healthcheck's command pointed at a mesh on this machine instead of the containers."""
    assert test[0] == "CMD"
    words = []
    for word in test[1:]:
        for old, new in (("tcp://127.0.0.1:5555", controller), ("tcp://controller:5555", controller),
                         ("/keys/ring", str(keys)), ("http://127.0.0.1:8000", http), ("'cpu-agent'", repr(agent))):
            word = word.replace(old, new)
        words.append(word)
    if words[0] == "letmesh":
        return [sys.executable, "-m", "letmesh", *words[1:]]
    assert words[0] == "python"
    return [sys.executable, *words[1:]]


def run_check(command: list[str]) -> int:
    return subprocess.run(command, capture_output=True, timeout=60).returncode


def test_each_healthcheck_passes_on_a_live_mesh_and_fails_without_one(mesh) -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    tests = {role: services[role]["healthcheck"]["test"] for role in ROLES}
    live = dict(controller=mesh.controller_address, keys=mesh.keys_dir, http=mesh.http_url, agent="local")
    dead_port = free_port()
    dead = dict(live, controller=f"tcp://127.0.0.1:{dead_port}", http=f"http://127.0.0.1:{dead_port}")

    for role in ROLES:
        assert run_check(local_command(tests[role], **live)) == 0, f"{role} healthcheck fails on a live mesh"
    for role in ROLES:
        assert run_check(local_command(tests[role], **dead)) != 0, f"{role} healthcheck passes with nothing there"
    # The agent's check is about that agent: another name, unknown to the controller, is not healthy.
    assert run_check(local_command(tests["agent"], **dict(live, agent="edge-elsewhere"))) != 0
