"""A host whose memory binds: the agent offers 350 MiB (as a container's limit would have it), each
worker process holds ~220 MiB of its own (torch) beside models of a few bytes. By the variants'
needs alone two families get a worker on each of the two cores; with what the workers report of
their peaks, the mesh settles on one worker that serves both, within what the host offers."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from letmesh.status import fetch_status
from tests.integration.conftest import wait_until

MIB = 1 << 20
OFFERED_MB = 350


def infer(url: str, model: str) -> int:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]}).encode()
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.timeout(300)  # a mesh start, the profiles and a re-plan, on a busy host
def test_workers_peaks_bring_the_layout_within_the_memory_the_host_offers(mesh_factory, trivial_repo: Path,
                                                                          tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(trivial_repo, repo)
    shutil.copytree(trivial_repo / "identity", repo / "echo")  # a second family, the same tiny model
    manifest = json.loads((repo / "echo" / "manifest.json").read_text())
    manifest.update(variant="echo", family="echo")
    (repo / "echo" / "manifest.json").write_text(json.dumps(manifest))

    mesh = mesh_factory(repository=repo, extra_env={"LETMESH_AGENT_MAX_MEMORY_MB": str(OFFERED_MB)})
    (agent,) = fetch_status(mesh.controller_address, timeout_s=20).agents
    assert [d.memory_bytes for d in agent.devices if d.kind == "cpu"] == [OFFERED_MB * MIB]

    def settled():
        status = fetch_status(mesh.controller_address, timeout_s=20)
        ready = [w for w in status.workers if w.state == "ready"]
        if len(status.workers) != 1 or len(ready) != 1 or sorted(ready[0].variants) != ["echo", "identity"]:
            return None
        return ready[0]

    worker = wait_until(settled, timeout_s=150, interval_s=0.5,
                        what="one worker serving both families, the only worker of the plan")
    assert 0 < worker.memory_peak_bytes <= 0.9 * OFFERED_MB * MIB
    assert infer(mesh.http_url, "identity") == 200 and infer(mesh.http_url, "echo") == 200
