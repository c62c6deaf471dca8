"""The registry's routing table, liveness and gateways, driven by a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.placement import PlannedWorker
from controller.registry import Joined, Registry
from controller.repository import Variant
from mesh.clock import FakeClock
from protocol.types import DeviceInfo, Partition, TensorSpec, WorkerRoute, WorkerState

INTERVAL_S = 1.0
MISSED = 2
WINDOW_S = INTERVAL_S * MISSED
CPU = (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=2, memory_bytes=1 << 30),)


def variant(name: str, accuracy: float = 0.9) -> Variant:
    spec = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
    return Variant(
        name=name,
        family="fam",
        version="1",
        backend="torchscript",
        accuracy=accuracy,
        max_batch=8,
        default_slo_ms=50.0,
        energy_j=0.0,
        inputs=spec,
        outputs=spec,
        artifact=Path(f"/nonexistent/{name}.pt"),
        sha256=name * 4,
        size_bytes=10,
        profile_ms={1: 1.0},
    )


def plan(worker_id: str, agent_id: str, *variants: str, core: int = 0) -> PlannedWorker:
    return PlannedWorker(
        worker_id=worker_id,
        agent_id=agent_id,
        partition=Partition(device_id="cpu0", kind="cpu", cores=(core,)),
        variants=variants,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reg(clock: FakeClock) -> Registry:
    """Agent a1 with workers a1.w0 (small) and a1.w1 (large); nothing ready yet."""
    r = Registry({"small": variant("small", 0.7), "large": variant("large", 0.95)},
                 heartbeat_interval_s=INTERVAL_S, missed_heartbeats=MISSED)
    r.agent_registered("a1", "host-1", CPU, clock.monotonic())
    r.plan_worker(plan("a1.w0", "a1", "small", core=0))
    r.plan_worker(plan("a1.w1", "a1", "large", core=1))
    return r


def routed(table) -> dict[str, tuple[str, ...]]:
    return {w.worker_id: w.variants for w in table.workers}


def ready(reg: Registry, worker_id: str, clock: FakeClock) -> bool:
    return reg.worker_ready(worker_id, pid=100, latency={"small": (1.0, 2.0)}, now=clock.monotonic())


def test_first_table_lists_every_model_and_no_worker(reg: Registry) -> None:
    table = reg.routing_table()
    assert table is not None
    assert table.version == 1
    assert [m.name for m in table.models] == ["large", "small"]
    assert table.workers == ()
    assert reg.routing_table() is None  # nothing changed since
    assert reg.current_table() == table


def test_only_ready_workers_are_routed(reg: Registry, clock: FakeClock) -> None:
    first = reg.routing_table()
    reg.worker_started("a1.w0", pid=100)
    reg.worker_started("a1.w1", pid=101)
    assert reg.routing_table() is None  # started is not ready

    assert ready(reg, "a1.w0", clock)
    table = reg.routing_table()
    assert table is not None and table.version > first.version
    assert table.workers == (WorkerRoute(worker_id="a1.w0", variants=("small",), latency_ms={"small": (1.0, 2.0)},
                                         agent_id="a1"),)


def test_ready_again_is_a_heartbeat_not_a_new_table(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w0", clock)
    table = reg.routing_table()
    for _ in range(3):
        clock.advance(INTERVAL_S)
        assert reg.beat("agent", "a1", clock.monotonic())
        ready(reg, "a1.w0", clock)
        assert reg.routing_table() is None
    assert reg.current_table() == table


def test_a_retired_worker_falling_silent_is_not_reported_lost(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w0", clock)
    ready(reg, "a1.w1", clock)
    reg.retire("a1.w0", WorkerState.STOPPING)  # a re-plan asked it to exit: silence is expected
    for _ in range(3):
        clock.advance(INTERVAL_S)
        reg.beat("agent", "a1", clock.monotonic())
    assert reg.expire(clock.monotonic()) == ["worker:a1.w1"]  # the one still in service is lost
    assert reg.workers["a1.w0"].state == WorkerState.STOPPING
    assert reg.workers["a1.w1"].state == WorkerState.LOST


def test_unknown_worker_ready_is_refused_and_changes_nothing(reg: Registry, clock: FakeClock) -> None:
    reg.routing_table()
    assert not ready(reg, "elsewhere.w9", clock)
    assert reg.routing_table() is None
    assert "elsewhere.w9" not in reg.workers


def test_worker_that_stops_heartbeating_drops_out_after_the_window(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w0", clock)
    ready(reg, "a1.w1", clock)
    before = reg.routing_table()
    assert set(routed(before)) == {"a1.w0", "a1.w1"}

    for _ in range(2):  # w1 and the agent keep beating, w0 is silent
        clock.advance(INTERVAL_S)
        ready(reg, "a1.w1", clock)
        reg.beat("agent", "a1", clock.monotonic())
    assert reg.expire(clock.monotonic()) == []  # silent exactly the window: not yet lost
    assert reg.routing_table() is None

    clock.advance(0.01)
    assert reg.expire(clock.monotonic()) == ["worker:a1.w0"]
    after = reg.routing_table()
    assert after is not None and after.version > before.version
    assert routed(after) == {"a1.w1": ("large",)}
    assert reg.workers["a1.w0"].state == "lost"

    ready(reg, "a1.w0", clock)  # it comes back
    assert set(routed(reg.routing_table())) == {"a1.w0", "a1.w1"}


def test_lost_agent_marks_its_workers_lost(reg: Registry, clock: FakeClock) -> None:
    reg.agent_registered("a2", "host-2", CPU, clock.monotonic())
    reg.plan_worker(plan("a2.w0", "a2", "small"))
    for worker_id in ("a1.w0", "a1.w1", "a2.w0"):
        ready(reg, worker_id, clock)
    reg.routing_table()

    clock.advance(WINDOW_S)
    for worker_id in ("a1.w0", "a1.w1", "a2.w0"):
        ready(reg, worker_id, clock)  # the workers still beat; agent a1 does not
    reg.beat("agent", "a2", clock.monotonic())
    clock.advance(0.5)

    assert reg.expire(clock.monotonic()) == ["agent:a1"]
    assert not reg.agent_alive("a1", clock.monotonic())
    assert reg.agent_alive("a2", clock.monotonic())
    assert {w: r.state for w, r in reg.workers.items()} == {"a1.w0": "lost", "a1.w1": "lost", "a2.w0": "ready"}
    assert routed(reg.routing_table()) == {"a2.w0": ("small",)}
    agents, _, _ = reg.status(clock.monotonic())
    assert {a.agent_id: a.alive for a in agents} == {"a1": False, "a2": True}


def test_worker_of_a_lost_agent_is_not_routed_until_the_agent_returns(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w0", clock)
    reg.routing_table()
    clock.advance(WINDOW_S)
    ready(reg, "a1.w0", clock)
    clock.advance(0.5)
    assert reg.expire(clock.monotonic()) == ["agent:a1"]
    assert routed(reg.routing_table()) == {}

    ready(reg, "a1.w0", clock)  # the worker's next periodic WorkerReady
    table = reg.routing_table()
    assert table is None or routed(table) == {}


def test_agent_registering_again_is_alive_again(reg: Registry, clock: FakeClock) -> None:
    clock.advance(WINDOW_S + 1)
    assert reg.expire(clock.monotonic()) == ["agent:a1"]
    reg.agent_registered("a1", "host-1", CPU, clock.monotonic())
    assert reg.agent_alive("a1", clock.monotonic())
    assert reg.expire(clock.monotonic()) == []


def test_crashed_worker_drops_out_and_is_not_reported_lost_later(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w0", clock)
    reg.routing_table()
    reg.worker_down("a1.w0", "crashed", restarts=2)
    assert routed(reg.routing_table()) == {}
    _, workers, _ = reg.status(clock.monotonic())
    assert {(w.worker_id, w.state, w.restarts) for w in workers} >= {("a1.w0", "crashed", 2)}
    clock.advance(WINDOW_S * 10)
    reg.beat("agent", "a1", clock.monotonic())
    assert reg.expire(clock.monotonic()) == []


def test_replanned_worker_starts_over_but_the_same_plan_keeps_its_state(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w0", clock)
    reg.plan_worker(plan("a1.w0", "a1", "small", core=0))
    assert reg.workers["a1.w0"].state == "ready"
    reg.plan_worker(plan("a1.w0", "a1", "small", "large", core=0))
    assert reg.workers["a1.w0"].state == "starting"


def test_status_shows_models_ready_only_while_served(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w1", clock)
    _, workers, models = reg.status(clock.monotonic())
    assert {m.name: (m.state, m.workers) for m in models} == {
        "large": ("READY", ("a1.w1",)),
        "small": ("UNAVAILABLE", ()),
    }
    assert [(w.worker_id, w.state) for w in workers] == [("a1.w0", "starting"), ("a1.w1", "ready")]
    # An unavailable model says why: placed on a worker still starting, or placed nowhere.
    reasons = {m.name: m.reason for m in models}
    assert reasons == {"large": "", "small": "placed on a1.w0, not ready yet"}
    reg.retire("a1.w0", WorkerState.STOPPING)
    _, _, models = reg.status(clock.monotonic())
    assert {m.name: m.reason for m in models}["small"] == "not placed: the current plan runs it on no worker"


def test_a_model_on_a_lost_agent_says_so_rather_than_not_ready_yet(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w1", clock)
    clock.advance(WINDOW_S * 2)  # a1 and its workers fall silent
    reg.expire(clock.monotonic())
    assert not reg.agent_alive("a1", clock.monotonic())
    _, _, models = reg.status(clock.monotonic())
    assert {m.name: m.reason for m in models} == {"large": "placed on a1.w1, whose agent a1 is lost",
                                                  "small": "placed on a1.w0, whose agent a1 is lost"}


def test_status_shows_what_runs_a_workers_variants_bounded_to_its_plan(reg: Registry, clock: FakeClock) -> None:
    note = "onnx (converted from TorchScript: 1.30x at batch 1, 1.50x at batch 8, outputs within 1e-07)"
    assert reg.worker_ready("a1.w0", pid=100, latency={"small": (1.0,)}, now=clock.monotonic(),
                            runtimes={"small": note, "invented": note, **{f"x{i}": "y" for i in range(1000)}})
    assert reg.worker_ready("a1.w1", pid=101, latency={"large": (1.0,)}, now=clock.monotonic(),
                            runtimes={"large": "z" * 100_000})
    _, workers, _ = reg.status(clock.monotonic())
    assert {w.worker_id: w.runtimes for w in workers} == {"a1.w0": {"small": note}, "a1.w1": {"large": "z" * 300}}


def test_heartbeat_from_unregistered_peer_is_refused(reg: Registry, clock: FakeClock) -> None:
    now = clock.monotonic()
    assert reg.beat("agent", "a1", now)
    assert reg.beat("worker", "a1.w0", now)
    assert not reg.beat("agent", "ghost", now)
    assert not reg.beat("gateway", "g1", now)
    assert not reg.beat("cli", "x", now)


def test_gateway_registration_and_endpoints(reg: Registry, clock: FakeClock) -> None:
    now = clock.monotonic()
    assert reg.gateway_registered("g2", "tcp://h2:7000", now) is True
    assert reg.gateway_registered("g1", "tcp://h1:7000", now) is True
    assert reg.gateway_registered("g1", "tcp://h1:7000", now) is False  # same endpoint again
    assert reg.gateway_endpoints() == ("tcp://h1:7000", "tcp://h2:7000")
    assert reg.gateway_registered("g1", "tcp://h1:7001", now) is True  # moved
    assert reg.gateway_endpoints() == ("tcp://h1:7001", "tcp://h2:7000")
    assert reg.beat("gateway", "g1", now)


def test_silent_gateway_must_register_again_and_stays_dialled_until_forgotten(reg: Registry, clock: FakeClock) -> None:
    """A gateway silent to the controller may be serving (the controller may be the one cut off):
    workers keep its address until it is forgotten; the gateway itself must register again."""
    reg.gateway_registered("g1", "tcp://h1:7000", clock.monotonic())
    reg.gateway_registered("g2", "tcp://h2:7000", clock.monotonic())
    clock.advance(WINDOW_S)
    reg.beat("gateway", "g2", clock.monotonic())
    reg.beat("agent", "a1", clock.monotonic())
    clock.advance(0.5)

    assert reg.expire(clock.monotonic()) == ["gateway:g1"]
    assert reg.gateway_endpoints() == ("tcp://h1:7000", "tcp://h2:7000"), "workers keep dialling it"
    assert not reg.beat("gateway", "g1", clock.monotonic())
    assert reg.forget_lost_gateways(clock.monotonic() + 299.0, after_s=300.0) == []
    reg.beat("gateway", "g2", clock.monotonic() + 300.0)
    assert reg.forget_lost_gateways(clock.monotonic() + 300.0, after_s=300.0) == ["g1"]
    assert reg.gateway_endpoints() == ("tcp://h2:7000",)
    assert reg.gateway_registered("g1", "tcp://h1:7000", clock.monotonic() + 301.0)
    assert reg.beat("gateway", "g1", clock.monotonic() + 301.0)


# --- agents: loss, suspicion, registrations by instance, leaving, forgetting ----------------------


def test_a_lost_agent_must_register_again_its_heartbeats_are_refused(reg: Registry, clock: FakeClock) -> None:
    clock.advance(WINDOW_S + 0.1)
    assert reg.expire(clock.monotonic()) == ["agent:a1"]
    assert not reg.beat("agent", "a1", clock.monotonic()), "a heartbeat does not bring a lost agent back"
    assert not reg.agent_alive("a1", clock.monotonic())


def test_a_repeat_of_one_instances_registration_changes_nothing(clock: FakeClock) -> None:
    r = Registry({"small": variant("small")}, heartbeat_interval_s=INTERVAL_S, missed_heartbeats=MISSED)
    assert r.agent_registered("a1", "host-1", CPU, clock.monotonic(), instance="i1") is Joined.NEW
    for _ in range(80):  # a backlog of one process's registrations replayed
        assert r.agent_registered("a1", "host-1", CPU, clock.monotonic(), instance="i1") is Joined.REPEAT
    assert r.agents["a1"].joins == 1
    clock.advance(WINDOW_S + 0.1)
    r.expire(clock.monotonic())
    assert r.agent_registered("a1", "host-1", CPU, clock.monotonic(), instance="i1") is Joined.RETURNED
    assert r.agent_registered("a1", "host-1", CPU, clock.monotonic(), instance="i2") is Joined.RESTARTED
    assert r.agents["a1"].joins == 3


def test_a_silent_worker_makes_its_agent_suspect_until_it_heartbeats(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w0", clock)
    clock.advance(WINDOW_S * 0.75)
    reg.beat("agent", "a1", clock.monotonic())  # the agent beat last; the worker fell silent before it
    clock.advance(WINDOW_S * 0.5)
    assert reg.expire(clock.monotonic()) == ["worker:a1.w0"]
    assert reg.agent_alive("a1", clock.monotonic()) and "a1" not in reg.placeable(clock.monotonic())
    reg.beat("agent", "a1", clock.monotonic())
    assert "a1" in reg.placeable(clock.monotonic())


def test_a_worker_replaced_while_its_agent_was_lost_is_outside_the_plan(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w0", clock)
    clock.advance(WINDOW_S + 0.1)
    reg.expire(clock.monotonic())
    reg.drop_from_plan("a1.w0")
    reg.agent_registered("a1", "host-1", CPU, clock.monotonic(), instance="back")
    assert not ready(reg, "a1.w0", clock), "its heartbeats do not route it again"
    assert [w.plan.worker_id for w in reg.planned_workers_of("a1")] == ["a1.w1"]


def test_lost_agents_are_listed_until_forgotten_then_gone_with_their_workers(reg: Registry, clock: FakeClock) -> None:
    clock.advance(WINDOW_S + 0.1)
    reg.expire(clock.monotonic())
    lost_at = clock.monotonic()
    agents, workers, _ = reg.status(clock.monotonic(), forget_after_s=300.0)
    assert [(a.agent_id, a.alive, a.forget_in_s) for a in agents] == [("a1", False, pytest.approx(300.0))]
    assert {w.state for w in workers} == {"lost"}
    clock.advance(299.0)
    assert reg.forget_lost(clock.monotonic(), 300.0) == ([], [])
    clock.advance(1.5)
    assert reg.forget_lost(clock.monotonic(), 300.0) == (["a1"], ["a1.w0", "a1.w1"])
    agents, workers, _ = reg.status(clock.monotonic(), forget_after_s=300.0)
    assert agents == () and workers == ()
    assert clock.monotonic() - lost_at == pytest.approx(300.5)


def test_an_agent_that_leaves_takes_its_workers_out_of_routing_at_once(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w0", clock)
    assert routed(reg.routing_table()) == {"a1.w0": ("small",)}
    assert sorted(reg.agent_left("a1")) == ["a1.w0", "a1.w1"]
    assert routed(reg.routing_table()) == {}
    assert reg.agents == {} and reg.workers == {}


# --- publication held while the view is incomplete -------------------------------------------


def two_agents(clock: FakeClock) -> Registry:
    """a1 and a2, one ready worker each, published."""
    r = Registry({"small": variant("small", 0.7)}, heartbeat_interval_s=INTERVAL_S, missed_heartbeats=MISSED)
    for agent, core in (("a1", 0), ("a2", 1)):
        r.agent_registered(agent, agent, CPU, clock.monotonic(), instance=agent)
        r.plan_worker(plan(f"{agent}.w0", agent, "small", core=core))
        ready(r, f"{agent}.w0", clock)
    r.routing_table()
    return r


def beat_all(r: Registry, clock: FakeClock, agents=("a1", "a2")) -> None:
    for agent in agents:
        r.beat("agent", agent, clock.monotonic())
        ready(r, f"{agent}.w0", clock)


def test_one_agent_lost_of_two_leaves_routing_at_once_nothing_is_held(clock: FakeClock) -> None:
    r = two_agents(clock)
    for _ in range(3):
        clock.advance(1.0)
        beat_all(r, clock, agents=("a2",))
    assert "agent:a1" in r.expire(clock.monotonic())
    assert not r.routing_held(clock.monotonic())
    assert routed(r.routing_table()) == {"a2.w0": ("small",)}


def test_every_agent_lost_holds_the_table_until_they_serve_again(clock: FakeClock) -> None:
    """The controller hears from no agent (it is the one cut off): the gateways keep the table they
    have; after the heal the same worker processes are routed again as their agents register,
    without a table that goes out in between without them."""
    r = two_agents(clock)
    published = r.current_table()
    clock.advance(WINDOW_S + 0.5)
    assert {"agent:a1", "agent:a2"} <= set(r.expire(clock.monotonic()))
    assert r.routing_held(clock.monotonic())
    clock.advance(30.0)  # however long the cut lasts
    assert r.routing_held(clock.monotonic())
    # heal: a1 registers again with its worker still running; a2 not yet
    assert r.agent_registered("a1", "a1", CPU, clock.monotonic(), instance="a1") is Joined.RETURNED
    r.worker_started("a1.w0", pid=100, now=clock.monotonic())
    assert r.workers["a1.w0"].state == "ready", "the same process serves again at once"
    assert r.routing_held(clock.monotonic()), "a2's worker is still awaited"
    clock.advance(0.5)
    r.agent_registered("a2", "a2", CPU, clock.monotonic(), instance="a2")
    r.worker_started("a2.w0", pid=100, now=clock.monotonic())
    assert not r.routing_held(clock.monotonic())
    table = r.routing_table()
    assert table is None or routed(table) == routed(published)
    assert routed(r.current_table()) == routed(published)


def test_an_agent_that_does_not_come_back_is_waited_for_only_hold_s(clock: FakeClock) -> None:
    r = two_agents(clock)
    clock.advance(WINDOW_S + 0.5)
    r.expire(clock.monotonic())
    r.agent_registered("a1", "a1", CPU, clock.monotonic(), instance="a1")
    r.worker_started("a1.w0", pid=100, now=clock.monotonic())
    clock.advance(r.hold_s - 0.1)
    beat_all(r, clock, agents=("a1",))
    assert r.routing_held(clock.monotonic())
    clock.advance(0.2)
    assert not r.routing_held(clock.monotonic())
    assert routed(r.routing_table()) == {"a1.w0": ("small",)}


def test_a_restored_plan_holds_the_table_until_its_workers_report(clock: FakeClock) -> None:
    r = Registry({"small": variant("small", 0.7)}, heartbeat_interval_s=INTERVAL_S, missed_heartbeats=MISSED)
    r.plan_worker(plan("a1.w0", "a1", "small"))  # restored from the store; nothing heard yet
    r.routing_table()
    r.await_restored(clock.monotonic())
    assert r.routing_held(clock.monotonic())
    clock.advance(0.5)
    r.agent_registered("a1", "a1", CPU, clock.monotonic(), instance="a1")
    r.worker_started("a1.w0", pid=100, now=clock.monotonic())  # never seen: starting until it reports
    assert r.routing_held(clock.monotonic())
    ready(r, "a1.w0", clock)
    assert not r.routing_held(clock.monotonic())
    assert routed(r.routing_table()) == {"a1.w0": ("small",)}


def test_a_revoked_agent_is_lost_at_once_not_a_heartbeat_timeout_later(clock: FakeClock) -> None:
    r = two_agents(clock)
    assert r.revoked(["a1"], clock.monotonic()) == ["a1"]
    assert not r.agent_alive("a1", clock.monotonic())
    assert r.workers["a1.w0"].state == "lost"
    assert routed(r.routing_table()) == {"a2.w0": ("small",)}
    assert not r.beat("agent", "a1", clock.monotonic()), "its heartbeats do not bring it back"
    assert r.revoked(["a1"], clock.monotonic()) == [], "reported once"
    assert not r.routing_held(clock.monotonic())


def test_revoking_every_agent_is_not_taken_for_this_controller_being_cut_off(clock: FakeClock) -> None:
    r = two_agents(clock)
    r.revoked(["a1", "a2"], clock.monotonic())
    clock.advance(WINDOW_S + 0.5)
    r.expire(clock.monotonic())
    assert not r.routing_held(clock.monotonic()), "the table goes out without the revoked agents' workers"
    assert routed(r.routing_table()) == {}
