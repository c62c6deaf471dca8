"""Registrations against the plan of record: a repeat changes nothing, a registration never widens
the plan, workers running as planned are left alone, workers the plan does not know are stopped.
Real registry, SQLite store and layout manager; commands are returned, not sent."""

from __future__ import annotations

import dataclasses

import pytest

from controller.demand import DemandTracker
from controller.layout_manager import LayoutManager
from controller.layout_policy import LayoutPolicy
from controller.membership import Membership
from controller.placement import PlannedWorker
from controller.registry import Joined, Registry
from controller.store import StateStore
from protocol.message import RegisterAgent, StopWorker
from protocol.types import DeviceInfo, Partition, RunningWorker, WorkerState
from tests.controller.test_layout_manager import ACCURACY, samples, variant

CPU = (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=2, memory_bytes=8 << 30),)
# As a scaled plan left it: cls-small dropped on purpose, cls-large on both cores of a0.
SCALED = PlannedWorker("a0.g7.w0", "a0", Partition(device_id="cpu0", kind="cpu", cores=(0, 1)), ("cls-large",))


class Controller:
    """The registration path of a controller over one state directory (a restart is a new one)."""

    def __init__(self, path, names=tuple(ACCURACY), *, profiled: bool = True, profilers: int = 0,
                 devices=CPU, worker_memory: int = 0, policy: str = "gpulet") -> None:
        self.devices = devices
        self.store = StateStore(path)
        if profiled:
            self.store.save_profiles(samples(), [], now=0.0)
        self.registry = Registry({n: variant(n) for n in names}, heartbeat_interval_s=1.0, missed_heartbeats=2)
        for plan in self.store.placements():
            self.registry.plan_worker(plan)
        demand = DemandTracker()
        policy_ = LayoutPolicy(policy=policy, cpu_worker_memory_bytes=worker_memory)
        self.layout = LayoutManager(policy_, self.registry, self.store, demand, lambda p: p, generation=1)
        self.membership = Membership(self.registry, self.store, self.layout, lambda p: p, profilers=profilers)
        self.membership.place_added_variants(self.registry.variants)

    def register(self, agent: str, now: float = 0.0, instance: str = "i1", running=()):
        msg = RegisterAgent(agent_id=agent, hostname=agent, devices=self.devices, pid=1, instance=instance,
                            workers=tuple(running))
        return self.membership.register(agent, msg, now)

    def planned_variants(self) -> set[str]:
        return {v for w in self.registry.workers.values() if w.in_plan for v in w.plan.variants}


@pytest.fixture
def restarted(tmp_path):
    """A controller restarted over a plan of record that accuracy scaling had narrowed."""
    first = StateStore(tmp_path / "state.db")
    first.save_known_variants(list(ACCURACY))
    first.save_placement(SCALED)
    first.close()
    c = Controller(tmp_path / "state.db")
    yield c
    c.store.close()


def running(plan: PlannedWorker, pid: int = 4242) -> RunningWorker:
    return RunningWorker(worker_id=plan.worker_id, variants=plan.variants, pid=pid)


def test_an_agent_back_with_its_planned_workers_gets_no_command(restarted: Controller) -> None:
    registration = restarted.register("a0", running=[running(SCALED)])
    assert registration.joined is Joined.NEW and registration.commands == ()
    assert restarted.registry.workers[SCALED.worker_id].pid == 4242


def test_registrations_never_widen_the_plan_of_record(restarted: Controller) -> None:
    restarted.register("a0", running=[running(SCALED)])
    second = restarted.register("a1")  # a new agent: put to work by a re-plan, not by its registration
    assert second.commands == ()
    for now in range(1, 80):  # and a backlog of repeats changes nothing
        assert restarted.register("a0", now=now * 0.01, running=[running(SCALED)]).commands == ()
    assert restarted.planned_variants() == {"cls-large"}, "cls-small stays dropped"


def test_a_worker_the_plan_does_not_know_is_stopped(restarted: Controller) -> None:
    orphan = dataclasses.replace(SCALED, worker_id="a0.g6.w3", variants=("cls-small",))
    registration = restarted.register("a0", running=[running(SCALED), running(orphan, 4343)])
    assert registration.commands == (StopWorker(worker_id="a0.g6.w3", drain_s=2.0),)


def test_a_planned_worker_not_running_or_running_another_spec_is_started(restarted: Controller) -> None:
    assert restarted.register("a0").commands == (SCALED,), "an agent that restarted runs nothing"
    other = RunningWorker(worker_id=SCALED.worker_id, variants=("cls-large", "cls-small"), pid=1)
    registration = restarted.register("a0", instance="i2", running=[other])
    assert registration.joined is Joined.RESTARTED and registration.commands == (SCALED,)


def test_a_worker_running_a_replaced_artifact_is_restarted_on_the_repositorys(restarted: Controller) -> None:
    """``letmesh repo add --replace`` then a controller restart: a worker still running the old
    artifact of its variant kept answering with the old model while the metadata showed the new one."""
    current = restarted.registry.variants["cls-large"].sha256
    same = dataclasses.replace(running(SCALED), artifacts=(current,))
    assert restarted.register("a0", running=[same]).commands == ()
    old = dataclasses.replace(running(SCALED), artifacts=("1" * 64,))
    registration = restarted.register("a0", instance="i2", running=[old])
    assert registration.commands == (SCALED,), "started again (replacing the old process under its id)"


def test_a_worker_serving_its_artifact_with_another_backend_or_precision_is_restarted(restarted: Controller) -> None:
    """A manifest switched from onnx to openvino, or to bf16, names the same file: a worker kept
    across a controller restart would go on computing the old way while metadata says the new."""
    current = restarted.registry.variants["cls-large"]
    assert current.spec().served_as == "torchscript/fp32"
    same = dataclasses.replace(running(SCALED), artifacts=(current.sha256,), served_as=("torchscript/fp32",))
    assert restarted.register("a0", running=[same]).commands == ()
    for served in ("onnx/fp32", "torchscript/bf16"):
        other = dataclasses.replace(same, served_as=(served,))
        registration = restarted.register("a0", instance=f"i-{served}", running=[other])
        assert registration.commands == (SCALED,), served


def test_only_an_empty_plan_of_record_gets_an_initial_placement(tmp_path) -> None:
    c = Controller(tmp_path / "fresh.db")
    first = c.register("a0")
    assert {v for p in first.commands for v in p.variants} == set(ACCURACY)
    assert c.register("a1").commands == ()
    c.store.close()


def _board(memory_mb: int) -> tuple[DeviceInfo, ...]:
    return (DeviceInfo(device_id="cpu0", kind="cpu", name="edge", cores=2, memory_bytes=memory_mb << 20),)


@pytest.mark.parametrize(("memory_mb", "profiled", "workers"), [
    (600, False, 1),  # 540 MiB for workers: two at 200 MiB beside two profiling processes at 200 do not fit
    (600, True, 2),  # nothing to profile: both cores get a worker
    (1100, False, 2),  # room for both beside the profiling run
])
def test_the_start_up_placement_starts_what_memory_holds_beside_the_profiling_run(
        tmp_path, memory_mb: int, profiled: bool, workers: int) -> None:
    """On a 600 MiB board two start-up workers (~165 MiB of their own each) beside the profiler and
    its co-runner were killed by the kernel, and the profiling run with them."""
    c = Controller(tmp_path / "edge.db", profiled=profiled, profilers=2, devices=_board(memory_mb),
                   worker_memory=200 << 20)
    started = c.register("a0").commands
    assert len(started) == workers
    assert {v for p in started for v in p.variants} == set(ACCURACY), "every variant is served"
    c.store.close()


def test_what_workers_reported_replaces_the_prior_at_start_up(tmp_path) -> None:
    """Under the static policy each new agent gets a start-up placement: by then workers elsewhere
    have said what they hold (60 MiB beyond their variants here), and that is what is counted."""
    c = Controller(tmp_path / "edge.db", profiled=False, profilers=2, devices=_board(600), worker_memory=200 << 20,
                   policy="static")
    (first,) = c.register("a0").commands
    c.registry.worker_ready(first.worker_id, 1, {v: (1.0,) for v in first.variants}, 0.0,
                            memory_peak_bytes=60 << 20)
    c.layout.worker_memory.observe(c.registry.workers.values(), c.registry.variants, 0.0)
    assert len(c.register("a1").commands) == 2  # 2 x 60 MiB beside 2 x 60 fits in 540
    c.store.close()


def test_a_variant_added_to_the_repository_joins_the_plan_once(tmp_path) -> None:
    store = StateStore(tmp_path / "added.db")
    store.save_known_variants(["cls-large"])
    store.save_placement(dataclasses.replace(SCALED, worker_id="a0.w0"))
    store.close()
    c = Controller(tmp_path / "added.db")
    assert c.planned_variants() == {"cls-large", "cls-small"}
    c.store.close()
    c = Controller(tmp_path / "added.db")  # known now: a later plan may drop it and it stays dropped
    assert c.store.known_variants() == set(ACCURACY)
    c.store.close()


def test_a_worker_replaced_while_its_agent_was_away_is_forgotten_when_the_agent_is_back_without_it(
        restarted: Controller) -> None:
    restarted.register("a0", running=[running(SCALED)])
    restarted.registry.drop_from_plan(SCALED.worker_id)  # its agent was lost: a re-plan replaced it
    assert SCALED.worker_id in restarted.registry.workers  # shown (as lost) while the agent is away
    restarted.register("a0", now=5.0, instance="i2")  # the agent restarted: that worker is gone
    assert SCALED.worker_id not in restarted.registry.workers
    _, workers, _ = restarted.registry.status(5.0)
    assert all(w.worker_id != SCALED.worker_id for w in workers)


def test_a_worker_asked_to_stop_that_its_restarted_agent_does_not_run_is_gone(restarted: Controller) -> None:
    """The agent was killed while the worker was stopping: its StopWorker may never be answered
    (the new agent process has no such worker to report), so the registration itself says so."""
    restarted.register("a0", running=[running(SCALED)])
    restarted.registry.retire(SCALED.worker_id, WorkerState.STOPPING)  # a move retires it
    restarted.register("a0", now=5.0, instance="i2")  # the agent restarted, running nothing
    assert SCALED.worker_id not in restarted.registry.workers
    _, workers, _ = restarted.registry.status(5.0)
    assert all(w.worker_id != SCALED.worker_id for w in workers)
