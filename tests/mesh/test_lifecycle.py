"""A role actor runs under a supervisor: restarted after a crash, escalated past the limit."""

from __future__ import annotations

import asyncio

import pytest

from mesh.actor import Actor, ActorCrashed
from mesh.lifecycle import run_actor
from mesh.supervisor import SupervisorEscalated


class Fragile(Actor):
    """Crashes on "boom"; records each start."""

    starts: list[int] = []

    def __init__(self) -> None:
        super().__init__(name="fragile")

    async def on_start(self) -> None:
        Fragile.starts.append(len(Fragile.starts) + 1)

    async def handle(self, msg):
        if msg == "boom":
            raise ActorCrashed("boom")
        return msg


async def wait_for_starts(n: int) -> None:
    async def poll() -> None:
        while len(Fragile.starts) < n:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 5)


async def test_a_crashed_role_actor_is_restarted_and_stop_ends_the_run() -> None:
    Fragile.starts = []
    actors: list[Actor] = []
    stop = asyncio.Event()

    def make(ctx) -> Actor:
        actor = Fragile()
        actors.append(actor)
        return actor

    run = asyncio.create_task(run_actor(make, stop, lambda a: f"started {a.name}"))
    await wait_for_starts(1)
    actors[-1].tell("boom")
    await wait_for_starts(2)
    assert await actors[-1].ask("still here", timeout_s=2) == "still here"
    stop.set()
    await asyncio.wait_for(run, 5)
    assert all(a.stopped for a in actors)


async def test_crashes_past_the_limit_escalate_out_of_the_run() -> None:
    Fragile.starts = []
    actors: list[Actor] = []

    def make(ctx) -> Actor:
        actor = Fragile()
        actors.append(actor)
        return actor

    run = asyncio.create_task(run_actor(make, asyncio.Event(), lambda a: "", max_restarts=2, within_s=60))
    for n in range(1, 4):
        await wait_for_starts(n)
        actors[-1].tell("boom")
    with pytest.raises(SupervisorEscalated):
        await asyncio.wait_for(run, 5)
