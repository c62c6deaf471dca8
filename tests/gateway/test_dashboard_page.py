"""The dashboard page's scripts, in a real headless Chromium, draw a hand-made view: gpu-lets on
a CPU board and an MPS-split GPU, the three traffic charts from a window shaped like
``Telemetry.recent()``, family shares, preferences and re-plans; a token in the page's URL fragment goes with its data requests.

The screenshot goes to ``$LETMESH_ARTIFACTS`` when set (else the test's tmp dir); its path is
printed. Skipped, saying why, without Chromium (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.dashboard import build_view, page
from gateway.preference import PreferenceTally
from gateway.routing import RoutingView
from protocol.message import RoutingTable, StatusReply
from protocol.types import AgentStatus, DeviceInfo, Partition, ReplanRecord, WorkerRoute, WorkerState, WorkerStatus
from tests.gateway.test_dashboard import model
from tests.chromium import Chromium, find_chromium

pytestmark = pytest.mark.timeout(180)

NOW = 1_800_000_000.0
TABLE = RoutingTable(
    version=12,
    models=(model("resnet-152", 0.78, "resnet"), model("resnet-50", 0.76, "resnet"), model("resnet-18", 0.70, "resnet"),
            model("digits-cnn", 0.96, "digits"), model("digits-linear", 0.93, "digits")),
    workers=(WorkerRoute(worker_id="gpu.w0", variants=("resnet-152",), agent_id="server"),
             WorkerRoute(worker_id="gpu.w1", variants=("resnet-50", "resnet-18"), agent_id="server"),
             WorkerRoute(worker_id="edge.w0", variants=("digits-cnn",), agent_id="edge"),
             WorkerRoute(worker_id="edge.w1", variants=("digits-linear",), agent_id="edge")),
    family_fractions={"resnet": {"resnet-152": 0.5, "resnet-50": 0.3, "resnet-18": 0.2}},
    shed={"resnet": 0.05},
)


def worker(worker_id: str, agent: str, partition: Partition, variants: tuple[str, ...],
           state: WorkerState = WorkerState.READY) -> WorkerStatus:
    return WorkerStatus(worker_id=worker_id, agent_id=agent, state=state, variants=variants, partition=partition)


STATUS = StatusReply(
    controller_epoch=2, routing_version=12, gateways=("tcp://g",), models=(),
    agents=(AgentStatus(agent_id="server", hostname="gpu-host", alive=True, last_seen_s=0.1, devices=(
                DeviceInfo(device_id="gpu0", kind="cuda", name="H100", cores=0, memory_bytes=80 << 30, mps=True),)),
            AgentStatus(agent_id="edge", hostname="board-7", alive=True, last_seen_s=0.3, devices=(
                DeviceInfo(device_id="cpu0", kind="cpu", name="Cortex-A78", cores=6, memory_bytes=8 << 30),))),
    workers=(worker("gpu.w0", "server", Partition(device_id="gpu0", kind="cuda", mps_percent=60), ("resnet-152",)),
             worker("gpu.w1", "server", Partition(device_id="gpu0", kind="cuda", mps_percent=30), ("resnet-50", "resnet-18")),
             worker("edge.w0", "edge", Partition(device_id="cpu0", kind="cpu", cores=(0, 1, 2)), ("digits-cnn",)),
             worker("edge.w1", "edge", Partition(device_id="cpu0", kind="cpu", cores=(3,)), ("digits-linear",)),
             worker("edge.w2", "edge", Partition(device_id="cpu0", kind="cpu", cores=(4, 5)), ("digits-cnn",),
                    WorkerState.STARTING)),
    replans=(ReplanRecord(ago_s=20, reason="rise", policy="gpulet", kept=3, started=1, retired=0, scaled=True,
                          effective_accuracy=0.752, shed={"resnet": 4.0}),
             ReplanRecord(ago_s=250, reason="initial", policy="gpulet", kept=0, started=4, retired=0, finished=True)),
)


def traffic() -> dict:
    """Five minutes: load ramps up; at the peak, accuracy scaling trades accuracy for deadlines met."""
    series = []
    for i in range(300):
        rate = 40 + 160 * max(0.0, math.sin(math.pi * i / 300))
        requests = round(rate)
        late = round(requests * (0.12 if 120 < i < 160 else 0.01))
        accuracy = 0.78 - (0.03 if i > 150 else 0.0)
        ok = requests - late
        series.append({"t": NOW - 299 + i, "requests": requests, "ok": ok, "late": late, "deadline_missed": 0,
                       "shed": 0, "errors": 0, "accuracy_sum": accuracy * requests, "accuracy_n": requests})
    families = {"resnet": {"requests": 30000, "slo_met": 29000,
                           "variants": {"resnet-152": 15000, "resnet-50": 9000, "resnet-18": 6000}},
                "digits": {"requests": 4000, "slo_met": 3990, "variants": {"digits-cnn": 3000, "digits-linear": 1000}}}
    return {"interval_s": 1, "series": series, "families": families}


def preferences() -> dict:
    tally = PreferenceTally()
    for _ in range(30):
        tally.record("digits", {"app": "reader-fast"}, ["digits-cnn", "digits-linear"], [0.1, 0.9])
        tally.record("digits", {"app": "reader-accurate"}, ["digits-cnn", "digits-linear"], [0.85, 0.15])
        tally.record("resnet", {}, ["resnet-152", "resnet-50", "resnet-18"], [0.6, 0.3, 0.1])
    return tally.view()


DRAWN = """JSON.stringify({
  gpulets: [...document.querySelectorAll('.gpulet')].map((g) => g.dataset.worker + ':' + g.dataset.state),
  charts: [...document.querySelectorAll('[data-chart]')].map((c) => [c.dataset.chart, !!c.querySelector('path'),
                                                                     c.querySelector('.value').textContent]),
  shares: document.querySelectorAll('#families .share div').length,
  contexts: document.querySelectorAll('#bandit tr[data-family]').length,
  replans: document.querySelectorAll('#replans tr[data-replan]').length,
})"""


async def test_the_page_draws_devices_traffic_shares_preferences_and_replans(tmp_path, capsys) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium on this machine: install Debian's chromium package (.ci/run does) to run this test")
    view = build_view(routing=RoutingView(TABLE), reachable={"gpu.w0", "gpu.w1", "edge.w0", "edge.w1"},
                      status=STATUS, status_age_s=0.8, recent=traffic(), preferences=preferences(),
                      policy_versions={"digits": 9, "resnet": 3}, now_s=NOW)

    async def serve_page(request: web.Request) -> web.Response:
        return web.Response(body=page(), content_type="text/html", charset="utf-8")

    async def serve_data(request: web.Request) -> web.Response:  # as a gateway with tokens would
        if request.headers.get("Authorization") != "Bearer t0ken":
            return web.json_response({"error": "a valid bearer token is required"}, status=401)
        return web.json_response(view)

    app = web.Application()
    app.router.add_get("/dashboard", serve_page)
    app.router.add_get("/dashboard/data", serve_data)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    artifacts = Path(os.environ.get("LETMESH_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "dashboard-example.png"
    try:
        async with Chromium(binary) as browser:
            await browser.goto(str(server.make_url("/dashboard")) + "#token=t0ken")
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                drawn = json.loads(await browser.evaluate(DRAWN) or "{}")
                if drawn.get("replans"):
                    break
                assert asyncio.get_running_loop().time() < deadline, f"the page drew nothing: {drawn}"
                await asyncio.sleep(0.2)
            await browser.screenshot(shot)
    finally:
        await server.close()
    with capsys.disabled():
        print(f"\ndashboard example screenshot: {shot}")
    assert drawn["gpulets"] == ["gpu.w0:ready", "gpu.w1:ready", "edge.w0:ready", "edge.w1:ready", "edge.w2:starting"]
    rate, slo, accuracy = drawn["charts"]
    assert [c[0] for c in drawn["charts"]] == ["rate", "slo", "accuracy"] and all(c[1] for c in drawn["charts"])
    assert slo[2] == "100%" and accuracy[2] == "0.750"  # the newest bin's figures, as the page prints them
    assert drawn["shares"] == 5 and drawn["contexts"] == 3 and drawn["replans"] == 2
