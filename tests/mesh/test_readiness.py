"""Waiting for a ZeroMQ socket to be readable or writable, over real sockets, on asyncio's own
event loop and on uvloop (the roles' loop)."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
import uvloop
import zmq
import zmq.asyncio

from mesh.transport import Endpoint, EndpointClosed
from protocol.message import Heartbeat
from tests.polling import LoopTurns

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


def _beat(seq: int) -> Heartbeat:
    return Heartbeat(sender="w1", role="worker", seq=seq)


@pytest.fixture
def ipc_address():
    folder = tempfile.mkdtemp(prefix="lm-ready-")  # short: an ipc path has a length limit
    yield f"ipc://{folder}/s"
    shutil.rmtree(folder, ignore_errors=True)


def on_loop(loop: str, body: Callable[[zmq.asyncio.Context], Awaitable[None]]) -> None:
    """Run ``body`` on a fresh loop of the kind named, with a context of its own that must end
    (a socket left open would keep it from ending)."""
    ctx = zmq.asyncio.Context()
    try:
        LOOPS[loop](body(ctx))
    finally:
        ended = threading.Thread(target=ctx.term, daemon=True)
        ended.start()
        ended.join(5)
        if ended.is_alive():
            ctx.destroy(linger=0)
            pytest.fail("a ZeroMQ socket was left open")


async def _connected(ctx, address: str = "tcp://127.0.0.1:0") -> tuple[Endpoint, Endpoint, bytes]:
    router = Endpoint.router(ctx, address)
    dealer = Endpoint.dealer(ctx, router.address, "worker:w1")
    await dealer.send(_beat(0))
    hello = await asyncio.wait_for(router.recv(), 5)
    return router, dealer, hello.peer


@pytest.mark.parametrize("loop", LOOPS)
def test_a_waiting_receive_wakes_though_a_send_on_its_socket_took_the_signal(loop) -> None:
    """libzmq's descriptor signals once, and a send on the socket reads that signal: the message
    that arrived is then waiting with nothing left to wake the loop, unless the send looks."""
    async def body(ctx) -> None:
        router, dealer, peer = await _connected(ctx)
        try:
            receiving = asyncio.create_task(dealer.recv())
            await asyncio.sleep(0.05)  # waiting on the socket
            router.send_nowait(_beat(1), to=peer)
            fd = dealer._now.getsockopt(zmq.FD)
            until = time.monotonic() + 5
            while not select.select([fd], [], [], 0)[0]:  # the loop is held until the descriptor signals
                assert time.monotonic() < until, "the message never reached the dealer"
                time.sleep(0.01)
            dealer.send_nowait(_beat(2))  # ... and this send reads the signal before the loop looks
            assert not select.select([fd], [], [], 0)[0], "the send did not take the signal: nothing tested"
            got = await asyncio.wait_for(receiving, 5)
            assert got.msg == _beat(1)
        finally:
            dealer.close()
            router.close()
    on_loop(loop, body)


async def test_sends_waiting_for_a_link_all_go_once_it_is_up_and_one_cancelled_stops_none(ctx, ipc_address) -> None:
    dealer = Endpoint.dealer(ctx, ipc_address, "worker:w1", control=True)  # queues nothing while down
    router = None
    try:
        sends = [asyncio.create_task(dealer.send(_beat(seq))) for seq in range(3)]
        await asyncio.sleep(0.1)
        assert not any(s.done() for s in sends), "nothing to send to yet"
        sends[1].cancel()
        await asyncio.gather(sends[1], return_exceptions=True)
        router = Endpoint.router(ctx, ipc_address)
        await asyncio.wait_for(asyncio.gather(sends[0], sends[2]), 5)
        got = {(await asyncio.wait_for(router.recv(), 5)).msg.seq for _ in range(2)}
        assert got == {0, 2}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(router.recv(), 0.2)  # the cancelled one never went
    finally:
        dealer.close()
        if router is not None:
            router.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_send_to_a_peer_with_no_room_waits_without_holding_the_loop_while_another_peer_has_room(loop) -> None:
    """A ROUTER is writable while any peer has room: a send for a full peer must still wait
    for a change, letting the loop run, and go once that peer reads."""
    async def body(ctx) -> None:
        router = Endpoint.router(ctx, "inproc://room")
        router._now.setsockopt(zmq.SNDHWM, 1)
        slow = Endpoint.dealer(ctx, "inproc://room", "worker:slow")
        fast = Endpoint.dealer(ctx, "inproc://room", "worker:fast")
        try:
            for ep in (slow, fast):
                await ep.send(_beat(0))
            peers = {(await asyncio.wait_for(router.recv(), 5)).peer for _ in range(2)}
            slow_peer = next(p for p in peers if b"slow" in p)
            queued = 0
            while True:  # fill the slow peer's pipe; it reads nothing yet
                try:
                    router.send_nowait(_beat(queued), to=slow_peer)
                except zmq.Again:
                    break
                queued += 1
                assert queued < 100_000, "the pipe never filled"
            async with LoopTurns() as turns:
                sending = asyncio.create_task(router.send(_beat(-1), to=slow_peer))
                await asyncio.sleep(0.3)
                assert not sending.done(), "the slow peer has no room"
                assert turns.count > 100, "the waiting send held the event loop"
            got = [(await asyncio.wait_for(slow.recv(), 5)).msg.seq for _ in range(queued + 1)]
            await asyncio.wait_for(sending, 5)
            assert got == [*range(queued), -1]
        finally:
            for ep in (slow, fast, router):
                ep.close()
    on_loop(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_closing_ends_a_waiting_receive_and_a_waiting_send(loop, ipc_address) -> None:
    async def body(ctx) -> None:
        dealer = Endpoint.dealer(ctx, ipc_address, "worker:w1", control=True)
        receiving = asyncio.create_task(dealer.recv())
        sending = asyncio.create_task(dealer.send(_beat(1)))
        await asyncio.sleep(0.05)
        assert not receiving.done() and not sending.done()
        dealer.close()
        for task in (receiving, sending):
            with pytest.raises(EndpointClosed):
                await asyncio.wait_for(task, 5)
        with pytest.raises(EndpointClosed):
            dealer.send_nowait(_beat(2))
    on_loop(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_message_left_unread_does_not_keep_the_loop_busy(loop) -> None:
    async def body(ctx) -> None:
        router, dealer, peer = await _connected(ctx)
        try:
            receiving = asyncio.create_task(dealer.recv())
            await asyncio.sleep(0.05)  # the socket is watched now
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)
            for seq in range(3):
                router.send_nowait(_beat(seq), to=peer)  # each may signal the dealer's descriptor; no one reads
            before = os.times()
            await asyncio.sleep(1.0)
            after = os.times()
            used = (after.user - before.user) + (after.system - before.system)
            # A loop spinning on a signalled descriptor takes a whole core's share even on a busy host.
            assert used < 0.15, f"the loop spun on a signalled descriptor: {used:.2f} s of CPU in 1 s"
            assert dealer.readable()
            assert [(await dealer.recv()).msg.seq for _ in range(3)] == [0, 1, 2]
        finally:
            dealer.close()
            router.close()
    on_loop(loop, body)


# These two ask asyncio's loop whether the descriptor is still watched: uvloop's remove_reader
# does not say.
def test_closing_a_watched_socket_stops_watching_its_descriptor() -> None:
    async def body(ctx) -> None:
        router, dealer, _ = await _connected(ctx)  # the router waited for the hello: its descriptor is watched
        fd = router._now.getsockopt(zmq.FD)
        dealer.close()
        router.close()
        assert not asyncio.get_running_loop().remove_reader(fd), "the closed socket's descriptor was still watched"
    on_loop("asyncio", body)


def test_an_endpoint_dropped_unclosed_stops_watching_its_descriptor() -> None:
    async def body(ctx) -> None:
        router, dealer, _ = await _connected(ctx)
        fd = router._now.getsockopt(zmq.FD)
        sock = router._sock
        del router  # never closed: its finalizer lets the descriptor go
        assert not asyncio.get_running_loop().remove_reader(fd), "a dropped endpoint's descriptor was still watched"
        sock.close(linger=0)
        dealer.close()
    on_loop("asyncio", body)


def test_an_endpoint_waited_on_in_one_loop_serves_in_the_next_and_closes_after_both_ended() -> None:
    ctx = zmq.asyncio.Context()
    router = dealer = None
    try:
        async def first() -> tuple[Endpoint, Endpoint, bytes]:
            return await _connected(ctx)

        router, dealer, peer = asyncio.run(first())

        async def second() -> None:
            router.send_nowait(_beat(5), to=peer)
            assert (await asyncio.wait_for(dealer.recv(), 5)).msg == _beat(5)
            receiving = asyncio.create_task(router.recv())
            await asyncio.sleep(0.05)
            dealer.send_nowait(_beat(6))
            assert (await asyncio.wait_for(receiving, 5)).msg == _beat(6)

        uvloop.run(second())
    finally:
        for ep in (dealer, router):
            if ep is not None:
                ep.close()  # both loops have ended: nothing to unwatch, nothing raised
        ended = threading.Thread(target=ctx.term, daemon=True)
        ended.start()
        ended.join(5)
        assert not ended.is_alive(), "a socket was left open"


async def test_receives_given_up_under_a_timeout_leave_nothing_behind(ctx) -> None:
    router, dealer, peer = await _connected(ctx)
    try:
        for _ in range(50):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(dealer.recv(), 0.001)
        assert len(dealer._ready._readers) <= 1, "each timed-out receive left its waiter behind"
        router.send_nowait(_beat(7), to=peer)
        assert (await asyncio.wait_for(dealer.recv(), 5)).msg == _beat(7)
    finally:
        dealer.close()
        router.close()
