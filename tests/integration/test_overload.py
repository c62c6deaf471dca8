"""At five times the rate a real mesh can serve, every request still gets exactly one answer, and
that answer comes within the request's deadline plus a bounded grace: a 200 in time, an
immediate 503/429 with Retry-After when the deadline cannot be met, or a 504 at the deadline.
Nothing waits in a queue past its deadline, nothing is left unanswered."""

from __future__ import annotations

import asyncio
import collections
import time

import aiohttp
import pytest

from letmesh.costly import build_costly
from letmesh.launcher import LocalMesh
from letmesh.profiles import wait_for_profiles
from tests.integration.conftest import _stop_and_check, steady_client

DEADLINE_MS = 250.0
# What a client may see beyond the deadline: the gateway's answer at the deadline, then the
# response's way back through the gateway's event loop, the kernel and this test's own event
# loop, all on a 2-core host that this test saturates (CI runs it beside other work). Before
# admission control, answers came up to 10.7 s after sending and 1 in 9 never came.
GRACE_MS = 250.0
FACTOR = 5.0
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}],
        "parameters": {"letmesh_slo_ms": DEADLINE_MS}}


@pytest.fixture
def costly_mesh(tmp_path):
    repo = tmp_path / "repo"
    build_costly(repo, variants=(("synth-large", 0.95, 3600),), slo_ms=DEADLINE_MS, max_batch=8)
    # One core: a worker on two cores runs torch with two threads, and beside other work on the
    # host (CI) each parallel region waits on the descheduled thread: start-up alone then took
    # minutes. The overload is relative to what this one core serves.
    mesh = LocalMesh(repository=repo, state_dir=tmp_path / "state", max_cores=1, extra_env={
        "LETMESH_CONTROLLER_PROFILE_REPEATS": "3", "LETMESH_CONTROLLER_PROFILE_COLOCATION": "0"})
    try:
        mesh.start(timeout_s=240)  # the worker warms the costly variant while profiling shares the cores
        yield mesh
    finally:
        _stop_and_check([mesh])


async def closed_loop(session: aiohttp.ClientSession, url: str, seconds: float, clients: int = 8) -> int:
    """Requests answered 200 within the deadline by ``clients`` back-to-back senders."""
    good = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal good
        while time.monotonic() < stop:
            sent = time.monotonic()
            async with session.post(url, json=BODY) as resp:
                await resp.read()
                if resp.status == 200 and time.monotonic() - sent <= DEADLINE_MS / 1000:
                    good += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return good


async def open_loop(session: aiohttp.ClientSession, url: str, rate: float, seconds: float) -> list[tuple]:
    """(sent, seconds to the answer, status, Retry-After) per request, sent at ``rate`` whatever comes back."""
    outcomes: list[tuple] = []

    async def one() -> None:
        sent = time.monotonic()
        async with session.post(url, json=BODY) as resp:
            await resp.read()
            outcomes.append((sent, time.monotonic() - sent, resp.status, resp.headers.get("Retry-After")))

    tasks = []
    with steady_client():
        start = time.monotonic()
        for i in range(max(1, int(rate * seconds))):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        done, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} of {len(tasks)} requests had no answer 30 s after the last was sent"
    for task in done:
        task.result()  # a connection error fails here
    return outcomes


@pytest.mark.timeout(480)  # mesh start and profiling share the cores with the warm-up; slow beside other work
async def test_five_times_the_sustainable_rate_answers_every_request_within_its_deadline_and_grace(costly_mesh) -> None:
    # Profiles first: the plan made from them replaces the initial placement, and a rate probed
    # while that move is under way is not the mesh's.
    await asyncio.to_thread(wait_for_profiles, costly_mesh.controller_address, timeout_s=240, say=lambda line: None)
    url = f"{costly_mesh.http_url}/v2/models/synth-large/infer"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await closed_loop(session, url, 3.0)  # warm: the worker's first batches, the connections, a re-plan
        probe_s = 4.0
        sustainable = await closed_loop(session, url, probe_s) / probe_s
        assert sustainable > 0, "the mesh serves nothing within the deadline before the overload"
        rate = FACTOR * sustainable
        burst = await open_loop(session, url, rate, 8.0)
        after = await open_loop(session, url, sustainable / 2, 4.0)

    statuses = collections.Counter(status for _, _, status, _ in burst)
    summary = (f"{rate:.0f} req/s for 8 s ({FACTOR:g}x the {sustainable:.1f} req/s served in time by 8 closed-loop "
               f"clients): {dict(statuses)}")
    assert set(statuses) <= {200, 429, 503, 504}, summary
    refused = [o for o in burst if o[2] in (429, 503)]
    assert refused, f"nothing was refused early: {summary}"
    assert all(retry is not None and float(retry) > 0 for _, _, _, retry in refused), \
        f"a 503/429 without Retry-After: {summary}"
    latest = max(burst, key=lambda o: o[1])
    assert latest[1] * 1000 <= DEADLINE_MS + GRACE_MS, (
        f"an answer ({latest[2]}) came {latest[1] * 1000:.0f} ms after sending, past the {DEADLINE_MS:.0f} ms "
        f"deadline + {GRACE_MS:.0f} ms grace: {summary}")
    served = statuses[200] / 8.0
    assert served >= 0.5 * sustainable, f"the overload cut what is served in time to {served:.1f} req/s: {summary}"
    # Once the burst is over, the mesh serves at half the sustainable rate as before it.
    after_statuses = collections.Counter(status for _, _, status, _ in after)
    assert after_statuses[200] >= 0.9 * len(after), f"after the burst: {dict(after_statuses)}; {summary}"
