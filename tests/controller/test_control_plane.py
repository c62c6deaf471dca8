"""The control plane without a socket: each message's replies and commands, in order, on a fake clock."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.config import ControllerConfig
from controller.control_plane import ControlPlane
from controller.metrics import ControllerMetrics
from controller.profiling import first_run_id
from mesh.clock import FakeClock
from protocol.message import (ErrorReply, Heartbeat, ProfileDevice, ProfileProgress, RegisterAgent,
                              RegisterAgentReply, RegisterGateway, RegisterGatewayReply, Replan, ReplanReply,
                              RoutingTable, StartWorker, StopWorker, WorkerCrashed, WorkerReady, WorkerStarted,
                              WorkerStopped)
from protocol.types import DeviceInfo, ProfileSample
from tests.controller.conftest import Scale, add_variant

CPU = DeviceInfo(device_id="cpu0", kind="cpu", name="test cpu", cores=2, memory_bytes=1 << 30)


@pytest.fixture
def address() -> dict[str, str]:
    """The address workers are told to dial; a test may change it, as binding does."""
    return {"now": "tcp://127.0.0.1:1"}


@pytest.fixture
def plane(repo: Path, tmp_path: Path, address: dict[str, str]) -> Iterator[ControlPlane]:
    config = ControllerConfig(bind="tcp://127.0.0.1:0", repository=str(repo), state_dir=str(tmp_path / "state"))
    plane = ControlPlane(config, FakeClock(), ControllerMetrics(), lambda: address["now"])
    yield plane
    plane.close()


def drain(plane: ControlPlane) -> list[tuple[bytes, object]]:
    out, plane.outbox = plane.outbox, []
    return [(o.peer, o.msg) for o in out]


def test_an_agent_registering_is_answered_then_given_its_workers_and_profiling(
        plane: ControlPlane, address: dict[str, str]) -> None:
    address["now"] = "tcp://10.0.0.1:5555"  # bound after the plane was opened
    plane.receive(b"agent:a1", None, RegisterAgent(agent_id="a1", hostname="h", devices=(CPU,), pid=7, instance="i"))
    sent = drain(plane)
    assert {peer for peer, _ in sent} == {b"agent:a1"}
    kinds = [type(msg) for _, msg in sent]
    assert kinds[0] is RegisterAgentReply
    starts = [msg for _, msg in sent if isinstance(msg, StartWorker)]
    assert starts, "an empty plan of record gets an initial placement on the first agent"
    assert all(s.controller == "tcp://10.0.0.1:5555" for s in starts), "commands name the address workers dial now"
    placed = {spec.name for s in starts for spec in s.variants}
    assert placed <= set(plane.registry.variants) and placed
    assert ProfileDevice in kinds and kinds.index(ProfileDevice) > kinds.index(StartWorker)
    (profile,) = [msg for _, msg in sent if isinstance(msg, ProfileDevice)]
    # The same registration again (one start, re-sent) starts nothing; the profiling run in flight
    # is asked for again under its own request id, which an agent still running it ignores (its
    # last report may have been lost while the agent was cut off).
    plane.receive(b"agent:a1", None, RegisterAgent(agent_id="a1", hostname="h", devices=(CPU,), pid=7, instance="i"))
    again = [msg for _, msg in drain(plane)]
    assert [type(msg) for msg in again] == [RegisterAgentReply, ProfileDevice]
    assert again[1] == profile


@pytest.mark.parametrize(("memory_mb", "auto_profile", "workers"), [(600, True, 1), (600, False, 2), (1100, True, 2)])
def test_a_board_of_little_memory_starts_one_worker_while_it_is_profiled(
        repo: Path, tmp_path: Path, memory_mb: int, auto_profile: bool, workers: int) -> None:
    """Two start-up workers beside the profiler and its co-runner overran a 600 MiB board: the
    kernel killed a worker and cut the profiling run short."""
    config = ControllerConfig(bind="tcp://127.0.0.1:0", repository=str(repo), state_dir=str(tmp_path / "state"),
                              auto_profile=auto_profile)
    plane = ControlPlane(config, FakeClock(), ControllerMetrics(), lambda: "tcp://127.0.0.1:1")
    try:
        board = DeviceInfo(device_id="cpu0", kind="cpu", name="edge", cores=2, memory_bytes=memory_mb << 20)
        plane.receive(b"agent:a1", None, RegisterAgent(agent_id="a1", hostname="h", devices=(board,), pid=7,
                                                       instance="i"))
        starts = [msg for _, msg in drain(plane) if isinstance(msg, StartWorker)]
        assert len(starts) == workers
        assert {spec.name for s in starts for spec in s.variants} == set(plane.registry.variants)
    finally:
        plane.close()


class OneAgent:
    """Agent a1 of a control plane on a fake clock: it beats, its workers come up at once and go
    when stopped, and it reports profiling as a test says."""

    def __init__(self, plane: ControlPlane, clock: FakeClock, devices: tuple[DeviceInfo, ...] = (CPU,)) -> None:
        self.plane, self.clock = plane, clock
        self.running: dict[str, StartWorker] = {}
        plane.receive(b"agent:a1", None, RegisterAgent(agent_id="a1", hostname="h", devices=devices, pid=7,
                                                       instance="i"))
        sent = [msg for _, msg in drain(plane)]
        self.running.update((msg.worker_id, msg) for msg in sent if isinstance(msg, StartWorker))
        (self.run,) = [msg for msg in sent if isinstance(msg, ProfileDevice)]
        self.kind = next(d.kind for d in devices if d.device_id == self.run.device_id)

    def every_sample(self) -> tuple[ProfileSample, ...]:
        run = self.run
        return tuple(ProfileSample(variant=v.name, device_kind=self.kind, partition=size, batch=b, p50_ms=b / size,
                                   p99_ms=1.1 * b / size, runs=5)
                     for v in run.variants for size in run.partitions for b in run.batches)

    def report(self, done: bool, samples: tuple[ProfileSample, ...] = ()) -> None:
        self.plane.receive(b"agent:a1", None, ProfileProgress(request_id=self.run.request_id, agent_id="a1",
                                                              device_kind=self.kind, completed=1 + done, total=2,
                                                              samples=samples, done=done))

    def plans_in(self, seconds: int) -> int:
        """Re-plans on record after ``seconds`` more."""
        plane = self.plane
        for _ in range(seconds):
            self.clock.advance(1.0)
            plane.receive(b"agent:a1", None, Heartbeat(sender="a1", role="agent", seq=1))
            for s in self.running.values():
                plane.receive(f"worker:{s.worker_id}".encode(), None, WorkerReady(
                    worker_id=s.worker_id, agent_id="a1", variants=tuple(v.name for v in s.variants), pid=100,
                    batch_latency_ms={v.name: (1.0,) for v in s.variants}))
            plane.tick()
            for _, msg in drain(plane):
                if isinstance(msg, StartWorker):
                    self.running[msg.worker_id] = msg
                elif isinstance(msg, StopWorker) and self.running.pop(msg.worker_id, None):
                    plane.receive(b"agent:a1", None, WorkerStopped(worker_id=msg.worker_id, agent_id="a1", exit_code=0))
        return len(plane.layout.history)


@pytest.fixture
def clocked(repo: Path, tmp_path: Path) -> Iterator[tuple[ControlPlane, FakeClock]]:
    clock = FakeClock()
    config = ControllerConfig(bind="tcp://127.0.0.1:0", repository=str(repo), state_dir=str(tmp_path / "state"))
    plane = ControlPlane(config, clock, ControllerMetrics(), lambda: "tcp://127.0.0.1:1")
    yield plane, clock
    plane.close()


def test_a_plan_made_once_a_runs_last_profiles_came_in_is_not_made_again_at_its_end(clocked) -> None:
    """The run's last measurements and its end are two messages: a plan made between them had
    every profile, and making one more at the end moved workers about for nothing."""
    agent = OneAgent(*clocked)
    agent.report(False, agent.every_sample())
    made = agent.plans_in(15)
    assert made >= 1, "the initial plan is made once every partition size is measured"
    agent.report(True)
    assert agent.plans_in(15) == made


@pytest.mark.parametrize("planned_between", [True, False])
def test_a_runs_end_re_plans_unless_a_plan_since_its_last_profiles_had_them(clocked, planned_between: bool) -> None:
    """A host's GPU profiled after its CPU, with plans on record from before the GPU's
    measurements came in: a plan made after them stands; without one, the run's end plans with
    the device kind it brought."""
    plane, clock = clocked
    plane.store.save_profiles([ProfileSample(variant=v, device_kind="cpu", partition=c, batch=b, p50_ms=b / c,
                                             p99_ms=1.1 * b / c, runs=5)
                               for v in plane.registry.variants for c in (1, 2) for b in (1, 2, 4, 8, 16, 32)],
                              [], now=0.0)
    gpu = DeviceInfo(device_id="cuda0", kind="cuda", name="gpu", cores=132, memory_bytes=80 << 30, sm_count=132)
    agent = OneAgent(plane, clock, (CPU, gpu))
    assert agent.kind == "cuda"
    before = agent.plans_in(185)  # the plan waited 180 s for the GPU, then went ahead on the CPU
    assert before >= 1
    agent.report(False, agent.every_sample())
    if planned_between:
        plane.receive(b"operator:o", None, Replan())
    made = agent.plans_in(5)
    assert made == before + planned_between
    agent.report(True)
    assert agent.plans_in(15) == made + (not planned_between)


def test_a_heartbeat_from_a_stranger_is_told_to_register(plane: ControlPlane) -> None:
    plane.receive(b"agent:nobody", None, Heartbeat(sender="nobody", role="agent", seq=1))
    ((peer, reply),) = drain(plane)
    assert peer == b"agent:nobody"
    assert isinstance(reply, ErrorReply) and reply.code == "unknown_peer" and reply.retryable


def test_a_message_its_sender_may_not_send_is_refused_and_changes_nothing(plane: ControlPlane) -> None:
    workers_before = dict(plane.registry.workers)
    plane.receive(b"gateway:g", None, WorkerStarted(worker_id="w-x", agent_id="a", pid=1))
    ((peer, reply),) = drain(plane)
    assert peer == b"gateway:g"
    assert isinstance(reply, ErrorReply) and reply.code == "unexpected" and "WorkerStarted" in reply.message
    assert plane.registry.workers == workers_before


def test_a_gateway_gets_its_reply_and_the_table_and_every_tick_a_heartbeat(plane: ControlPlane) -> None:
    plane.receive(b"gateway:g", None, RegisterGateway(gateway_id="g", data_endpoint="tcp://127.0.0.1:7000",
                                                       http_url="http://127.0.0.1:8000"))
    sent = drain(plane)
    assert [type(m) for _, m in sent][:2] == [RegisterGatewayReply, RoutingTable]
    assert {p for p, _ in sent} == {b"gateway:g"}
    plane.tick()
    beats = [(p, m) for p, m in drain(plane) if isinstance(m, Heartbeat)]
    assert [p for p, _ in beats] == [b"gateway:g"]
    plane.tick()
    assert [m.seq for p, m in drain(plane) if isinstance(m, Heartbeat)] == [beats[0][1].seq + 1]


def test_a_replan_with_an_unknown_policy_is_refused_with_the_known_ones(plane: ControlPlane) -> None:
    plane.receive(b"operator:o", None, Replan(policy="fastest"))
    ((_, reply),) = drain(plane)
    assert isinstance(reply, ReplanReply) and not reply.accepted and "gpulet" in reply.message
    plane.receive(b"operator:o", None, Replan(policy="whole"))
    ((_, reply),) = drain(plane)
    assert isinstance(reply, ReplanReply) and reply.accepted and reply.policy == "whole"


def sample(variant: str, p50_ms: float, batch: int = 1) -> ProfileSample:
    return ProfileSample(variant=variant, device_kind="cpu", partition=1, batch=batch, p50_ms=p50_ms,
                         p99_ms=p50_ms * 1.1, runs=5)


def test_a_profile_report_the_planner_cannot_use_is_refused_and_planning_goes_on(plane: ControlPlane) -> None:
    plane.receive(b"agent:a1", None, RegisterAgent(agent_id="a1", hostname="h", devices=(CPU,), pid=7, instance="i"))
    drain(plane)
    before = len(plane.store.profiles())
    bad = (sample("identity", float("inf")), sample("identity", float("nan")), sample("identity", -1.0),
           sample("identity", 1.0, batch=10_000), *(sample(f"made-up-{i}", 1.0) for i in range(50)),
           ProfileSample(variant="identity", device_kind="tpu", partition=1, batch=1, p50_ms=1.0, p99_ms=1.1, runs=5))
    plane.receive(b"agent:a1", None, ProfileProgress(request_id=1, agent_id="a1", device_kind="cpu", completed=1,
                                                     total=1, samples=(*bad, sample("identity", 2.0)), done=True))
    kept = plane.store.profiles()
    assert len(kept) <= before + 1 and all(math.isfinite(s.p50_ms) and s.p50_ms > 0 for s in kept)
    assert not [s for s in kept if s.variant.startswith("made-up") or s.device_kind == "tpu" or s.batch > 32]
    plane.layout.force()
    plane.tick()  # plans with what was kept
    assert any(isinstance(msg, Heartbeat) for _, msg in drain(plane))


def test_a_replan_that_fails_leaves_heartbeats_and_routing_going(plane: ControlPlane, monkeypatch, caplog) -> None:
    plane.receive(b"agent:a1", None, RegisterAgent(agent_id="a1", hostname="h", devices=(CPU,), pid=7, instance="i"))
    plane.receive(b"gateway:g1", None, RegisterGateway(gateway_id="g1", data_endpoint="tcp://127.0.0.1:2", http_url=""))
    drain(plane)

    def broken(now: float) -> list:
        raise ValueError("latencies must be positive and finite")

    monkeypatch.setattr(plane.layout, "tick", broken)
    for _ in range(3):
        plane.tick()
        sent = drain(plane)
        assert {peer for peer, msg in sent if isinstance(msg, Heartbeat)} == {b"agent:a1", b"gateway:g1"}
    assert len([r for r in caplog.records if "re-planning failed" in r.getMessage()]) == 1  # said once


def test_profiles_an_older_version_stored_unchecked_are_left_out(plane: ControlPlane) -> None:
    plane.store.save_profiles([sample("identity", 1.0)], [], now=0.0)
    plane.store._db.execute("UPDATE profile SET p50_ms = ?, p99_ms = ? WHERE variant = 'identity' AND batch = 1",
                            (float("inf"), float("inf")))
    assert all(math.isfinite(s.p50_ms) for s in plane.store.profiles())


def test_a_variant_whose_file_was_replaced_is_profiled_again_at_the_next_start(
        repo: Path, tmp_path: Path, address: dict[str, str]) -> None:
    root = tmp_path / "repo"
    shutil.copytree(repo, root)
    config = ControllerConfig(bind="tcp://127.0.0.1:0", repository=str(root), state_dir=str(tmp_path / "state"))

    def start() -> ControlPlane:
        return ControlPlane(config, FakeClock(), ControllerMetrics(), lambda: address["now"])

    def kept(plane: ControlPlane) -> dict[str, float]:
        return {s.variant: s.p50_ms for s in plane.store.profiles() if s.partition == 1 and s.batch == 1}

    def report(plane: ControlPlane, request_id: int, *samples: ProfileSample) -> None:
        plane.receive(b"agent:a1", None, ProfileProgress(request_id=request_id, agent_id="a1", device_kind="cpu",
                                                         completed=1, total=4, samples=samples))

    first = start()
    try:
        first.store.save_profiles([ProfileSample(variant=v, device_kind="cpu", partition=p, batch=1, p50_ms=1.0,
                                                 p99_ms=1.0, runs=5)
                                   for v in first.registry.variants for p in (1, 2)], [], now=0.0)
        first_run = first_run_id(first.epoch)  # a run the agent may still be in when the next process starts
    finally:
        first.close()
    # Another model under the same name (its manifest written for the new file).
    shutil.rmtree(root / "double")
    add_variant(root, "double", Scale(2.5), 16)
    second = start()
    try:
        assert set(kept(second)) == set(second.registry.variants) - {"double"}
        second.receive(b"agent:a1", None, RegisterAgent(agent_id="a1", hostname="h", devices=(CPU,), pid=7,
                                                        instance="i"))
        (command,) = [msg for _, msg in drain(second) if isinstance(msg, ProfileDevice)]
        assert [v.name for v in command.variants] == ["double"]
        # The first process's run measured the old file: refused for it, taken for the others.
        report(second, first_run, sample("double", 9.0), sample("triple", 3.0))
        assert "double" not in kept(second) and kept(second)["triple"] == 3.0
    finally:
        second.close()
    third = start()  # restarted again before the new file was measured
    try:
        third.receive(b"agent:a1", None, RegisterAgent(agent_id="a1", hostname="h", devices=(CPU,), pid=7,
                                                       instance="i"))
        report(third, first_run, sample("double", 9.0), sample("triple", 4.0))
        assert "double" not in kept(third) and kept(third)["triple"] == 4.0
        report(third, command.request_id, sample("double", 2.0))  # the second process's run: the new file
        assert kept(third)["double"] == 2.0
    finally:
        third.close()


def placed(plane: ControlPlane) -> list[StartWorker]:
    """Agent a1 registered with profiles in, its first workers started and ready."""
    plane.store.save_profiles([ProfileSample(variant=v, device_kind="cpu", partition=c, batch=b, p50_ms=b / c,
                                             p99_ms=1.1 * b / c, runs=5)
                               for v in plane.registry.variants for c in (1, 2) for b in (1, 2, 4)], [], now=0.0)
    plane.receive(b"agent:a1", None, RegisterAgent(agent_id="a1", hostname="h", devices=(CPU,), pid=7, instance="i"))
    starts = [msg for _, msg in drain(plane) if isinstance(msg, StartWorker)]
    for s in starts:
        plane.receive(f"worker:{s.worker_id}".encode(), None, WorkerReady(
            worker_id=s.worker_id, agent_id="a1", variants=tuple(v.name for v in s.variants), pid=100,
            batch_latency_ms={v.name: (1.0,) for v in s.variants}))
    drain(plane)
    return starts


def crash(plane: ControlPlane, worker_id: str) -> None:
    plane.receive(b"agent:a1", None, WorkerCrashed(worker_id=worker_id, agent_id="a1", exit_code=-11, restarts=5,
                                                   will_restart=False))


def started_within(plane: ControlPlane, serving: list[StartWorker], seconds: int) -> list[StartWorker]:
    """StartWorkers sent to a1 over ``seconds`` of ticks, while a1 and ``serving`` beat."""
    out: list[StartWorker] = []
    for _ in range(seconds):
        plane._clock.advance(1.0)
        plane.receive(b"agent:a1", None, Heartbeat(sender="a1", role="agent", seq=1))
        for s in serving:
            plane.receive(f"worker:{s.worker_id}".encode(), None, Heartbeat(sender=s.worker_id, role="worker", seq=1))
        plane.tick()
        out += [msg for peer, msg in drain(plane) if isinstance(msg, StartWorker) and peer == b"agent:a1"]
        if out:
            break
    return out


def test_a_worker_crashed_past_its_restart_limit_is_replaced_on_its_live_agent(plane: ControlPlane) -> None:
    starts = placed(plane)
    victim = starts[0]
    crash(plane, victim.worker_id)
    replacement = started_within(plane, starts[1:], 10)  # within seconds, not after a period
    assert replacement, "the crashed worker's variants were left without a worker"
    assert {v.name for v in victim.variants} <= {v.name for s in replacement for v in s.variants}
    assert victim.worker_id not in {w.worker_id for w in plane.store.placements()}  # not started again on a restart
    assert victim.worker_id not in plane.registry.workers  # its process is gone: so is its record


def test_a_new_worker_that_crashes_while_its_move_starts_is_replaced_without_waiting_out_the_move(
        plane: ControlPlane) -> None:
    starts = placed(plane)
    crash(plane, starts[0].worker_id)
    first = started_within(plane, starts[1:], 10)
    for s in first:  # the new workers die loading, past their limit: the move cannot finish
        crash(plane, s.worker_id)
    again = started_within(plane, starts[1:], 10)  # the start timeout is 120 s
    assert again and not {s.worker_id for s in first} & {s.worker_id for s in again}
    assert not {s.worker_id for s in first} & set(plane.registry.workers)


def test_planned_rates_are_exported_only_for_workers_that_hold_their_gpu_let(plane: ControlPlane) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    def planned() -> set[str]:
        text = generate_latest(plane.metrics.registry).decode()
        (family,) = [f for f in text_string_to_metric_families(text) if f.name == "letmesh_gpulet_planned_rps"]
        return {s.labels["worker"] for s in family.samples}

    serving = placed(plane)
    assert started_within(plane, serving, 30), "the plan made once profiles are in moves the start-up placement"
    assert planned(), "the move's rates are exported"
    for _ in range(60):  # a1 falls silent: its workers are lost, the move abandoned
        plane._clock.advance(1.0)
        plane.tick()
        drain(plane)
    holding = {w for w, r in plane.registry.workers.items() if r.in_plan and r.state in ("starting", "ready", "restarting")}
    assert planned() <= holding, {w: plane.registry.workers[w].state for w in planned()}
