"""A mesh across hosts: controller, gateway and three agents, each in its own network namespace.

Every role is started with the command a user runs (``python -m letmesh <role> ...``, README
"Running a mesh") and reaches the others only through the bridge; the client sends from this
(root) namespace to the gateway's address. Links are cut silently at the bridge, under steady
open-loop load. The figures each fault produced are printed; the invariants (every request
answered exactly once, no orphan worker, the mesh back after the heal) are asserted.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from letmesh.status import StatusUnavailable, fetch_status
from letmesh.zoo import build_trivial
from mesh.keys import revoke_peer, split_server_key
from tests.multihost.conftest import CONTROLLER_CUT_S, CUT_S, RATE_RPS
from tests.multihost.faults import (FaultReport, agent_cut, controller_cut, describe, serving_again, settle,
                                   wait_orphans_gone)
from tests.multihost.load import OpenLoopLoad, tally
from tests.multihost.mesh import DATA_PORT, QUICK_PROFILING, NetMesh, alive_agents, serving_workers, wait_for

pytestmark = pytest.mark.timeout(300)

AGENTS = ["a1", "a2", "a3"]
HEARTBEAT_S = 0.5  # the roles' default heartbeat_interval_s
ANSWERS = {200, 503, 504}  # what a request may get while a host is cut


def role_args(role: str, host: str) -> list[str]:
    """Extra flags per role and host: where credentials go once the mesh has them."""
    return []


@pytest.fixture(scope="module")
def mesh(lab_factory, tmp_path_factory) -> Iterator[NetMesh]:
    lab = lab_factory(["ctl", "gw", *AGENTS])
    root = tmp_path_factory.mktemp("multihost")
    build_trivial(root / "repository")
    m = NetMesh(lab, root / "repository", root / "state", env=QUICK_PROFILING, role_args=role_args)
    m.start(AGENTS)
    yield m
    codes = m.stop()
    assert all(code == 0 for code in codes.values()), f"roles' exit codes at shutdown: {codes}"
    for host in lab.hosts:
        assert not lab.pids(host), f"processes left on {host} after every role stopped"


def emit(capsys, report: FaultReport) -> None:
    with capsys.disabled():
        print()
        for row in report.rows():
            print(row)


# --- (a) the mesh forms and serves across hosts ------------------------------------------


def test_mesh_forms_across_hosts_and_every_request_is_answered_with_its_own_outputs(mesh) -> None:
    status = asyncio.run(settle(mesh, timeout_s=60))  # the first re-plan, once profiles are in, has run
    assert alive_agents(status) == set(AGENTS)
    assert [split_server_key(g)[0] for g in status.gateways] == [f"tcp://{mesh.lab.address('gw')}:{DATA_PORT}"]
    serving = serving_workers(status, "identity")
    assert serving, "no ready worker serves the model"
    for agent, worker, pid in serving:
        assert pid in mesh.worker_processes(agent), f"{worker}'s process is not running on host {agent}"

    for i in range(30):
        data = [float(i), -1.5, 0.25, *([0.5] * 13)]
        body = json.dumps({"id": f"a{i}", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                                       "data": data}]}).encode()
        req = urllib.request.Request(mesh.http_url + "/v2/models/identity/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"request {i}: {exc.code} {exc.read()!r}; {describe(mesh.status())}") from None
        assert answer["id"] == f"a{i}"
        assert answer["outputs"][0]["data"] == data


# --- (b) an agent cut under steady load -------------------------------------------------


@pytest.fixture(scope="module")
def agent_cut_report(mesh) -> FaultReport:
    return asyncio.run(agent_cut(mesh, cut_s=CUT_S, rate_rps=RATE_RPS))


def test_agent_cut_under_load_every_request_is_answered_exactly_once(agent_cut_report, capsys) -> None:
    report = agent_cut_report
    emit(capsys, report)
    total = report.total
    assert report.during.sent > 0 and report.after.sent > 0
    assert total.unanswered == 0, f"requests left without an answer: {total.line()}"
    assert set(total.statuses) <= ANSWERS, total.line()
    assert total.crossed == 0, "a 200 carried another request's id"
    assert total.missing_retry_after == 0, "a 503 without Retry-After"
    assert report.detect_s is not None, "the controller never reported the cut agent lost"


def test_agent_cut_variant_serves_again_after_the_heal_with_no_orphan_worker(agent_cut_report) -> None:
    report = agent_cut_report
    assert report.resume_s is not None, "the healed agent did not come back, or the model was not served"
    assert report.serving_resumed_s is not None, f"requests still failing at the end: {report.after.line()}"
    assert report.after.ok > 0
    assert report.orphans == [], "worker processes running that the controller does not list"


def test_agent_cut_replacement_is_placed_on_another_agent_within_a_few_heartbeat_intervals(agent_cut_report) -> None:
    report = agent_cut_report
    assert report.detect_s is not None
    assert report.replace_planned_s is not None, "no replacement was placed while the agent was cut"
    assert report.replace_planned_s - report.detect_s <= 4 * HEARTBEAT_S + 1.0, report.rows()


def test_agent_cut_healed_agent_is_back_within_a_few_heartbeat_intervals(agent_cut_report) -> None:
    report = agent_cut_report
    assert report.resume_s is not None
    assert report.resume_s <= 4 * HEARTBEAT_S + 1.0, report.rows()


# --- (d) a fourth agent joins -------------------------------------------------------------


async def test_fourth_agent_joins_while_the_mesh_serves(mesh, controller_cut_report, capsys) -> None:
    await settle(mesh, timeout_s=60)
    load = OpenLoopLoad(mesh.http_url + "/v2/models/identity/infer", RATE_RPS, prefix="join-")
    load.start()
    try:
        await asyncio.sleep(1.0)
        mesh.lab.add_host("a4")
        mesh.start_agent("a4")

        def joined():
            mesh.check_running()
            status = mesh.status(timeout_s=1.0)
            return status if status is not None and "a4" in alive_agents(status) else None

        status = await asyncio.to_thread(wait_for, joined, 60, 0.25, "the fourth agent registered and alive")
        await settle(mesh, timeout_s=60)
    finally:
        outcomes = await load.stop()
    counts = tally(outcomes)
    with capsys.disabled():
        print(f"\nfourth agent joined: {counts.line()}")
    assert [d.cores for a in status.agents if a.agent_id == "a4" for d in a.devices] == [1]
    assert alive_agents(status) >= {*AGENTS, "a4"}
    assert counts.unanswered == 0 and counts.crossed == 0
    assert counts.ok == counts.sent, f"requests failed while an agent joined: {counts.line()}"
    assert await wait_orphans_gone(mesh, timeout_s=15) == []


# --- (e) a host without an authorised key ------------------------------------------------


def test_a_host_without_an_authorised_key_is_not_let_in_and_the_mesh_keeps_serving(mesh, tmp_path) -> None:
    mesh.lab.add_host("rogue")
    rogue = NetMesh(mesh.lab, mesh.repository, tmp_path / "rogue", controller_host=mesh.controller_host,
                    gateway_host=mesh.gateway_host, env=mesh.env, keys=False)  # plaintext, as any host could try
    proc = rogue.start_agent("rogue")
    try:
        until = time.monotonic() + 15  # long enough to dial, register and retry several times
        while time.monotonic() < until and proc.poll() is None:
            status = mesh.status(timeout_s=2.0)
            assert status is None or "rogue" not in {a.agent_id for a in status.agents}, "a host with no key joined"
            time.sleep(0.5)
    finally:
        mesh.lab.stop(proc)
    with pytest.raises(StatusUnavailable):  # no operator key: the controller does not answer
        fetch_status(mesh.controller_address, timeout_s=2.0, keys_dir=None)
    assert serving_workers(mesh.status(timeout_s=5.0), "identity")


# --- (c) the controller cut -----------------------------------------------------------------


@pytest.fixture(scope="module")
def controller_cut_report(mesh, agent_cut_report) -> FaultReport:
    return asyncio.run(controller_cut(mesh, cut_s=CONTROLLER_CUT_S, rate_rps=RATE_RPS))


def test_controller_cut_gateway_keeps_serving_every_request_while_the_controller_is_away(
        controller_cut_report, capsys) -> None:
    report = controller_cut_report
    emit(capsys, report)
    total = report.total
    assert report.during.sent > 0
    assert total.unanswered == 0, total.line()
    assert total.crossed == 0
    assert report.during.ok == report.during.sent, f"the gateway failed requests without its controller: " \
                                                   f"{report.during.line()}"


def test_controller_cut_its_return_after_the_heal_fails_no_request(controller_cut_report) -> None:
    after = controller_cut_report.after
    assert after.ok == after.sent, after.line()


def test_controller_cut_mesh_resumes_after_the_heal_with_no_orphan(controller_cut_report) -> None:
    report = controller_cut_report
    assert report.resume_s is not None, "; ".join(report.notes)
    assert report.orphans == []


def test_controller_cut_reregistration_after_the_heal_starts_no_worker(controller_cut_report) -> None:
    assert controller_cut_report.started_after_heal == []


# --- (f) a key revoked while its host serves (last: the revoked host stays out) -------------


async def test_a_revoked_agent_is_dropped_its_workers_stop_and_the_mesh_serves_on(mesh, controller_cut_report,
                                                                                  capsys) -> None:
    status = await settle(mesh, timeout_s=60)
    victim = serving_workers(status, "identity")[0][0]  # an agent whose worker serves the model
    load = OpenLoopLoad(mesh.http_url + "/v2/models/identity/infer", RATE_RPS, prefix="revoke-")
    load.start()
    try:
        await asyncio.sleep(1.0)
        t_revoke = time.monotonic()
        revoke_peer(mesh.keys_root, f"agent:{victim}")

        def dropped():
            s = mesh.status(timeout_s=1.0)
            if s is None or victim in alive_agents(s) or mesh.worker_processes(victim):
                return None
            return s if any(agent != victim for agent, _, _ in serving_workers(s, "identity")) else None

        await asyncio.to_thread(wait_for, dropped, 60, 0.25,
                                f"{victim} dropped, its workers stopped, the model served elsewhere")
        dropped_s = time.monotonic() - t_revoke
        deadline = time.monotonic() + 30
        while not serving_again(load, t_revoke) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)
    finally:
        outcomes = await load.stop()
    counts = tally(outcomes)
    with capsys.disabled():
        print(f"\nagent {victim} revoked: dropped with its workers stopped in {dropped_s:.1f} s; {counts.line()}")
    assert counts.unanswered == 0 and counts.crossed == 0, counts.line()
    assert set(counts.statuses) <= ANSWERS, counts.line()
    after = [o for o in outcomes if o.sent_at >= t_revoke]
    assert len(after) >= 10 and all(o.status == 200 for o in after[-10:]), "the mesh serves on without the revoked host"
