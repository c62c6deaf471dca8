"""Actor lifecycle, ask/tell semantics, crashes and mailbox bounds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mesh.actor import (
    Actor,
    ActorCrashed,
    ActorError,
    ActorStatistics,
    AskTimeout,
    MailboxClosed,
    MailboxFull,
)

BOUND_S = 2.0


class Recorder(Actor):
    """Records its lifecycle; ``("echo", x)`` answers x, ``("fail", exc)`` raises exc,
    ``("block", event)`` waits on the event, ``("entered", event)`` sets it."""

    def __init__(self, *, name: str = "rec", mailbox_size: int = 1000) -> None:
        super().__init__(name=name, mailbox_size=mailbox_size)
        self.events: list[Any] = []
        self.blocked = asyncio.Event()

    async def on_start(self) -> None:
        self.events.append("start")

    async def handle(self, msg: Any) -> Any:
        kind, arg = msg
        self.events.append(("handle", kind))
        match kind:
            case "echo":
                return arg
            case "fail":
                raise arg
            case "block":
                self.blocked.set()
                await arg.wait()
                return "unblocked"
            case "stop_self":
                await self.stop()
                return "unreachable"
            case _:
                raise ValueError(f"unknown message {kind}")

    async def on_stop(self) -> None:
        self.events.append("stop")


async def started(actor: Actor) -> Actor:
    await asyncio.wait_for(actor.start(), BOUND_S)
    return actor


async def test_lifecycle_runs_start_handle_stop_in_order() -> None:
    actor = await started(Recorder())
    assert actor.running
    actor.tell(("echo", 1))
    assert await actor.ask(("echo", 2), timeout_s=BOUND_S) == 2
    await asyncio.wait_for(actor.stop(), BOUND_S)
    assert actor.events == ["start", ("handle", "echo"), ("handle", "echo"), "stop"]
    assert actor.stopped
    assert actor.failure is None


async def test_stop_is_idempotent_and_runs_on_stop_once() -> None:
    actor = await started(Recorder())
    await asyncio.wait_for(asyncio.gather(actor.stop(), actor.stop()), BOUND_S)
    await asyncio.wait_for(actor.stop(), BOUND_S)
    assert actor.events.count("stop") == 1


async def test_ask_returns_handle_result_in_order() -> None:
    actor = await started(Recorder())
    answers = await asyncio.wait_for(
        asyncio.gather(*(actor.ask(("echo", i), timeout_s=BOUND_S) for i in range(20))), BOUND_S
    )
    assert answers == list(range(20))
    await actor.stop()


async def test_ask_exception_reaches_asker_and_actor_keeps_serving() -> None:
    actor = await started(Recorder())
    with pytest.raises(KeyError, match="missing"):
        await actor.ask(("fail", KeyError("missing")), timeout_s=BOUND_S)
    assert await actor.ask(("echo", "still here"), timeout_s=BOUND_S) == "still here"
    assert actor.failure is None
    await actor.stop()


async def test_ask_timeout_raises_ask_timeout_which_is_a_timeout_error() -> None:
    actor = await started(Recorder())
    release = asyncio.Event()
    with pytest.raises(AskTimeout) as info:
        await actor.ask(("block", release), timeout_s=0.05)
    assert isinstance(info.value, TimeoutError)
    release.set()
    assert await actor.ask(("echo", "after"), timeout_s=BOUND_S) == "after"
    await actor.stop()


async def test_timeout_error_raised_by_handle_is_not_an_ask_timeout() -> None:
    actor = await started(Recorder())
    with pytest.raises(TimeoutError) as info:
        await actor.ask(("fail", TimeoutError("from handle")), timeout_s=BOUND_S)
    assert not isinstance(info.value, AskTimeout)
    await actor.stop()


async def test_abandoned_ask_is_dropped_unhandled() -> None:
    actor = await started(Recorder())
    release = asyncio.Event()
    blocker = asyncio.create_task(actor.ask(("block", release), timeout_s=BOUND_S))
    await asyncio.wait_for(actor.blocked.wait(), BOUND_S)
    with pytest.raises(AskTimeout):
        await actor.ask(("echo", "late"), timeout_s=0.01)
    release.set()
    assert await asyncio.wait_for(blocker, BOUND_S) == "unblocked"
    assert await actor.ask(("echo", "next"), timeout_s=BOUND_S) == "next"
    assert actor.events.count(("handle", "echo")) == 1
    assert actor.statistics().dropped == 1
    await actor.stop()


async def test_tell_and_ask_to_stopped_actor_raise_mailbox_closed() -> None:
    actor = await started(Recorder())
    await actor.stop()
    with pytest.raises(MailboxClosed):
        actor.tell(("echo", 1))
    with pytest.raises(MailboxClosed):
        await actor.ask(("echo", 1), timeout_s=BOUND_S)


async def test_pending_asks_fail_with_mailbox_closed_on_stop() -> None:
    actor = await started(Recorder())
    release = asyncio.Event()
    in_handle = asyncio.create_task(actor.ask(("block", release), timeout_s=BOUND_S))
    await asyncio.wait_for(actor.blocked.wait(), BOUND_S)
    queued = [asyncio.create_task(actor.ask(("echo", i), timeout_s=BOUND_S)) for i in range(3)]
    await asyncio.sleep(0)  # one loop turn: the new tasks run their first step and enqueue
    assert actor.statistics().queued == 3
    await asyncio.wait_for(actor.stop(), BOUND_S)
    results = await asyncio.wait_for(
        asyncio.gather(in_handle, *queued, return_exceptions=True), BOUND_S
    )
    assert all(isinstance(r, MailboxClosed) for r in results), results
    # Nothing queued was handled after the stop began.
    assert actor.events == ["start", ("handle", "block"), "stop"]


async def test_bounded_mailbox_raises_mailbox_full_without_waiting() -> None:
    actor = await started(Recorder(mailbox_size=2))
    release = asyncio.Event()
    blocker = asyncio.create_task(actor.ask(("block", release), timeout_s=BOUND_S))
    await asyncio.wait_for(actor.blocked.wait(), BOUND_S)
    actor.tell(("echo", 1))
    actor.tell(("echo", 2))
    with pytest.raises(MailboxFull):
        actor.tell(("echo", 3))
    with pytest.raises(MailboxFull):
        await actor.ask(("echo", 4), timeout_s=BOUND_S)
    stats = actor.statistics()
    assert stats == ActorStatistics(
        name="rec", queued=2, capacity=2, processed=0, dropped=0, stopped=False
    )
    release.set()
    assert await asyncio.wait_for(blocker, BOUND_S) == "unblocked"
    # The mailbox drains once the handler is free; a full mailbox rejected, never lost.
    assert await actor.ask(("echo", 5), timeout_s=BOUND_S) == 5
    assert actor.statistics().processed == 4
    assert [e for e in actor.events if e != "start"] == [("handle", "block")] + [
        ("handle", "echo")
    ] * 3
    await actor.stop()


async def test_a_told_message_whose_handler_fails_is_dropped_and_the_actor_carries_on() -> None:
    actor = Recorder()
    notified: list[BaseException] = []
    actor.on_failure = lambda who, exc: notified.append(exc)
    await started(actor)
    actor.tell(("fail", ValueError("poison")))
    actor.tell(("fail", OverflowError("more poison")))
    assert await actor.ask(("echo", "after"), timeout_s=BOUND_S) == "after"
    stats = actor.statistics()
    assert (stats.failed, stats.failed_by_type, stats.stopped) == (2, (("tuple", 2),), False)
    assert actor.failure is None and notified == []
    await actor.stop()


async def test_crash_in_tell_stops_actor_records_failure_and_notifies() -> None:
    actor = Recorder()
    notified: list[tuple[Actor, BaseException]] = []
    done = asyncio.Event()

    def on_failure(who: Actor, exc: BaseException) -> None:
        assert who.stopped, "the callback runs once the actor has fully stopped"
        notified.append((who, exc))
        done.set()

    actor.on_failure = on_failure
    await started(actor)
    boom = ActorCrashed("boom")
    actor.tell(("fail", boom))
    await asyncio.wait_for(done.wait(), BOUND_S)
    await asyncio.wait_for(actor.wait_stopped(), BOUND_S)
    assert actor.failure is boom
    assert notified == [(actor, boom)]
    assert actor.events[-1] == "stop"
    with pytest.raises(MailboxClosed):
        actor.tell(("echo", 1))
    await asyncio.wait_for(actor.stop(), BOUND_S)  # stopping a crashed actor is a no-op
    assert actor.events.count("stop") == 1


async def test_crash_fails_asks_queued_behind_it() -> None:
    actor = await started(Recorder())
    release = asyncio.Event()
    actor.tell(("block", release))
    await asyncio.wait_for(actor.blocked.wait(), BOUND_S)
    actor.tell(("fail", ActorCrashed("boom")))
    behind = asyncio.create_task(actor.ask(("echo", 1), timeout_s=BOUND_S))
    await asyncio.sleep(0)  # one loop turn: the ask enqueues behind the crash
    assert actor.statistics().queued == 2
    release.set()
    with pytest.raises(MailboxClosed):
        await asyncio.wait_for(behind, BOUND_S)
    await asyncio.wait_for(actor.wait_stopped(), BOUND_S)


async def test_requested_stop_does_not_call_on_failure() -> None:
    actor = Recorder()
    called: list[BaseException] = []
    actor.on_failure = lambda who, exc: called.append(exc)
    await started(actor)
    await actor.stop()
    assert called == []


async def test_on_start_failure_makes_start_raise_and_actor_stopped() -> None:
    class Broken(Recorder):
        async def on_start(self) -> None:
            raise OSError("port taken")

    actor = Broken()
    with pytest.raises(OSError, match="port taken"):
        await asyncio.wait_for(actor.start(), BOUND_S)
    assert actor.stopped
    assert isinstance(actor.failure, OSError)
    assert "stop" not in actor.events
    with pytest.raises(MailboxClosed):
        actor.tell(("echo", 1))


async def test_start_twice_is_an_error() -> None:
    actor = await started(Recorder())
    with pytest.raises(ActorError):
        await actor.start()
    await actor.stop()
    with pytest.raises(ActorError):
        await actor.start()


async def test_messages_told_before_start_are_handled_after_on_start() -> None:
    actor = Recorder()
    actor.tell(("echo", "early"))
    await started(actor)
    assert await actor.ask(("echo", "late"), timeout_s=BOUND_S) == "late"
    assert actor.events[:2] == ["start", ("handle", "echo")]
    await actor.stop()


async def test_stop_during_on_start_finishes_after_on_start() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    class Slow(Recorder):
        async def on_start(self) -> None:
            entered.set()
            await release.wait()
            await super().on_start()

    actor = Slow()
    starting = asyncio.create_task(actor.start())
    await asyncio.wait_for(entered.wait(), BOUND_S)
    stopping = asyncio.create_task(actor.stop())
    await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    with pytest.raises(MailboxClosed):
        await asyncio.wait_for(starting, BOUND_S)
    await asyncio.wait_for(stopping, BOUND_S)
    assert actor.events == ["start", "stop"]


async def test_actor_can_stop_itself_from_handle() -> None:
    actor = await started(Recorder())
    with pytest.raises(MailboxClosed):
        await actor.ask(("stop_self", None), timeout_s=BOUND_S)
    await asyncio.wait_for(actor.wait_stopped(), BOUND_S)
    assert actor.events[-1] == "stop"
    assert actor.failure is None


async def test_cancelled_stop_caller_does_not_abort_shutdown() -> None:
    release = asyncio.Event()

    class SlowStop(Recorder):
        async def on_stop(self) -> None:
            await release.wait()
            await super().on_stop()

    actor = await started(SlowStop())
    stopping = asyncio.create_task(actor.stop())
    await asyncio.sleep(0)  # one loop turn: the shutdown begins
    with pytest.raises(MailboxClosed):
        actor.tell(("echo", 1))
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert not actor.stopped
    release.set()
    await asyncio.wait_for(actor.wait_stopped(), BOUND_S)
    assert actor.events[-1] == "stop"


async def test_on_stop_failure_is_recorded_not_raised() -> None:
    class BadStop(Recorder):
        async def on_stop(self) -> None:
            raise RuntimeError("close failed")

    actor = await started(BadStop())
    await asyncio.wait_for(actor.stop(), BOUND_S)
    assert actor.stopped
    assert isinstance(actor.failure, RuntimeError)


async def test_stop_before_start_fails_queued_asks() -> None:
    actor = Recorder()
    pending = asyncio.create_task(actor.ask(("echo", 1), timeout_s=BOUND_S))
    await asyncio.sleep(0)  # one loop turn: the ask enqueues
    assert actor.statistics().queued == 1
    await actor.stop()
    with pytest.raises(MailboxClosed):
        await asyncio.wait_for(pending, BOUND_S)
    assert actor.events == []


def test_mailbox_must_hold_at_least_one_message() -> None:
    with pytest.raises(ValueError):
        Recorder(mailbox_size=0)


@pytest.mark.parametrize("turns", range(8))
async def test_a_cancel_that_meets_the_answer_to_an_ask_is_not_lost(turns: int) -> None:
    # A stopping caller cancels its ask; an answer landing in the same loop turn must not undo that.
    actor = await started(Recorder())
    release = asyncio.Event()
    asking = asyncio.create_task(actor.ask(("block", release), timeout_s=BOUND_S))
    await asyncio.wait_for(actor.blocked.wait(), BOUND_S)
    release.set()
    for _ in range(turns):
        await asyncio.sleep(0)

    asked = asking.cancel()
    outcome = (await asyncio.gather(asking, return_exceptions=True))[0]

    if asked:
        assert isinstance(outcome, asyncio.CancelledError), f"the cancel was lost; ask returned {outcome!r}"
    else:
        assert outcome == "unblocked"
    await asyncio.wait_for(actor.stop(), BOUND_S)
