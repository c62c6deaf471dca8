"""Under overload a real mesh moves a family to cheaper variants and keeps its deadlines, then
returns to full accuracy when the load falls."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time

import aiohttp
import pytest

from letmesh.costly import build_costly
from letmesh.launcher import LocalMesh
from letmesh.profiles import wait_for_profiles
from letmesh.status import fetch_status
from tests.integration.conftest import _stop_and_check, wait_until
from tests.integration.test_replanning import attainment, paced

ACCURACY = {"synth-large": 0.95, "synth-medium": 0.90, "synth-small": 0.80}
SETTINGS = {
    "LETMESH_CONTROLLER_REPLAN_PERIOD_S": "3",
    "LETMESH_CONTROLLER_FAST_REPLAN_S": "1",
    "LETMESH_CONTROLLER_DEMAND_HALF_LIFE_S": "1",
    "LETMESH_CONTROLLER_DEMAND_HISTORY_S": "3",
    "LETMESH_CONTROLLER_PROFILE_REPEATS": "3",
    "LETMESH_CONTROLLER_PROFILE_COLOCATION": "0",
    "LETMESH_CONTROLLER_STOP_DRAIN_S": "1",
    # No feedback in this test: the most accurate candidate, or the plan's shares while it scales.
    "LETMESH_GATEWAY_SELECTION": "accurate",
}
# The accurate variant costs ~4x the default (per row, so batching does not hide it): the overload
# is in the models, which the mesh controls, at a request rate the host's HTTP path and the
# test's client carry with room to spare even beside other work.
VARIANTS = (("synth-large", 0.95, 14400), ("synth-medium", 0.90, 720), ("synth-small", 0.80, 24))
# Generous: the return waits on the demand history (3 s here), a re-plan period (3 s) and a
# worker's start, which a slow or busy machine stretches (the mesh was back 11 s after the load
# fell on an idle 2-core host, about 15 s on a slower one beside other tests).
RETURN_LIMIT_S = 60.0
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}],
        "parameters": {"letmesh_slo_ms": 250}}


@pytest.fixture
def costly_mesh(tmp_path):
    repo = tmp_path / "repo"
    # The cost is per row: batches past 8 gain nothing (and past the SLO at full accuracy), and
    # the cap keeps the workers' warm-up and the mesh's profiling short.
    build_costly(repo, variants=VARIANTS, slo_ms=250, max_batch=8)
    # The controller's plans are logged, to read a failure with (see plan_lines).
    mesh = LocalMesh(repository=repo, state_dir=tmp_path / "state", extra_env=SETTINGS,
                     log_level="INFO", log_dir=tmp_path / "logs")
    try:
        mesh.start(timeout_s=240)  # workers warm the costly variants while profiling shares the cores
        yield mesh
    finally:
        _stop_and_check([mesh])


def _row_ms(repo) -> float:
    return json.loads((repo / "synth-large" / "manifest.json").read_text())["profile_ms"]["1"]


def _profiled_ms(profiles) -> list[float]:
    """The mesh's own batch-1 profile of the accurate variant on one core (the plan's figure)."""
    return [s.p50_ms for s in profiles.samples if s.variant == "synth-large" and s.partition == 1 and s.batch == 1]


def _profiled_row_ms(profiles) -> list[float]:
    """The accurate variant's cost per row on one core at each batch size the mesh profiled."""
    return [s.p50_ms / s.batch for s in profiles.samples if s.variant == "synth-large" and s.partition == 1]


def burst_rate(repo, profiles) -> float:
    """1.2x what every core of this host serves of the accurate variant one row at a time (its
    cost is per row), at most 200 req/s: an overload at full accuracy on any machine's speed. The
    row cost is the smallest of the build's measure and the mesh's profile at any batch size:
    other work beside a measure only makes it larger, a burst sized on an inflated cost is no
    overload, and the plan counts on the profile's best batch (beside a busy neighbour one
    profile read 44 ms a row at batch 1 and 23 ms at batch 4: a burst sized on the 44 ms was
    less than the plan took the mesh to carry at full accuracy)."""
    return min(200.0, 1.2 * len(os.sched_getaffinity(0)) * 1000.0 / min([_row_ms(repo), *_profiled_row_ms(profiles)]))


def light_rate(repo, profiles) -> float:
    """An eighth of what one core serves of the accurate variant, at most 20 req/s: a light load
    on any machine's speed, even when the plan gives that variant a single core and other work on
    the host takes half of it. The row cost is the larger of the build's measure and the mesh's own
    profile on one core (the plan's figure, taken while workers warm beside it), both in CPU time,
    which a busy neighbour does not show. At a quarter of a core, beside a CPU hog and the other
    half of the suite, the gateway (the deadline first: P(met) >= 0.99) sent 15 of 20 requests to
    the cheaper variant in the 3 s after the mesh was back at full accuracy: the accurate worker,
    slower than its profile there, had a request ahead too often to be sure."""
    return min(20.0, 0.125 * 1000.0 / max([_row_ms(repo), *_profiled_ms(profiles)]))


def timeline(outcomes: list[tuple], step_s: float = 3.0) -> str:
    """Statuses and variants per window, to read a failure."""
    rows = []
    for start in range(0, int(max(o[0] for o in outcomes)) + 1, int(step_s)):
        w = [o for o in outcomes if start <= o[0] < start + step_s]
        rows.append(f"{start}s {dict(collections.Counter(o[1] for o in w))} {dict(collections.Counter(o[3] for o in w))}")
    return "; ".join(rows)


def plan_lines(mesh: LocalMesh, last: int = 12) -> str:
    """The controller's last plans and what moved it, to read a failure with."""
    path = mesh.log_dir / "controller.log"
    if not path.exists():
        return "(no controller log)"
    keys = ("accuracy scaling", "re-plan", "fits at full accuracy", "unserved", "slow")
    lines = [line for line in path.read_text(errors="replace").splitlines() if any(k in line for k in keys)]
    return "\n".join(lines[-last:])


def mean_accuracy(outcomes: list[tuple], after_s: float) -> float:
    served = [ACCURACY[o[3]] for o in outcomes if o[0] >= after_s and o[1] == 200]
    return sum(served) / len(served)


async def light_until_back(session: aiohttp.ClientSession, url: str, rate: float, mesh: LocalMesh,
                           limit_s: float) -> tuple[list[tuple], float | None]:
    """Light load in 2 s stretches until the controller's newest re-plan gives no accuracy up and
    its move is over, for at most ``limit_s``: the outcomes (sent at, from the first stretch) and
    the seconds the return took, None if it did not come. How long a return takes is the demand
    tracker's history, a re-plan period and starting workers, which a slower machine stretches:
    the test waits for the mesh to say it is back, then judges what clients get."""
    outcomes: list[tuple] = []
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < limit_s:
        outcomes += [(sent + elapsed, *rest) for sent, *rest in await paced(session, url, BODY, rate=rate, seconds=2)]
        newest = (await asyncio.to_thread(fetch_status, mesh.controller_address)).replans[0]
        if not newest.scaled and newest.finished:
            return outcomes, time.monotonic() - start
    return outcomes, None


def planned(status) -> bool:
    """The plan made from the profiles is in place: its re-plan has finished and every worker is
    ready (workers it started, or those it kept: the first workers may be the plan already)."""
    return (any(r.reason == "initial" and r.finished for r in status.replans)
            and bool(status.workers) and all(w.state == "ready" for w in status.workers))


@pytest.mark.timeout(480)
async def test_overload_moves_to_cheaper_variants_within_deadlines_and_accuracy_returns(costly_mesh) -> None:
    mesh = costly_mesh
    profiles = await asyncio.to_thread(wait_for_profiles, mesh.controller_address, timeout_s=240,
                                       say=lambda line: None)
    await asyncio.to_thread(wait_until, lambda: planned(fetch_status(mesh.controller_address)), 60, 0.2,
                            "the plan made from the profiles in place")
    url = f"{mesh.http_url}/v2/models/synth/infer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        light = light_rate(mesh.repository, profiles)
        calm = await paced(session, url, BODY, rate=light, seconds=8)
        burst = await paced(session, url, BODY, rate=burst_rate(mesh.repository, profiles), seconds=25)
        scaled_at_end = (await asyncio.to_thread(fetch_status, mesh.controller_address)).replans[0].scaled
        falling, back_after_s = await light_until_back(session, url, light, mesh, limit_s=RETURN_LIMIT_S)
        after = await paced(session, url, BODY, rate=light, seconds=8)

    for name, outcomes in (("calm", calm), ("burst", burst), ("falling", falling), ("after", after)):
        statuses = collections.Counter(o[1] for o in outcomes)
        assert set(statuses) <= {200, 503, 504}, (name, statuses)
    steady = attainment(burst, after_s=12.0)
    assert mean_accuracy(calm, after_s=4.0) == pytest.approx(0.95), \
        f"light load is served at full accuracy: {timeline(calm)}"
    assert steady >= 0.99, \
        f"SLO attainment {steady:.2%} at steady state under overload: {timeline(burst)}\n{plan_lines(mesh)}"
    assert mean_accuracy(burst, after_s=12.0) < 0.95, "overload is carried by cheaper variants"
    assert scaled_at_end, f"the plan in place at the end of the burst gives accuracy up\n{plan_lines(mesh)}"
    assert back_after_s is not None, \
        f"accuracy returns when the load falls, within {RETURN_LIMIT_S:.0f} s: {timeline(falling)}\n{plan_lines(mesh)}"
    assert mean_accuracy(after, after_s=1.0) == pytest.approx(0.95), \
        (f"once the mesh is back at full accuracy ({back_after_s:.1f} s after the load fell), light load is served "
         f"at full accuracy: {timeline(after)}\n{plan_lines(mesh)}")
