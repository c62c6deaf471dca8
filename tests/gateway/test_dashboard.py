"""The dashboard's data, built from a routing table, a controller status and a traffic window
shaped like ``Telemetry.recent()``; selection's per-context tally; the status feed's asking rule;
and the page itself (self-contained, served with its JSON by a real aiohttp server)."""

from __future__ import annotations

import json
import re
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.dashboard import BIN_S, build_view, page
from gateway.dispatcher import Dispatcher
from gateway.http_app import STATUS_FEED, make_app
from gateway.mesh_status import StatusFeed
from gateway.preference import PreferenceTally
from gateway.routing import RoutingView
from protocol.message import RoutingTable, StatusReply
from protocol.types import (
    AgentStatus,
    DeviceInfo,
    ModelInfo,
    Partition,
    ReplanRecord,
    TensorSpec,
    WorkerRoute,
    WorkerState,
    WorkerStatus,
)

SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
NOW = 1_800_000_000.0


def model(name: str, accuracy: float, family: str = "cls") -> ModelInfo:
    return ModelInfo(name=name, family=family, version="1", platform="pytorch_torchscript", accuracy=accuracy,
                     inputs=SPEC, outputs=SPEC, max_batch=4, default_slo_ms=100.0)


TABLE = RoutingTable(
    version=7,
    models=(model("cls-large", 0.95), model("cls-small", 0.80), model("echo", 0.5, family="echoes")),
    workers=(
        WorkerRoute(worker_id="w1", variants=("cls-large", "echo"), agent_id="edge"),
        WorkerRoute(worker_id="w2", variants=("cls-small",), agent_id="edge", weights={"cls-small": 0.25}),
        WorkerRoute(worker_id="w0", variants=("cls-small",), agent_id="edge", draining=True),
    ),
    family_fractions={"cls": {"cls-large": 0.6, "cls-small": 0.4}},
    shed={"cls": 0.1},
)


def worker(worker_id: str, cores: tuple[int, ...], variants: tuple[str, ...], state: WorkerState) -> WorkerStatus:
    return WorkerStatus(worker_id=worker_id, agent_id="edge", state=state, variants=variants,
                        partition=Partition(device_id="cpu0", kind="cpu", cores=cores))


STATUS = StatusReply(
    controller_epoch=3, routing_version=7, gateways=("tcp://g",),
    agents=(AgentStatus(agent_id="edge", hostname="board-1", alive=True, last_seen_s=0.2,
                        devices=(DeviceInfo(device_id="cpu0", kind="cpu", name="cortex", cores=8, memory_bytes=1 << 30),
                                 DeviceInfo(device_id="gpu0", kind="cuda", name="orin", cores=0, memory_bytes=1 << 30,
                                            mps=True))),),
    workers=(worker("w2", (4, 5), ("cls-small",), WorkerState.READY),
             worker("w1", (0, 1, 2, 3), ("cls-large", "echo"), WorkerState.READY),
             worker("w0", (6,), ("cls-small",), WorkerState.DRAINING),
             worker("old", (7,), ("cls-small",), WorkerState.CRASHED)),
    models=(),
    replans=(ReplanRecord(ago_s=4.0, reason="rise", policy="gpulet", kept=1, started=1, retired=1, scaled=True,
                          effective_accuracy=0.9, shed={"cls": 3.0}),
             ReplanRecord(ago_s=60.0, reason="initial", policy="gpulet", kept=0, started=2, retired=0, finished=True)),
)


def second(t: float, requests: int, ok: int, late: int = 0, accuracy: float = 0.9, **rest: int) -> dict:
    answered = ok + late
    return {"t": t, "requests": requests, "ok": ok, "late": late, "deadline_missed": rest.get("deadline_missed", 0),
            "shed": rest.get("shed", 0), "errors": rest.get("errors", 0), "invalid": rest.get("invalid", 0),
            "accuracy_sum": accuracy * answered,
            "accuracy_n": answered}


def recent(series: list[dict], families: dict | None = None) -> dict:
    return {"interval_s": 1, "series": series, "families": families or {}}


def view(*, status: StatusReply | None = STATUS, window: dict | None = None, reachable=("w1", "w2"),
         preferences: dict | None = None, age: float | None = 1.5) -> dict:
    return build_view(routing=RoutingView(TABLE), reachable=set(reachable), status=status,
                      status_age_s=age if status else None, recent=window, preferences=preferences or {},
                      policy_versions={"cls": 4}, now_s=NOW)


def test_each_device_is_split_into_its_gpu_lets_with_their_variants_and_state() -> None:
    v = view()
    json.dumps(v)  # what the page receives
    cpu, gpu = v["devices"]
    assert (cpu["agent"], cpu["device"], cpu["host"], cpu["capacity"], cpu["unit"]) == ("edge", "cpu0", "board-1", 8, "cores")
    assert [g["worker"] for g in cpu["gpulets"]] == ["w1", "w2", "w0"]  # in core order; the crashed one holds none
    w1, w2, w0 = cpu["gpulets"]
    assert (w1["size"], w1["detail"], w1["state"]) == (4, "cores 0,1,2,3", "ready")
    assert [x["name"] for x in w1["variants"]] == ["cls-large", "echo"]
    assert w2["variants"][0]["weight"] == 0.25 and w2["variants"][0]["accuracy"] == 0.80
    assert w0["state"] == "draining" and not w0["routed"] and not w0["reachable"]
    assert w1["routed"] and w1["reachable"]
    assert cpu["used"] == 7  # one core free
    assert (gpu["capacity"], gpu["unit"], gpu["gpulets"]) == (100, "%", [])
    assert [g["worker"] for g in v["other_workers"]] == ["old"]


def test_before_the_controller_answers_the_routed_workers_are_still_shown() -> None:
    v = view(status=None)
    assert v["devices"] == [] and v["status_age_s"] is None and v["replans"] == []
    assert [g["worker"] for g in v["other_workers"]] == ["w0", "w1", "w2"]
    assert {g["state"] for g in v["other_workers"]} == {"routed"}


def test_traffic_is_binned_into_rate_slo_attainment_and_effective_accuracy() -> None:
    start = NOW - 29  # 30 seconds of window, the first 10 busy, then a quiet spell
    series = [second(start + i, requests=10, ok=8, late=1, deadline_missed=1, accuracy=0.9) for i in range(10)]
    series += [second(start + 10 + i, requests=0, ok=0) for i in range(5)]  # recorded, but empty
    v = view(window=recent(series))
    t = v["traffic"]
    assert t["bin_s"] == BIN_S
    points = t["points"]
    assert points[0]["t"] <= start < points[0]["t"] + BIN_S
    assert points[-1]["t"] <= NOW < points[-1]["t"] + BIN_S  # bins reach now, quiet seconds or not
    busy = [p for p in points if p["requests"]]
    assert sum(p["requests"] for p in busy) == 100
    full = [p for p in busy if p["requests"] == 10 * BIN_S]
    assert full and all(p["rate"] == 10.0 for p in full)
    assert all(p["slo"] == 0.8 and p["accuracy"] == pytest.approx(0.9) for p in busy)
    quiet = points[-2]  # the last whole bin: a quiet one (the newest holds only the second in progress)
    assert quiet["rate"] == 0 and quiet["slo"] is None and quiet["accuracy"] is None
    assert points[-1]["rate"] is None and points[-1]["requests"] == 0
    assert t["totals"]["requests"] == 100 and t["totals"]["slo"] == 0.8 and t["totals"]["deadline_missed"] == 10


def test_a_steady_rate_reads_the_same_in_every_bin_however_much_of_it_the_window_covers() -> None:
    """10 req/s from mid-bin to a tenth of a second into the current one: the oldest bin covers part
    of its seconds, and the second in progress has only its first request."""
    start = NOW - 23  # 2 s into a bin (NOW is a bin boundary)
    series = [second(start + i, requests=10, ok=10) for i in range(23)] + [second(NOW, requests=1, ok=1)]
    v = build_view(routing=RoutingView(TABLE), reachable=set(), status=STATUS, status_age_s=1.5,
                   recent=recent(series), preferences={}, policy_versions={"cls": 4}, now_s=NOW + 0.1)
    points = v["traffic"]["points"]
    assert len(points) == 6 and points[-1]["t"] == NOW
    assert [p["rate"] for p in points[:-1]] == [10.0] * 5
    assert points[-1]["rate"] is None, "a bin of the second in progress alone has no rate yet"
    assert points[-1]["requests"] == 1 and v["traffic"]["totals"]["requests"] == 231  # but its requests count


def test_no_traffic_window_draws_nothing_rather_than_zeros() -> None:
    assert view(window=None)["traffic"] is None
    assert view(window=recent([]))["traffic"] is None


def test_variant_shares_per_family_come_from_traffic_beside_the_plans_caps() -> None:
    families = {"cls": {"requests": 40, "slo_met": 30, "variants": {"cls-large": 30, "cls-small": 10}}}
    v = view(window=recent([second(NOW, 40, 30)], families))
    cls, echoes = v["families"]
    assert (cls["family"], cls["requests"], cls["slo"], cls["shed"]) == ("cls", 40, 0.75, 0.1)
    large, small = cls["variants"]  # most accurate first
    assert (large["name"], large["share"], large["cap"]) == ("cls-large", 0.75, 0.6)
    assert (small["name"], small["share"], small["cap"]) == ("cls-small", 0.25, 0.4)
    assert echoes["requests"] == 0 and echoes["variants"][0]["share"] is None


def test_replans_are_listed_newest_first_aged_by_the_status_age() -> None:
    rise, initial = view(age=1.5)["replans"]
    assert (rise["reason"], rise["ago_s"], rise["effective_accuracy"], rise["finished"]) == ("rise", 5.5, 0.9, False)
    assert (initial["reason"], initial["effective_accuracy"], initial["finished"]) == ("initial", None, True)


def test_selection_preference_per_context_follows_the_decisions_made() -> None:
    tally = PreferenceTally(max_contexts=2, horizon=4)
    for _ in range(3):
        tally.record("cls", {"device": "phone"}, ["cls-large", "cls-small"], [0.2, 0.8])
        tally.record("cls", {}, ["cls-large", "cls-small"], [0.9, 0.1])
    rows = tally.view()["cls"]
    assert {(tuple(r["context"].items()), r["preferred"]) for r in rows} == {
        ((("device", "phone"),), "cls-small"), ((), "cls-large")}
    phone = next(r for r in rows if r["context"])
    assert phone["probability"] == pytest.approx(0.8) and phone["decisions"] == 3
    for _ in range(8):  # the policy changed its mind: the average follows within a few decisions
        tally.record("cls", {"device": "phone"}, ["cls-large", "cls-small"], [0.95, 0.05])
    phone = next(r for r in tally.view()["cls"] if r["context"])
    assert phone["preferred"] == "cls-large" and phone["pmf"]["cls-large"] > 0.85
    tally.record("cls", {"device": "tv"}, ["cls-large"], [1.0])  # a third context: the stalest goes
    assert {json.dumps(r["context"]) for r in tally.view()["cls"]} == {'{"device": "phone"}', '{"device": "tv"}'}
    rows = view(preferences=tally.view())["bandit"]
    assert [(b["family"], b["policy_version"], len(b["contexts"])) for b in rows] == [("cls", 4, 2), ("echoes", 0, 0)]


def test_the_controller_is_asked_only_while_the_dashboard_is_watched_and_at_most_every_interval() -> None:
    feed = StatusFeed(interval_s=2.0, watch_s=30.0)
    assert not feed.due(100.0)  # nobody watching
    feed.watched(100.0)
    assert feed.due(100.5)
    assert not feed.due(101.0)
    assert feed.due(102.5)
    assert not feed.due(140.0)  # watched last 40 s ago
    assert feed.age_s(140.0) is None
    feed.received(STATUS, 139.0)
    assert feed.age_s(140.0) == 1.0 and feed.latest is STATUS


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = page().decode()
    assert "<script>" in html and "/data" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert not re.search(r"""(import|fetch)\s*\(\s*["'](https?:)?//""", html)
    assert "@import" not in html


async def test_the_gateway_serves_the_page_and_its_data(ctx) -> None:
    dispatcher = Dispatcher(ctx, "tcp://127.0.0.1:*", gateway_id="test")
    await dispatcher.start()
    app = make_app(dispatcher, max_body_bytes=1024)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        dispatcher.apply_routing(TABLE)
        resp = await client.get("/dashboard")
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "letmesh" in await resp.text()
        resp = await client.get("/dashboard/data")
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        data = await resp.json()
        assert data["routing_version"] == 7 and data["devices"] == []
        assert {g["worker"] for g in data["other_workers"]} == {"w0", "w1", "w2"}
        assert not any(g["reachable"] for g in data["other_workers"])  # no worker has said hello
        assert app[STATUS_FEED].due(time.monotonic())  # read just now: the controller link will ask
        app[STATUS_FEED].received(STATUS, 0.0)
        data = await (await client.get("/dashboard/data")).json()
        assert [d["device"] for d in data["devices"]] == ["cpu0", "gpu0"]
        assert data["controller_epoch"] == 3 and data["status_age_s"] > 0
    finally:
        await client.close()
        await dispatcher.stop()


def test_the_clients_invalid_requests_do_not_count_against_slo_attainment() -> None:
    series = [second(NOW - 1, requests=10, ok=4, invalid=5, deadline_missed=1, accuracy=0.9)]
    t = view(window=recent(series))["traffic"]
    assert t["totals"]["requests"] == 10 and t["totals"]["invalid"] == 5
    assert t["totals"]["slo"] == 0.8  # 4 of the 5 requests accepted met their deadline


def test_a_set_aside_variant_is_shown_without_the_controllers_paths() -> None:
    import dataclasses

    status = dataclasses.replace(STATUS, unavailable={"broken": "/srv/repo/broken/manifest.json: bad sha256"})
    assert view(status=status)["unavailable"] == {"broken": "broken/manifest.json: bad sha256"}
