"""Waiting for a ZeroMQ socket to be readable or writable, over real sockets on the event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time

import pytest
import zmq

from mesh.transport import Endpoint, EndpointClosed
from protocol.message import Heartbeat


def _beat(seq: int) -> Heartbeat:
    return Heartbeat(sender="w1", role="worker", seq=seq)


@pytest.fixture
def ipc_address():
    folder = tempfile.mkdtemp(prefix="lm-ready-")  # short: an ipc path has a length limit
    yield f"ipc://{folder}/s"
    shutil.rmtree(folder, ignore_errors=True)


async def _connected(ctx, address: str = "tcp://127.0.0.1:0") -> tuple[Endpoint, Endpoint, bytes]:
    router = Endpoint.router(ctx, address)
    dealer = Endpoint.dealer(ctx, router.address, "worker:w1")
    await dealer.send(_beat(0))
    hello = await asyncio.wait_for(router.recv(), 5)
    return router, dealer, hello.peer


async def test_a_waiting_receive_wakes_though_a_send_on_its_socket_took_the_signal(ctx) -> None:
    """libzmq's descriptor signals once, and a send on the socket reads that signal: the message
    that arrived is then waiting with nothing left to wake the loop, unless the send looks."""
    router, dealer, peer = await _connected(ctx)
    try:
        receiving = asyncio.create_task(dealer.recv())
        await asyncio.sleep(0.05)  # waiting on the socket
        router.send_nowait(_beat(1), to=peer)
        time.sleep(0.2)  # the loop is held: the message reaches the dealer, its descriptor signals
        dealer.send_nowait(_beat(2))  # ... and this send reads the signal before the loop looks
        got = await asyncio.wait_for(receiving, 5)
        assert got.msg == _beat(1)
    finally:
        dealer.close()
        router.close()


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


async def test_closing_ends_a_waiting_receive_and_a_waiting_send(ctx, ipc_address) -> None:
    dealer = Endpoint.dealer(ctx, ipc_address, "worker:w1", control=True)
    receiving = asyncio.create_task(dealer.recv())
    sending = asyncio.create_task(dealer.send(_beat(1)))
    await asyncio.sleep(0.05)
    assert not receiving.done() and not sending.done()
    dealer.close()
    for task in (receiving, sending):
        with pytest.raises(EndpointClosed):
            await asyncio.wait_for(task, 5)


async def test_a_message_left_unread_does_not_keep_the_loop_busy(ctx) -> None:
    router, dealer, peer = await _connected(ctx)
    try:
        receiving = asyncio.create_task(dealer.recv())
        await asyncio.sleep(0.05)  # the socket is watched now
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        for seq in range(3):
            router.send_nowait(_beat(seq), to=peer)  # each signals the dealer's descriptor; no one reads
        before = os.times()
        await asyncio.sleep(0.5)
        after = os.times()
        used = (after.user - before.user) + (after.system - before.system)
        assert used < 0.25, f"the loop spun on a signalled descriptor: {used:.2f} s of CPU in 0.5 s"
        assert dealer.readable()
        assert [(await dealer.recv()).msg.seq for _ in range(3)] == [0, 1, 2]
    finally:
        dealer.close()
        router.close()


async def test_closing_a_watched_socket_stops_watching_its_descriptor(ctx) -> None:
    router, dealer, _ = await _connected(ctx)  # the router waited for the hello: its descriptor is watched
    fd = router._now.getsockopt(zmq.FD)
    dealer.close()
    router.close()
    assert not asyncio.get_running_loop().remove_reader(fd), "the closed socket's descriptor was still watched"


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
