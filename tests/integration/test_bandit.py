"""A real mesh learns, from applications' feedback, which digits variant each application prefers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter

import aiohttp
import numpy as np
import pytest

from controller.store import StateStore
from letmesh.bandit_report import report
from letmesh.launcher import LocalMesh
from letmesh.profiles import wait_for_profiles
from tests.integration.conftest import _stop_and_check

FAST, ACCURATE = "digits-linear", "digits-cnn"
APPS = {"reader-fast": FAST, "reader-accurate": ACCURATE}


@pytest.fixture(scope="module")
def digits_mesh(tmp_path_factory, digits_repo):
    mesh = LocalMesh(repository=digits_repo, state_dir=tmp_path_factory.mktemp("bandit-state"))
    try:
        mesh.start(timeout_s=120)
        # The traffic below is about what the bandit learns: it starts once the start-up
        # profiling, which shares the cores with the serving workers, is over.
        wait_for_profiles(mesh.controller_address, timeout_s=120, say=lambda line: None)
        yield mesh
    finally:
        _stop_and_check([mesh])


def logged_choices(state_dir, app: str, preferred: str, last: int = 300) -> str:
    """What the decision log says of ``app``'s last decisions: why a failure happened, not a check."""
    try:
        store = StateStore(state_dir / "controller.sqlite3")
        try:
            records = [r for r in store.decisions("digits") if r.context.get("app") == app][-last:]
        finally:
            store.close()
    except Exception as exc:  # the assertion's message must not hide the assertion
        return f"decision log unreadable: {exc!r}"
    offered = [r for r in records if preferred in [c.variant for c in r.candidates]]
    chosen = Counter(r.candidates[r.chosen].variant for r in records)
    p_deadline = [c.p_deadline for r in offered for c in r.candidates if c.variant == preferred]
    probability = [r.probability for r in records if r.candidates[r.chosen].variant == preferred]
    return (f"logged: {len(records)} decisions, {preferred} offered in {len(offered)} "
            f"(P(deadline) min {min(p_deadline, default=float('nan')):.2f}), chosen {dict(chosen)}, "
            f"its probability when chosen mean {np.mean(probability) if probability else float('nan'):.2f}")


def image_body(image: np.ndarray, **parameters) -> dict:
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64], "data": image.tolist()}],
            "parameters": {"letmesh_slo_ms": 500, **parameters}}


async def one(session, url, body) -> tuple[int, dict]:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_each_application_comes_to_get_its_preferred_variant_within_bounds(digits_mesh, digits_repo) -> None:
    images = np.load(digits_repo / "digits-heldout.npz")["images"]
    infer = f"{digits_mesh.http_url}/v2/models/digits/infer"
    feedback = f"{digits_mesh.http_url}/v1/feedback"
    served: dict[str, list[str]] = {app: [] for app in APPS}
    bounded: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def app_round(app: str, n: int, offset: int) -> None:
            bodies = [image_body(images[(offset + i) % len(images)], letmesh_context={"app": app}) for i in range(n)]
            answers = await asyncio.gather(*(one(session, infer, b) for b in bodies))
            posts = []
            for status, body in answers:
                assert status == 200, body
                params = body["parameters"]
                served[app].append(params["letmesh_variant"])
                reward = 1.0 if params["letmesh_variant"] == APPS[app] else 0.1
                posts.append(one(session, feedback, {"event_id": params["letmesh_event_id"], "reward": reward}))
            for status, body in await asyncio.gather(*posts):
                assert status == 202, body

        for rnd in range(60):
            await asyncio.gather(*(app_round(app, 25, rnd * 25) for app in APPS))
            # Requests with an accuracy floor only the three larger variants meet.
            answers = await asyncio.gather(*(
                one(session, infer, image_body(images[i], letmesh_min_accuracy=0.975, letmesh_context={"app": "reader-fast"}))
                for i in range(5)
            ))
            for status, body in answers:
                assert status == 200, body
                bounded.append(body["parameters"]["letmesh_variant"])

        # Feedback is idempotent per event; unknown events are 404; malformed bodies 400.
        status, body = await one(session, infer, image_body(images[0], letmesh_context={"app": "reader-fast"}))
        event_id = body["parameters"]["letmesh_event_id"]
        assert (await one(session, feedback, {"event_id": event_id, "reward": 1.0}))[0] == 202
        again = await one(session, feedback, {"event_id": event_id, "reward": 0.0})
        assert again[0] == 202 and "duplicate" in again[1]["status"]
        assert (await one(session, feedback, {"event_id": "f" * 32, "reward": 1.0}))[0] == 404
        assert (await one(session, feedback, {"event_id": event_id, "reward": 3}))[0] == 400
        assert (await one(session, feedback, {"reward": 1}))[0] == 400

        # A floor nothing deployed meets is a clear error, not a silent downgrade.
        status, body = await one(session, infer, image_body(images[0], letmesh_min_accuracy=0.9999))
        assert status == 400 and "accuracy" in body["error"]

    for app, preferred in APPS.items():
        late = served[app][-300:]
        share = late.count(preferred) / len(late)
        assert share >= 0.7, (f"{app}: preferred {preferred} in {share:.0%} of its last {len(late)} requests; "
                              f"{logged_choices(digits_mesh.state_dir, app, preferred)}")
    lowest = json.loads((digits_repo / "digits-linear" / "manifest.json").read_text())["accuracy"]
    assert lowest < 0.975, "the bound must exclude a variant for this check to mean anything"
    assert FAST not in bounded, "no request was routed to a variant outside its accuracy bound"

    # The operator's view: learned preferences per context from the decision log and saved model.
    text = await asyncio.to_thread(report, digits_mesh.state_dir, family="digits")
    rows = {line.split("->")[0].strip(): line.split("->")[1].split()[0] for line in text.splitlines() if "->" in line}
    assert rows.get("app=reader-fast") == FAST and rows.get("app=reader-accurate") == ACCURATE, text
    assert "DR" in text and "IPS" in text

    # The same report as JSON, for scripts: the same preferences, estimates as numbers.
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "letmesh", "bandit", "report", "--state-dir",
                                                    str(digits_mesh.state_dir), "--family", "digits", "--json"],
                                   capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (family,) = json.loads(proc.stdout)["families"]
    prefs = {tuple(sorted(p["context"].items())): p["variant"] for p in family["preferences"]}
    assert prefs[(("app", "reader-fast"),)] == FAST and prefs[(("app", "reader-accurate"),)] == ACCURATE, family
    assert family["decisions"] > 0 and 0.0 <= family["estimates"]["logged"] <= 1.0
