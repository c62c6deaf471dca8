"""Supervision: restart on crash, intensity limit, escalation; RestartIntensity properties."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.actor import Actor, ActorCrashed, ActorError, MailboxClosed
from mesh.clock import FakeClock
from mesh.supervisor import (
    RestartIntensity,
    Supervisor,
    SupervisorEscalated,
    SupervisorStatistics,
)

BOUND_S = 2.0


class Counter(Actor):
    """Counts ``"inc"``; ``"get"`` answers the count; ``"crash"`` (told) crashes it.

    ``log`` is shared between instances so tests see every start and stop in order.
    """

    def __init__(self, name: str, log: list[str], started: asyncio.Event | None = None) -> None:
        super().__init__(name=name)
        self.log = log
        self.count = 0
        self.started_event = started

    async def on_start(self) -> None:
        self.log.append(f"start {self.name}")
        if self.started_event is not None:
            self.started_event.set()

    async def handle(self, msg: Any) -> Any:
        match msg:
            case "inc":
                self.count += 1
                return self.count
            case "get":
                return self.count
            case "crash":
                raise ActorCrashed(f"{self.name} crashed")
            case _:
                raise ValueError(msg)

    async def on_stop(self) -> None:
        self.log.append(f"stop {self.name}")


class Restarts:
    """A factory that builds a fresh Counter each time and signals each (re)start."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.built = 0
        self.started = asyncio.Event()

    def __call__(self) -> Counter:
        self.built += 1
        self.started = asyncio.Event()
        return Counter(self.name, self.log, self.started)

    async def wait_started(self) -> None:
        await asyncio.wait_for(self.started.wait(), BOUND_S)


async def crash_and_wait_restart(sup: Supervisor, factory: Restarts) -> Actor:
    old = sup.child(factory.name)
    built = factory.built
    old.tell("crash")
    await asyncio.wait_for(old.wait_stopped(), BOUND_S)
    assert factory.built == built + 1
    await factory.wait_started()
    new = sup.child(factory.name)
    assert new is not old
    return new


async def test_crashed_child_is_restarted_and_serves_again() -> None:
    log: list[str] = []
    clock = FakeClock()
    sup = Supervisor(max_restarts=3, within_s=10.0, clock=clock)
    counter = Restarts("counter", log)
    sup.add("counter", counter)
    await asyncio.wait_for(sup.start(), BOUND_S)

    first = sup.child("counter")
    assert await first.ask("inc", timeout_s=BOUND_S) == 1
    second = await crash_and_wait_restart(sup, counter)
    assert isinstance(first.failure, ActorCrashed)
    with pytest.raises(MailboxClosed):
        first.tell("inc")
    # A fresh instance: state starts over, and it answers.
    assert await second.ask("inc", timeout_s=BOUND_S) == 1
    assert sup.statistics() == SupervisorStatistics(restarts=(("counter", 1),), escalated=False)

    await asyncio.wait_for(sup.stop(), BOUND_S)
    assert second.stopped
    await asyncio.wait_for(sup.wait(), BOUND_S)  # a plain stop is not an error


async def test_restart_leaves_siblings_alone() -> None:
    log: list[str] = []
    sup = Supervisor(clock=FakeClock())
    a, b = Restarts("a", log), Restarts("b", log)
    sup.add("a", a)
    sup.add("b", b)
    await sup.start()
    b_before = sup.child("b")
    await b_before.ask("inc", timeout_s=BOUND_S)
    await crash_and_wait_restart(sup, a)
    assert sup.child("b") is b_before
    assert await b_before.ask("get", timeout_s=BOUND_S) == 1
    await sup.stop()


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    log: list[str] = []
    sup = Supervisor(clock=FakeClock())
    for name in ("one", "two", "three"):
        sup.add(name, Restarts(name, log))
    await asyncio.wait_for(sup.start(), BOUND_S)
    await asyncio.wait_for(sup.stop(), BOUND_S)
    assert log == [
        "start one",
        "start two",
        "start three",
        "stop three",
        "stop two",
        "stop one",
    ]


async def test_crashes_beyond_intensity_escalate_and_stop_everyone() -> None:
    log: list[str] = []
    clock = FakeClock()
    escalations: list[SupervisorEscalated] = []
    sup = Supervisor(max_restarts=2, within_s=10.0, clock=clock, on_escalate=escalations.append)
    flaky, steady = Restarts("flaky", log), Restarts("steady", log)
    sup.add("steady", steady)
    sup.add("flaky", flaky)
    await sup.start()

    for _ in range(2):
        clock.advance(1.0)
        await crash_and_wait_restart(sup, flaky)
    clock.advance(1.0)
    sup.child("flaky").tell("crash")

    with pytest.raises(SupervisorEscalated) as info:
        await asyncio.wait_for(sup.wait(), BOUND_S)
    assert isinstance(info.value.__cause__, ActorCrashed)
    assert sup.escalated is info.value
    assert escalations == [info.value]
    assert flaky.built == 3, "no restart after the limit"
    assert sup.child("steady").stopped
    assert sup.child("flaky").stopped
    assert sup.statistics().escalated
    await asyncio.wait_for(sup.stop(), BOUND_S)  # idempotent after escalation


async def test_restarts_spread_beyond_the_window_are_allowed() -> None:
    log: list[str] = []
    clock = FakeClock()
    sup = Supervisor(max_restarts=2, within_s=10.0, clock=clock)
    flaky = Restarts("flaky", log)
    sup.add("flaky", flaky)
    await sup.start()
    for _ in range(6):
        clock.advance(5.0)  # two restarts per 10 s window, never three
        child = await crash_and_wait_restart(sup, flaky)
        assert await child.ask("inc", timeout_s=BOUND_S) == 1
    assert sup.escalated is None
    assert sup.statistics().restarts == (("flaky", 6),)
    await sup.stop()


async def test_failing_restart_counts_towards_intensity() -> None:
    clock = FakeClock()
    builds: list[int] = []
    ready = asyncio.Event()

    class BreaksOnRestart(Counter):
        async def on_start(self) -> None:
            if len(builds) > 1:
                raise OSError("resource gone")
            await super().on_start()

    def factory() -> Actor:
        builds.append(1)
        return BreaksOnRestart("fragile", [], ready)

    sup = Supervisor(max_restarts=3, within_s=60.0, clock=clock)
    sup.add("fragile", factory)
    await sup.start()
    await asyncio.wait_for(ready.wait(), BOUND_S)
    sup.child("fragile").tell("crash")
    with pytest.raises(SupervisorEscalated):
        await asyncio.wait_for(sup.wait(), BOUND_S)
    assert len(builds) == 1 + 3


async def test_start_failure_stops_children_already_started() -> None:
    log: list[str] = []

    class Refuses(Counter):
        async def on_start(self) -> None:
            raise OSError("address in use")

    sup = Supervisor(clock=FakeClock())
    sup.add("first", Restarts("first", log))
    sup.add("broken", lambda: Refuses("broken", log))
    with pytest.raises(OSError, match="address in use"):
        await asyncio.wait_for(sup.start(), BOUND_S)
    assert log == ["start first", "stop first"]


async def test_add_rules() -> None:
    sup = Supervisor(clock=FakeClock())
    sup.add("x", Restarts("x", []))
    with pytest.raises(ActorError):
        sup.add("x", Restarts("x", []))
    with pytest.raises(KeyError):
        sup.child("x")  # not started yet
    await sup.start()
    with pytest.raises(ActorError):
        sup.add("y", Restarts("y", []))
    await sup.stop()


async def test_stop_during_pending_restart_does_not_leave_a_running_child() -> None:
    log: list[str] = []
    entered = asyncio.Event()
    release = asyncio.Event()
    builds = 0

    class SlowRestart(Counter):
        async def on_start(self) -> None:
            if builds > 1:
                entered.set()
                await release.wait()
            await super().on_start()

    def factory() -> Actor:
        nonlocal builds
        builds += 1
        return SlowRestart("slow", log)

    sup = Supervisor(clock=FakeClock())
    sup.add("slow", factory)
    await sup.start()
    sup.child("slow").tell("crash")
    await asyncio.wait_for(entered.wait(), BOUND_S)
    await asyncio.wait_for(sup.stop(), BOUND_S)
    assert sup.child("slow").stopped
    assert sup.escalated is None


# -- RestartIntensity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_restarts", "within_s", "times", "expected"),
    [
        (3, 10.0, [0, 1, 2, 3], [True, True, True, False]),
        (3, 10.0, [0, 1, 2, 10], [True, True, True, True]),  # the first left the window
        (3, 10.0, [0, 1, 2, 9.99], [True, True, True, False]),
        (1, 5.0, [0, 4, 5, 6, 10], [True, False, True, False, True]),
        (0, 5.0, [0, 100], [False, False]),  # no restarts at all
        (2, 1.0, [0, 0, 0, 0.5, 1.0, 1.0], [True, True, False, False, True, True]),
    ],
)
def test_restart_intensity_table(
    max_restarts: int, within_s: float, times: list[float], expected: list[bool]
) -> None:
    intensity = RestartIntensity(max_restarts, within_s)
    assert [intensity.record(t) for t in times] == expected


def test_restart_intensity_refused_restarts_are_not_counted() -> None:
    intensity = RestartIntensity(1, 10.0)
    assert intensity.record(0.0)
    # Refusals at 5 and 9 must not push the window: at 10 the restart at 0 has expired.
    assert not intensity.record(5.0)
    assert not intensity.record(9.0)
    assert intensity.record(10.0)
    assert intensity.recent(10.0) == 1
    intensity.reset()
    assert intensity.recent(10.0) == 0


def test_restart_intensity_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RestartIntensity(-1, 1.0)
    with pytest.raises(ValueError):
        RestartIntensity(1, 0.0)


@given(
    max_restarts=st.integers(min_value=0, max_value=6),
    within_s=st.floats(min_value=0.1, max_value=100.0),
    gaps=st.lists(st.floats(min_value=0.0, max_value=50.0), max_size=60),
)
def test_restart_intensity_never_allows_more_than_max_in_any_window(
    max_restarts: int, within_s: float, gaps: list[float]
) -> None:
    intensity = RestartIntensity(max_restarts, within_s)
    now = 0.0
    allowed: list[float] = []
    for gap in gaps:
        now += gap
        expected_room = sum(1 for t in allowed if now - t < within_s) < max_restarts
        granted = intensity.record(now)
        # Never too many, and never refused while there is room.
        assert granted == expected_room
        if granted:
            allowed.append(now)
    for i, start in enumerate(allowed):
        in_window = [t for t in allowed[i:] if t - start < within_s]
        assert len(in_window) <= max_restarts
