"""A real mesh's logs: every role's lines carry their fields (text or JSON), and a clean stop warns of nothing."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

ROLES = ("gateway", "agent", "controller")
STARVED = re.compile(r"^heartbeat [\d.]+ s late")
BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}).encode()


def records(path: Path, fmt: str) -> list[dict]:
    """Each log record of a role's stderr as {level, message, fields...}; a traceback line belongs
    to the record before it (text), JSON lines are parsed whole (a line that is not JSON fails)."""
    found: list[dict] = []
    for line in path.read_text().splitlines():
        if fmt == "json":
            found.append(json.loads(line))
            continue
        head = re.match(r"\S+ \S+ (?:worker )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)", line)
        if head is None:
            found[-1].setdefault("continued", []).append(line)  # a traceback under its record
            continue
        level, logger, rest = head.groups()
        fields = dict(re.findall(r' (\w+)=("(?:[^"\\]|\\.)*"|\S+)', rest))
        found.append({"level": level, "logger": logger, "line": rest, **fields})
    return found


def first(found: list[dict], message: str) -> dict:
    matches = [r for r in found if r.get("message", r.get("line", "")).startswith(message)]
    assert matches, f"no {message!r} record in {found}"
    return matches[0]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_role_logs_show_their_fields_and_a_clean_stop_logs_no_warning(mesh_factory, tmp_path, fmt):
    logs = tmp_path / "logs"
    mesh = mesh_factory(log_level="INFO", log_dir=logs, extra_env={"LETMESH_LOG_FORMAT": fmt})
    for _ in range(5):
        request = urllib.request.Request(f"{mesh.http_url}/v2/models/identity/infer", data=BODY,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
    codes = {role: mesh.stop_role(role) for role in ROLES}  # SIGTERM, in the launcher's order
    assert codes == dict.fromkeys(ROLES, 0)

    found = {role: records(logs / f"{role}.log", fmt) for role in ROLES}
    listening = first(found["controller"], "controller listening")
    assert listening["address"] == mesh.controller_address and str(listening["epoch"]) == "1"
    started = first(found["agent"], "worker started")
    assert started["worker"].startswith("local.") and int(started["pid"]) > 0
    assert first(found["gateway"], "gateway serving")["http"] == mesh.http_url
    for role in ROLES:  # each says it was asked to stop, and that it stopped cleanly
        assert first(found[role], "stopping on SIGTERM") and first(found[role], "stopped cleanly")
    # The gateway said goodbye: the controller forgot it at once instead of declaring it lost.
    assert first(found["controller"], "gateway left")["gateway"] == "local"
    # Nothing to warn of; a worker whose host was too busy to run it on time says so, and that is
    # about the machine the test shares, not about the stop.
    loud = [(role, r) for role, rs in found.items() for r in rs if r["level"] in ("WARNING", "ERROR", "CRITICAL")
            and not STARVED.search(r.get("message", r.get("line", "")))]
    assert not loud, loud
