"""A host whose memory binds: the agent offers twice what a process that imports the worker holds
of its own (torch: ~150 MiB here), beside models of a few bytes. By the variants' needs alone two
families get a worker on each of the two cores; with what the workers report of their peaks, the
mesh settles on one worker that serves both, within what the host offers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from letmesh.status import fetch_status
from tests.integration.conftest import wait_until
from tests.integration.test_hardening import infer

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
# What a process that imports the worker's module holds of its own: a worker holds that and more
# (its model, batches and sockets), so two of them exceed 90 % of twice it, and one fits in it.
IMPORTED = ("import os, agents.worker; from agents.proc_usage import process_usage; "
            "print(process_usage(os.getpid()).own_peak_bytes())")


@pytest.mark.timeout(300)  # a mesh start, the profiles and a re-plan, on a busy host
def test_workers_peaks_bring_the_layout_within_the_memory_the_host_offers(mesh_factory, trivial_repo: Path,
                                                                          tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(trivial_repo, repo)
    shutil.copytree(trivial_repo / "identity", repo / "echo")  # a second family, the same tiny model
    manifest = json.loads((repo / "echo" / "manifest.json").read_text())
    manifest.update(variant="echo", family="echo")
    (repo / "echo" / "manifest.json").write_text(json.dumps(manifest))

    imported = int(subprocess.run([sys.executable, "-c", IMPORTED], cwd=ROOT, capture_output=True, text=True,
                                  check=True, timeout=120).stdout)
    offered_mb = 2 * imported // MIB
    mesh = mesh_factory(repository=repo, extra_env={"LETMESH_AGENT_MAX_MEMORY_MB": str(offered_mb)})
    (agent,) = fetch_status(mesh.controller_address, timeout_s=20).agents
    assert [d.memory_bytes for d in agent.devices if d.kind == "cpu"] == [offered_mb * MIB]

    def settled():
        status = fetch_status(mesh.controller_address, timeout_s=20)
        ready = [w for w in status.workers if w.state == "ready"]
        if len(status.workers) != 1 or len(ready) != 1 or sorted(ready[0].variants) != ["echo", "identity"]:
            return None
        return ready[0]

    worker = wait_until(settled, timeout_s=150, interval_s=0.5,
                        what="one worker serving both families, the only worker of the plan")
    assert imported <= worker.memory_peak_bytes <= 0.9 * offered_mb * MIB
    assert infer(mesh.http_url, "identity")[0] == 200 and infer(mesh.http_url, "echo")[0] == 200
