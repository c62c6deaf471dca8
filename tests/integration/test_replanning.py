"""A real mesh re-plans on its own when demand moves between two model families, moving only the
workers it must, and drops no request meanwhile."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest

from letmesh.launcher import LocalMesh
from letmesh.profiles import wait_for_profiles
from letmesh.status import fetch_status
from tests.integration.conftest import _stop_and_check, steady_client, wait_until

FAST_REPLANNING = {
    "LETMESH_CONTROLLER_REPLAN_PERIOD_S": "2",
    "LETMESH_CONTROLLER_DEMAND_HALF_LIFE_S": "1",
    "LETMESH_CONTROLLER_DEMAND_HISTORY_S": "4",
    "LETMESH_CONTROLLER_PROFILE_REPEATS": "5",
    "LETMESH_CONTROLLER_PROFILE_COLOCATION": "0",
    "LETMESH_CONTROLLER_STOP_DRAIN_S": "1",
}


def layout(mesh: LocalMesh) -> frozenset:
    """The serving layout: (cores, variants) of every ready worker."""
    return frozenset((w.partition.cores, w.variants) for w in fetch_status(mesh.controller_address).workers
                     if w.state == "ready")


async def paced(session: aiohttp.ClientSession, url: str, body: dict, rate: float, seconds: float) -> list[tuple]:
    """Open-loop load at ``rate`` req/s; returns (sent at, status, slo status, variant) per request."""
    outcomes: list[tuple] = []

    async def one(sent: float) -> None:
        async with session.post(url, json=body) as resp:
            payload = await resp.json(content_type=None)
            params = payload.get("parameters", {}) if resp.status == 200 else {}
            outcomes.append((sent, resp.status, params.get("letmesh_slo_status"), params.get("letmesh_variant")))

    tasks = []
    n = int(rate * seconds)
    with steady_client():
        start = time.monotonic()
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(time.monotonic() - start)))
        await asyncio.wait_for(asyncio.gather(*tasks), 30)  # a request left hanging fails the test here
    assert len(outcomes) == n
    return outcomes


def attainment(outcomes: list[tuple], after_s: float) -> float:
    steady = [o for o in outcomes if o[0] >= after_s]
    return sum(1 for _, status, slo, _ in steady if status == 200 and slo == "met") / len(steady)


@pytest.fixture
def replanning_mesh(tmp_path, digits_repo):
    mesh = LocalMesh(repository=digits_repo, state_dir=tmp_path / "state", extra_env=FAST_REPLANNING)
    try:
        mesh.start(timeout_s=120)
        yield mesh
    finally:
        _stop_and_check([mesh])


@pytest.mark.timeout(300)
async def test_demand_moving_between_families_replans_the_mesh_without_losing_requests(replanning_mesh, digits_repo):
    mesh = replanning_mesh
    await asyncio.to_thread(wait_for_profiles, mesh.controller_address, timeout_s=180, say=lambda line: None)
    # The first plan replaces the initial placement once profiles are in.
    await asyncio.to_thread(wait_until, lambda: any(".g" in w.worker_id and w.state == "ready"
                                                    for w in fetch_status(mesh.controller_address).workers), 60, 0.2)
    image = np.load(digits_repo / "digits-heldout.npz")["images"][0]
    digits = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64], "data": image.tolist()}],
              "parameters": {"letmesh_slo_ms": 200}}
    trivial = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}],
               "parameters": {"letmesh_slo_ms": 200}}
    phases = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        for name, url, body in (("digits", f"{mesh.http_url}/v2/models/digits-cnn/infer", digits),
                                ("trivial", f"{mesh.http_url}/v2/models/identity/infer", trivial)):
            outcomes = await paced(session, url, body, rate=120, seconds=14)
            phases[name] = (outcomes, layout(mesh), fetch_status(mesh.controller_address))

    for name, (outcomes, _, _) in phases.items():
        statuses = {o[1] for o in outcomes}
        assert statuses <= {200, 503, 504}, (name, statuses)
        steady = attainment(outcomes, after_s=8.0)
        assert steady >= 0.99, f"{name}: SLO attainment {steady:.2%} at steady state"
    (_, layout_a, status_a), (_, layout_b, status_b) = phases["digits"], phases["trivial"]
    # The plan follows the demand: a re-plan for the moved demand re-partitions the mesh, or keeps
    # every worker where the layout serving carries the new mix as well as a fresh packing would
    # (a re-plan moves only what it must; only the routing split changes then).
    followed = status_b.replans[:len(status_b.replans) - len(status_a.replans)]
    assert followed, f"no re-plan followed the demand: {sorted(layout_a)}"
    assert layout_a != layout_b or all(r.started == 0 and r.retired == 0 for r in followed), (sorted(layout_a), followed)
    assert {m.name for m in status_b.models if m.state == "READY"} == {
        "digits-cnn", "digits-linear", "digits-mlp", "digits-wide", "identity"}
