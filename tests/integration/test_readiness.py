"""Readiness on a real mesh: 503 before the controller is there, then 200 through a re-plan that
leaves variants without a worker while their family is served."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from letmesh.launcher import LocalMesh, http_status
from letmesh.profiles import wait_for_profiles
from letmesh.status import ask_controller, fetch_status
from protocol.message import Replan, ReplanReply
from tests.integration.conftest import _stop_and_check, wait_until

SETTINGS = {
    "LETMESH_CONTROLLER_PROFILE_REPEATS": "5",
    "LETMESH_CONTROLLER_PROFILE_COLOCATION": "0",
    "LETMESH_CONTROLLER_STOP_DRAIN_S": "1",
    "LETMESH_GATEWAY_SELECTION": "accurate",
}
LEAVING = ("draining", "stopping", "starting")


def post(url: str, body: bytes) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


class Prober(threading.Thread):
    """Polls readiness and sends a family request, turn about, until stopped; records the statuses."""

    def __init__(self, base: str, body: bytes) -> None:
        super().__init__(daemon=True)
        self.base, self.body = base, body
        self.ready: list[int] = []
        self.served: list[tuple[int, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.ready.append(http_status(self.base + "/v2/health/ready", timeout_s=5))
            status, _, payload = post(self.base + "/v2/models/digits/infer", self.body)
            self.served.append((status, payload.get("parameters", {}).get("letmesh_variant", "")))
            self.halt.wait(0.05)


@pytest.mark.timeout(300)
def test_ready_is_503_before_the_first_table_and_stays_200_through_a_replan_while_the_family_is_served(
        tmp_path, digits_repo):
    mesh = LocalMesh(repository=digits_repo, state_dir=tmp_path / "state", extra_env=SETTINGS, max_cores=2)
    image = np.load(digits_repo / "digits-heldout.npz")["images"][0]
    body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64], "data": image.tolist()}],
                       "parameters": {"letmesh_slo_ms": 2000}}).encode()
    try:
        # A gateway started before its controller: it cannot know the models yet, so it says "later".
        mesh.state_dir.mkdir(parents=True)
        mesh.ensure_keys()
        mesh.start_role("gateway")
        wait_until(lambda: http_status(mesh.http_url + "/v2/health/live") == 200, 60, 0.1)
        assert http_status(mesh.http_url + "/v2/health/ready") == 503
        for path in ("/v2/models/digits", "/v2/models/digits/ready", "/v2/models/digits/config"):
            assert http_status(mesh.http_url + path) == 503, path
        status, headers, payload = post(mesh.http_url + "/v2/models/digits/infer", body)
        assert status == 503 and int(headers["Retry-After"]) >= 1 and "routing table" in payload["error"]

        mesh.start_role("controller")
        mesh.start_role("agent")
        mesh.wait_ready(180)
        wait_for_profiles(mesh.controller_address, timeout_s=180, say=lambda line: None)
        # The first plan replaces the initial placement once profiles are in.
        wait_until(lambda: any(".g" in w.worker_id and w.state == "ready"
                               for w in fetch_status(mesh.controller_address).workers), 90, 0.2)

        def settled() -> frozenset | None:
            # Not while a move is under way: its new workers can all be ready before its old ones
            # start draining, and that union is no layout.
            status = fetch_status(mesh.controller_address)
            if any(w.state in LEAVING for w in status.workers) or (status.replans and not status.replans[0].finished):
                return None
            return frozenset(w.variants for w in status.workers if w.state == "ready")

        before = wait_until(settled, 60, 0.2)
        prober = Prober(mesh.http_url, body)
        prober.start()
        try:
            reply = ask_controller(mesh.controller_address, Replan(policy="whole"), ReplanReply)
            assert reply.accepted
            # One model per whole device: the layout changes and some variants lose every worker.
            wait_until(lambda: (after := settled()) is not None and after != before, 90, 0.2)
            seen = len(prober.ready)
            wait_until(lambda: len(prober.ready) >= seen + 10, 60)  # and probe the settled layout a while
        finally:
            prober.halt.set()
            prober.join(30)
        unplaced = {m.name for m in fetch_status(mesh.controller_address).models if m.state != "READY"}
        assert unplaced & {"digits-cnn", "digits-wide", "digits-mlp", "digits-linear"}, "the re-plan placed every variant"
        assert len(prober.ready) >= 10
        assert set(prober.ready) == {200}, f"readiness answered {sorted(set(prober.ready))} during the re-plan"
        assert {s for s, _ in prober.served} == {200}, prober.served
    finally:
        _stop_and_check([mesh])
