"""The gateway's dashboard, opened in a real headless Chromium, draws the mesh that is running:
its devices split into gpu-lets with their variants, and what selection prefers per context.

The screenshot is written to ``$LETMESH_ARTIFACTS`` when set (else the test's tmp dir) and its
path printed. Skipped, saying why, on a machine without Chromium (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from letmesh.launcher import LocalMesh
from letmesh.status import fetch_status
from protocol.types import WorkerState
from tests.chromium import Chromium, find_chromium
from tests.integration.conftest import _stop_and_check

pytestmark = pytest.mark.timeout(300)

APPS = ("reader-fast", "reader-accurate")

# What the page drew, read from its DOM: devices, and the gpu-lets on them with state and variants.
DRAWN = """JSON.stringify({
  renders: Number(document.body.dataset.renders || 0),
  devices: [...document.querySelectorAll('.device[data-device]')].map((d) => d.dataset.device),
  gpulets: Object.fromEntries([...document.querySelectorAll('.device:not([data-device="other"]) .gpulet')].map(
    (g) => [g.dataset.worker, [g.dataset.state, [...g.querySelectorAll('.variant')].map((v) => v.dataset.variant).sort()]])),
  contexts: [...document.querySelectorAll('#bandit tr[data-family]')].map((r) => r.dataset.family + ': ' + r.cells[1].textContent),
  replans: document.querySelectorAll('#replans tr[data-replan]').length,
})"""


@pytest.fixture(scope="module")
def digits_mesh(tmp_path_factory, digits_repo):
    mesh = LocalMesh(repository=digits_repo, state_dir=tmp_path_factory.mktemp("dashboard-state"))
    try:
        mesh.start(timeout_s=120)
        yield mesh
    finally:
        _stop_and_check([mesh])


async def send_traffic(mesh: LocalMesh, images: np.ndarray, per_app: int) -> None:
    """Family requests from two applications, so that selection has contexts to show."""
    url = f"{mesh.http_url}/v2/models/digits/infer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def one(i: int, app: str) -> int:
            body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64], "data": images[i].tolist()}],
                    "parameters": {"letmesh_slo_ms": 500, "letmesh_context": {"app": app}}}
            async with session.post(url, json=body) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one(i, app) for i in range(per_app) for app in APPS))
    assert set(statuses) == {200}, statuses


def expected_mesh(mesh: LocalMesh) -> tuple[set[str], dict[str, list]]:
    status = fetch_status(mesh.controller_address)
    devices = {f"{a.agent_id}/{d.device_id}" for a in status.agents for d in a.devices}
    ready = {w.worker_id: ["ready", sorted(w.variants)] for w in status.workers if w.state == WorkerState.READY}
    return devices, ready


async def test_the_dashboard_draws_the_running_mesh_in_headless_chromium(digits_mesh, digits_repo, tmp_path,
                                                                         capsys) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium on this machine: install Debian's chromium package (.ci/run does) to run this test")
    images = np.load(digits_repo / "digits-heldout.npz")["images"]
    await send_traffic(digits_mesh, images, per_app=20)
    artifacts = Path(os.environ.get("LETMESH_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "dashboard.png"

    async with Chromium(binary) as browser:
        await browser.goto(f"{digits_mesh.http_url}/dashboard")
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # the page polls every 2 s; devices appear once the controller's status reached the gateway
            devices, ready = expected_mesh(digits_mesh)  # read each time: a re-plan may move the mesh meanwhile
            drawn = json.loads(await browser.evaluate(DRAWN) or "{}")
            if (ready and drawn.get("gpulets") == ready and set(drawn.get("devices", ())) >= devices
                    and len(drawn.get("contexts", ())) >= len(APPS)):
                break
            if asyncio.get_running_loop().time() > deadline:
                await browser.screenshot(shot)
                pytest.fail(f"the page never drew the mesh: drew {drawn}, mesh has devices {devices} and ready "
                            f"workers {ready}; screenshot {shot}")
            await asyncio.sleep(0.5)
        await browser.screenshot(shot)

    with capsys.disabled():
        print(f"\ndashboard screenshot: {shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn["renders"] >= 1
    assert all(any(app in c for c in drawn["contexts"]) for app in APPS), drawn["contexts"]
    assert any(variants for _, variants in drawn["gpulets"].values())
