"""The registry's routing table, liveness and gateways, driven by a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.placement import PlannedWorker
from controller.registry import Registry
from controller.repository import Variant
from mesh.clock import FakeClock
from protocol.types import DeviceInfo, Partition, TensorSpec, WorkerRoute

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
    assert table.workers == (WorkerRoute(worker_id="a1.w0", variants=("small",), latency_ms={"small": (1.0, 2.0)}),)


def test_ready_again_is_a_heartbeat_not_a_new_table(reg: Registry, clock: FakeClock) -> None:
    ready(reg, "a1.w0", clock)
    table = reg.routing_table()
    for _ in range(3):
        clock.advance(INTERVAL_S)
        assert reg.beat("agent", "a1", clock.monotonic())
        ready(reg, "a1.w0", clock)
        assert reg.routing_table() is None
    assert reg.current_table() == table


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


def test_silent_gateway_is_dropped_and_must_register_again(reg: Registry, clock: FakeClock) -> None:
    reg.gateway_registered("g1", "tcp://h1:7000", clock.monotonic())
    reg.gateway_registered("g2", "tcp://h2:7000", clock.monotonic())
    clock.advance(WINDOW_S)
    reg.beat("gateway", "g2", clock.monotonic())
    reg.beat("agent", "a1", clock.monotonic())
    clock.advance(0.5)

    assert reg.expire(clock.monotonic()) == ["gateway:g1"]
    assert reg.gateway_endpoints() == ("tcp://h2:7000",)
    assert not reg.beat("gateway", "g1", clock.monotonic())
