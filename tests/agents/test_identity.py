"""The agent's id: random, kept across restarts in its state dir, not shared by fresh clones;
and the probe does not import torch on a host without an NVIDIA driver."""

from __future__ import annotations

import subprocess
import sys

from agents.identity import persistent_agent_id
from agents.probe import nvidia_driver_present


def test_the_id_survives_a_restart_and_a_fresh_state_dir_gets_another(tmp_path) -> None:
    first = persistent_agent_id(tmp_path / "host-a")
    assert first.startswith("agent-") and first == persistent_agent_id(tmp_path / "host-a")
    assert persistent_agent_id(tmp_path / "host-b") != first
    assert (tmp_path / "host-a" / "agent-id").read_text().strip() == first


def test_probing_a_host_without_an_nvidia_driver_does_not_import_torch() -> None:
    if nvidia_driver_present():
        return  # this host has a GPU: torch is imported to describe it, as it should be
    code = "import sys; from agents.probe import probe_devices; probe_devices(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
