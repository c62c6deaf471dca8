"""Prometheus scrapes of a live mesh: the expected names are there and move with traffic."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.http as triton
import zmq.auth
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.support.chaos_inputs import ControlPeer
from letmesh.launcher import LocalMesh, free_port
from letmesh.status import fetch_status
from mesh.keys import own_secret_file
from protocol.codec import encode
from protocol.message import Heartbeat
from tests.integration.conftest import _stop_and_check, processes_mentioning, wait_until
from tests.integration.test_serving import identity_body, post

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "letmesh.json"


class Scrape:
    def __init__(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            text = resp.read().decode()
        self.families: set[str] = set()
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in text_string_to_metric_families(text):
            # A family with no series yet still declares itself, under the names its samples will take.
            self.families.add(family.name)
            self.families.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def names(self) -> set[str]:
        return self.families | {name for name, _ in self.samples}


@pytest.fixture(scope="module")
def metered(tmp_path_factory, trivial_repo: Path) -> Iterator[LocalMesh]:
    """One mesh with the controller's and agent's metrics ports on, shared by this module's tests."""
    m = LocalMesh(repository=trivial_repo, state_dir=tmp_path_factory.mktemp("state"), metrics=True)
    try:
        m.start(timeout_s=120)
        yield m
    finally:
        _stop_and_check([m])


def test_a_live_mesh_exports_triton_names_that_move_by_the_requests_sent(metered) -> None:
    url = metered.http_url
    before = Scrape(metered.metrics_url("gateway"))
    for _ in range(5):
        status, _, raw = post(f"{url}/v2/models/identity/infer", identity_body([1.0] * 16))
        assert status == 200, raw
    for _ in range(3):
        status, _, raw = post(f"{url}/v2/models/trivial/infer", identity_body([1.0] * 16))
        assert status == 200, raw
    status, _, _ = post(f"{url}/v2/models/identity/infer", identity_body([0.0] * 16, timeout=1))
    assert status == 504
    after = Scrape(metered.metrics_url("gateway"))

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    direct = {"model": "identity", "variant": "identity"}
    family = {"model": "trivial", "variant": "identity"}
    assert moved("letmesh_inference_request_success_total", **direct) == 5
    assert moved("letmesh_inference_request_success_total", **family) == 3
    assert moved("letmesh_inference_count_total", **direct) == 5
    assert moved("letmesh_inference_request_latency_seconds_count", **direct) == 5
    assert moved("letmesh_inference_batch_size_count", **family) == 3
    assert moved("letmesh_inference_request_failure_total", reason="deadline", **direct) == 1
    assert moved("letmesh_slo_requests_total", family="trivial", outcome="deadline_missed") == 1
    assert moved("letmesh_slo_requests_total", family="trivial", outcome="met") \
        + moved("letmesh_slo_requests_total", family="trivial", outcome="late") == 8
    assert moved("letmesh_variant_chosen_total", family="trivial", variant="identity") == 3
    assert moved("letmesh_bandit_decisions_total", family="trivial") == 3
    assert moved("letmesh_inference_exec_count_total", **direct) > 0
    assert after.value("letmesh_inference_compute_infer_duration_us_total", **direct) > 0
    assert after.value("letmesh_effective_accuracy", family="trivial") == 1.0
    assert ("letmesh_goodput_rps", frozenset({("family", "trivial")})) in after.samples

    # Triton's statistics extension reads the same counters.
    with urllib.request.urlopen(f"{url}/v2/models/identity/stats", timeout=10) as resp:
        (entry,) = json.load(resp)["model_stats"]
    assert entry["name"] == "identity"
    assert entry["inference_count"] == after.value("letmesh_inference_count_total", **direct)
    assert entry["inference_stats"]["success"]["count"] == after.value("letmesh_inference_request_success_total",
                                                                       **direct)
    assert entry["inference_stats"]["fail"]["count"] >= 1
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:  # Triton's own client reads it
        (stats,) = client.get_inference_statistics("trivial")["model_stats"]
        assert stats["inference_count"] == after.value("letmesh_inference_count_total", **family)
    finally:
        client.close()


def test_the_controller_and_agent_export_the_mesh_they_run(metered) -> None:
    controller = Scrape(metered.metrics_url("controller"))
    assert controller.value("letmesh_agents", state="alive") == 1
    assert controller.value("letmesh_workers", state="ready") >= 1
    assert controller.value("letmesh_gateways") == 1
    sizes = [v for (name, _), v in controller.samples.items() if name == "letmesh_gpulet_size"]
    assert sizes and all(v >= 1 for v in sizes)
    (share,) = [v for (name, _), v in controller.samples.items() if name == "letmesh_device_allocated_ratio"]
    assert share > 0  # above 1 only while a re-plan's new workers start beside the old
    assert controller.value("letmesh_planned_effective_accuracy", family="trivial") == 1.0
    assert controller.value("letmesh_accuracy_scaling_headroom") >= 1.0
    assert "letmesh_plan_duration_seconds" in controller.families and "letmesh_replans" in controller.families

    def planned() -> Scrape | None:  # once the agent's profiles are in, the gpu-let planner lays the mesh out
        scrape = Scrape(metered.metrics_url("controller"))
        return scrape if scrape.value("letmesh_plan_duration_seconds_count") >= 1 else None

    after_plan = wait_until(planned, timeout_s=120, interval_s=0.5)
    (busy,) = [v for (name, _), v in after_plan.samples.items() if name == "letmesh_device_planned_busy_ratio"]
    assert 0 < busy <= 1

    agent = Scrape(metered.metrics_url("agent"))
    assert agent.value("letmesh_agent_registered") == 1
    assert agent.value("letmesh_agent_workers", state="running") >= 1
    assert agent.value("letmesh_agent_worker_restarts_total") == 0
    assert any(name == "letmesh_agent_device_cores" for name, _ in agent.samples)

    # Each serving worker's memory and CPU time, as the kernel counts them for its process, beside
    # what the planner reserves for it (a floor: the trivial variant's weights are a few bytes).
    # Taken again if a re-plan started or stopped a worker between the status and the scrape.
    def worker_usage() -> list[tuple[object, float, float, float, int]] | None:
        serving = [w for w in fetch_status(metered.controller_address).workers if w.state == "ready" and w.pid]
        scrape = Scrape(metered.metrics_url("agent"))
        rows = []
        for w in serving:
            resident = scrape.value("letmesh_agent_worker_resident_bytes", worker=w.worker_id)
            try:
                with open(f"/proc/{w.pid}/status") as f:
                    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
            except (OSError, StopIteration):
                return None  # it exited since the status
            if not resident:
                return None  # no series for it (yet)
            rows.append((w, resident, scrape.value("letmesh_agent_worker_peak_resident_bytes", worker=w.worker_id),
                         scrape.value("letmesh_agent_worker_cpu_seconds_total", worker=w.worker_id), hwm))
        return rows or None

    for w, resident, peak, cpu_s, hwm in wait_until(worker_usage, timeout_s=30, interval_s=0.5,
                                                    what="a memory and CPU series for every ready worker"):
        assert 10 << 20 < resident <= peak <= hwm  # an interpreter with numpy and ZeroMQ; the peak only grows
        assert 10 << 20 < w.memory_peak_bytes <= hwm  # the worker's own report, read before the kernel's
        assert cpu_s > 0
        for variant in w.variants:
            assert 0 < controller.value("letmesh_variant_memory_reserved_bytes", variant=variant) < resident

    # Every metric the Grafana dashboard plots is one the mesh exports.
    exported = controller.names() | agent.names() | Scrape(metered.metrics_url("gateway")).names()
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", ())]
    plotted = {m for e in exprs for m in re.findall(r"letmesh_[a-z0-9_]+", e)}
    assert plotted and plotted <= exported, sorted(plotted - exported)


def test_a_second_peer_claiming_a_live_name_shows_in_the_controller_and_gateway_counters(metered) -> None:
    """Someone starts a second agent under the running agent's id (and a stray process dials the
    gateway under a serving worker's name): each socket drops what the impostor sends, and the
    operator sees it in the scrape, not only in a log line."""
    worker = next(w for w in fetch_status(metered.controller_address).workers if w.state == "ready")
    gateway_key, _ = zmq.auth.load_certificate(own_secret_file(metered.keys_dir, "gateway", "local"))
    claims = [("controller", metered.controller_address, "agent:local", "control", None),
              ("gateway", f"tcp://127.0.0.1:{metered.data_port}", f"worker:{worker.worker_id}", "data", gateway_key)]
    for role, address, name, socket, server_key in claims:
        before = Scrape(metered.metrics_url(role))
        assert before.value("letmesh_peer_names", socket=socket) >= 1
        impostor = ControlPeer(address, name, metered.keys_dir, server_key=server_key)
        try:
            for _ in range(5):
                impostor.send(encode(Heartbeat(sender=name, role=name.split(":")[0])))

            def counted(role: str = role, socket: str = socket) -> Scrape | None:
                scrape = Scrape(metered.metrics_url(role))
                return scrape if scrape.value("letmesh_peer_claims_dropped_total", socket=socket) >= 5 else None

            after = wait_until(counted, timeout_s=30, interval_s=0.2)
        finally:
            impostor.close()
        assert after.value("letmesh_peer_claims_dropped_total", socket=socket) - \
            before.value("letmesh_peer_claims_dropped_total", socket=socket) == 5, role
        assert after.value("letmesh_transport_invalid_messages_total", socket=socket) == 0
    # The real peers kept their names: the mesh still serves.
    status, _, raw = post(f"{metered.http_url}/v2/models/identity/infer", identity_body([1.0] * 16))
    assert status == 200, raw


def test_a_crashed_worker_shows_in_the_agents_crash_and_restart_counters(metered) -> None:
    before = Scrape(metered.metrics_url("agent"))
    victim = next(w for w in fetch_status(metered.controller_address).workers if w.state == "ready" and w.pid)
    os.kill(victim.pid, signal.SIGKILL)

    def restarted() -> Scrape | None:
        scrape = Scrape(metered.metrics_url("agent"))
        return scrape if scrape.value("letmesh_agent_worker_restarts_total") > 0 else None

    after = wait_until(restarted, timeout_s=30, interval_s=0.2)
    for name in ("letmesh_agent_worker_crashes_total", "letmesh_agent_worker_restarts_total"):
        assert after.value(name) - before.value(name) == 1, name


def test_letmesh_up_prints_where_every_role_serves_metrics(tmp_path, trivial_repo) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "letmesh", "up", "--repository", str(trivial_repo), "--state-dir", str(state),
         "--http-port", str(free_port()), "--controller-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        lines: list[str] = []
        while not lines or "Ctrl-C stops the mesh" not in lines[-1]:
            line = proc.stdout.readline()  # bounded: `up` gives up after its ready timeout and exits
            assert line, "".join(lines)
            lines.append(line)
        (printed,) = [line for line in lines if line.strip().startswith("metrics:")]
        urls = re.findall(r"http://127\.0\.0\.1:\d+/metrics", printed)
        assert len(urls) == 3, printed
        gateway, controller, agent = (Scrape(u) for u in urls)
        assert "letmesh_inference_request_success_total" in gateway.names()
        assert controller.value("letmesh_agents", state="alive") == 1
        assert "letmesh_agent_workers" in agent.names()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    wait_until(lambda: not processes_mentioning(str(state.resolve())), timeout_s=10)
