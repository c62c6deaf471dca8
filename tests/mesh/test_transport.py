"""ZeroMQ transport over real sockets: routing, unreachable peers, invalid frames, clean close."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import tracemalloc

import numpy as np
import pytest
import zmq
import zmq.asyncio

from mesh.transport import Endpoint, EndpointClosed, PeerUnreachable
from protocol.codec import Limits, decode_all, encode, encode_bundle, tensor_meta
from protocol.message import Heartbeat, InferRequest
from tests.polling import LoopTurns


def raw_dealer(ctx, address: str, identity: bytes) -> zmq.asyncio.Socket:
    """A plain ZeroMQ DEALER, no letmesh codec: sends whatever bytes a test hands it."""
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.IDENTITY, identity)
    raw.connect(address)
    return raw


async def test_dealer_and_router_exchange_messages_and_tensors(ctx) -> None:
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    dealer = Endpoint.dealer(ctx, router.address, "worker:w1")
    try:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        await dealer.send(InferRequest(request_id=7, variant="v", budget_us=1000, inputs=(tensor_meta("x", x),)), [x])
        got = await asyncio.wait_for(router.recv(), 5)
        assert got.peer == b"worker:w1"
        assert got.msg.request_id == 7
        np.testing.assert_array_equal(np.frombuffer(got.buffers[0], np.float32).reshape(3, 4), x)
        router.send_nowait(Heartbeat(sender="gw", role="gateway", seq=1), to=got.peer)
        back = await asyncio.wait_for(dealer.recv(), 5)
        assert back.peer is None and back.msg == Heartbeat(sender="gw", role="gateway", seq=1)
    finally:
        dealer.close()
        router.close()


async def test_sending_to_a_peer_that_is_not_connected_fails_at_once(ctx) -> None:
    router = Endpoint.router(ctx, "inproc://unreachable")
    try:
        with pytest.raises(PeerUnreachable):
            router.send_nowait(Heartbeat(sender="c", role="controller"), to=b"agent:gone")
        with pytest.raises(PeerUnreachable):
            await router.send(Heartbeat(sender="c", role="controller"), to=b"agent:gone")
    finally:
        router.close()


async def test_invalid_frames_are_counted_and_skipped(ctx) -> None:
    router = Endpoint.router(ctx, "inproc://invalid")
    raw = raw_dealer(ctx, "inproc://invalid", b"agent:x")
    try:
        await raw.send_multipart([b"\xc1garbage"])
        await raw.send_multipart([b"\x93\x01\xcd\xff\xff\x80"])  # [1, 65535, {}]: unknown tag
        await raw.send_multipart(encode(Heartbeat(sender="x", role="agent")))  # same pipe: arrives last
        got = await asyncio.wait_for(router.recv(), 5)
        assert got.peer == b"agent:x" and got.msg == Heartbeat(sender="x", role="agent")
        assert router.protocol_errors == 2
    finally:
        raw.close()
        router.close()


async def test_recv_on_a_closed_endpoint_raises_endpoint_closed(ctx) -> None:
    router = Endpoint.router(ctx, "inproc://closing")
    pending = asyncio.create_task(router.recv())
    await asyncio.sleep(0)
    router.close()
    with pytest.raises((EndpointClosed, asyncio.CancelledError, zmq.ZMQError)):
        await asyncio.wait_for(pending, 5)
    assert router.closed


async def test_reading_a_backlog_leaves_other_tasks_their_turns(ctx) -> None:
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    dealer = Endpoint.dealer(ctx, router.address, "worker:w1")
    try:
        for seq in range(300):
            dealer.send_nowait(Heartbeat(sender="w1", role="worker", seq=seq))
        await asyncio.sleep(0.2)  # all of them waiting in the router's queue
        async with LoopTurns() as turns:
            started = turns.count
            for _ in range(300):
                await router.recv()
                time.sleep(0.0005)  # a handler's work per message
        assert turns.count - started >= 30, "a heartbeat or batching task would have waited for the whole backlog"
    finally:
        dealer.close()
        router.close()


async def test_several_messages_to_one_peer_travel_as_one_send_and_arrive_one_by_one(ctx) -> None:
    router = Endpoint.router(ctx, "inproc://bundles")
    raw = raw_dealer(ctx, "inproc://bundles", b"worker:raw")
    dealer = Endpoint.dealer(ctx, "inproc://bundles", "worker:w")
    beats = [(Heartbeat(sender="gw", role="gateway", seq=i), ()) for i in range(3)]
    try:
        await raw.send_multipart(encode(Heartbeat(sender="raw", role="worker")))
        await dealer.send(Heartbeat(sender="w", role="worker"))
        for _ in range(2):
            await asyncio.wait_for(router.recv(), 5)
        router.send_many_nowait(beats, to=b"worker:raw")
        frames = await asyncio.wait_for(raw.recv_multipart(), 5)
        assert [m for m, _ in decode_all(frames)] == [m for m, _ in beats]  # one ZeroMQ message
        assert await raw.poll(100) == 0
        router.send_many_nowait(beats, to=b"worker:w")
        got = [await asyncio.wait_for(dealer.recv(), 5) for _ in beats]
        assert [g.msg for g in got] == [m for m, _ in beats]
        assert [g.more for g in got] == [True, True, False]
    finally:
        raw.close()
        dealer.close()
        router.close()


async def test_a_bundle_is_split_so_no_send_is_over_a_receivers_size_limit(ctx) -> None:
    limits = Limits(max_total_bytes=40 << 20)
    router = Endpoint.router(ctx, "inproc://big-bundles", limits)
    dealer = Endpoint.dealer(ctx, "inproc://big-bundles", "worker:w")
    x = np.zeros((6 << 20) // 4, np.float32)  # 6 MiB each: 10 of them would be one 60 MiB send
    items = [(InferRequest(request_id=i, variant="v", budget_us=1000, inputs=(tensor_meta("x", x),)), [x])
             for i in range(10)]
    try:
        dealer.send_many_nowait(items)
        got = [await asyncio.wait_for(router.recv(), 10) for _ in items]
        assert [g.msg.request_id for g in got] == list(range(10))
        assert router.protocol_errors == 0
        assert [g.more for g in got].count(False) >= 4  # at most 16 MiB of tensors per send
    finally:
        dealer.close()
        router.close()


async def test_readable_says_whether_a_message_is_waiting(ctx) -> None:
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    dealer = Endpoint.dealer(ctx, router.address, "worker:w1")
    try:
        await dealer.send(Heartbeat(sender="w1", role="worker", seq=1))
        hello = await asyncio.wait_for(router.recv(), 5)
        assert not dealer.readable()
        router.send_many_nowait([(Heartbeat(sender="gw", role="gateway", seq=i), ()) for i in range(2)], to=hello.peer)
        router.send_nowait(Heartbeat(sender="gw", role="gateway", seq=2), to=hello.peer)
        until = asyncio.get_running_loop().time() + 5
        while not dealer.readable():
            assert asyncio.get_running_loop().time() < until, "the messages never became readable"
            await asyncio.sleep(0.01)
        seqs = [(await dealer.recv()).msg.seq]
        assert dealer.readable()  # the bundle's second message is unpacked already
        seqs.append((await dealer.recv()).msg.seq)
        while not dealer.readable():  # the plain message, on the socket
            assert asyncio.get_running_loop().time() < until, "the last message never became readable"
            await asyncio.sleep(0.01)
        seqs.append((await dealer.recv()).msg.seq)
        assert not dealer.readable()
        assert seqs == [0, 1, 2]
    finally:
        dealer.close()
        router.close()


async def _drain(router: Endpoint, seconds: float) -> list:
    """Every message the router hands on within ``seconds``."""
    got = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                got.append(await router.recv())
    return got


async def test_a_second_connection_under_a_live_name_is_read_and_dropped_then_takes_over_once_the_first_is_gone(ctx) -> None:
    """A restarted process dials under its old name while its old connection may linger. The
    ROUTER reads what the newcomer sends (libzmq alone would leave it unread, in memory, for
    good), hands none of it on while the first connection is there, and lets the newcomer have
    the name as soon as the first is gone."""
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    first = Endpoint.dealer(ctx, router.address, "agent:e1")
    second = Endpoint.dealer(ctx, router.address, "agent:e1")
    try:
        await first.send(Heartbeat(sender="first", role="agent"))
        assert (await asyncio.wait_for(router.recv(), 5)).msg.sender == "first"
        for seq in range(200):
            second.send_nowait(Heartbeat(sender="second", role="agent", seq=seq))
        await first.send(Heartbeat(sender="first", role="agent", seq=1))
        got = await _drain(router, 1.0)
        assert [(g.peer, g.msg.sender) for g in got] == [(b"agent:e1", "first")]
        assert router.routes is not None and router.routes.dropped == 200
        router.send_nowait(Heartbeat(sender="controller", role="controller"), to=b"agent:e1")
        assert (await asyncio.wait_for(first.recv(), 5)).msg.sender == "controller"
        assert first.protocol_errors == 0  # the router's "still there?" messages were skipped silently

        first.close()
        async with asyncio.timeout(10):
            while True:
                second.send_nowait(Heartbeat(sender="second", role="agent", seq=999))
                got = await _drain(router, 0.2)
                if got:
                    break
        assert {(g.peer, g.msg.sender) for g in got} == {(b"agent:e1", "second")}
        router.send_nowait(Heartbeat(sender="controller", role="controller", seq=2), to=b"agent:e1")
        back = await asyncio.wait_for(second.recv(), 5)
        assert (back.msg.sender, back.msg.seq) == ("controller", 2)
    finally:
        first.close()
        second.close()
        router.close()


async def test_connections_reusing_one_raw_identity_are_all_read(ctx) -> None:
    """A client that sets the same identity on each new socket (no tag: a script, a fuzzer)
    is heard on each: what it sends is read, not left in the ROUTER's memory."""
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    holder = raw_dealer(ctx, router.address, b"gateway:raw")
    try:
        await holder.send_multipart(encode(Heartbeat(sender="holder", role="gateway")))
        assert (await asyncio.wait_for(router.recv(), 5)).msg.sender == "holder"
        for round_ in range(3):
            again = raw_dealer(ctx, router.address, b"gateway:raw")
            try:
                for seq in range(100):
                    await again.send_multipart(encode(Heartbeat(sender=f"again{round_}", role="gateway", seq=seq)))
                got = []
                async with asyncio.timeout(10):
                    while len(got) < 100:
                        got.append(await router.recv())
                assert [g.msg.seq for g in got] == list(range(100))
                assert {(g.peer, g.msg.sender) for g in got} == {(b"gateway:raw", f"again{round_}")}
            finally:
                again.close()
    finally:
        holder.close()
        router.close()




async def test_a_dealer_that_cannot_dial_leaves_nothing_open_so_the_context_can_end() -> None:
    ctx = zmq.asyncio.Context()
    loop = asyncio.get_running_loop()
    try:
        Endpoint.dealer(ctx, "127.0.0.1:5555", identity="agent:a")  # no scheme: libzmq refuses it
    except zmq.ZMQError:
        # As a role's shutdown does: end the context while the error propagates (its frames, and
        # what they hold, still alive). A socket left open blocks term() for good.
        term = loop.run_in_executor(None, ctx.term)
        done, _ = await asyncio.wait({term}, timeout=10)
    else:
        pytest.fail("dialled an address without a scheme")
    gc.collect()  # the frames are gone: a leaked socket closes, and term() returns either way
    await term
    assert done, "the context could not end: the failed dealer's socket was left open"


async def test_a_message_with_more_frames_than_any_valid_send_is_dropped_without_holding_them(ctx) -> None:
    """libzmq hands a message's frames over all at once however many there are: a peer sending
    300,000 empty frames (600 KB on the wire) would have this process hold 300,000 frame objects.
    They are received and let go one by one; the message is counted invalid and the next served."""
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0")
    raw = raw_dealer(ctx, router.address, b"agent:x")
    try:
        await raw.send_multipart([b""] * 300_000)
        await raw.send_multipart(encode(Heartbeat(sender="x", role="agent")))
        await asyncio.wait_for(_until_readable(router), 10)
        tracemalloc.start()
        try:
            got = await asyncio.wait_for(router.recv(), 10)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert got.msg == Heartbeat(sender="x", role="agent")
        assert router.protocol_errors == 1
        # Up to a valid send's most frames (16,641) are held before the message is known to be
        # over: about 3 MiB. All 300,000 held at once were 57 MiB.
        assert peak < 12 << 20, f"{peak / 2**20:.1f} MiB held while reading it"
    finally:
        raw.close()
        router.close()


async def test_a_send_of_the_most_frames_the_limits_allow_is_read_and_one_more_is_not(ctx) -> None:
    limits = Limits(max_bundle=2, max_tensors=2)  # a bundle header and 2 messages of 2 tensors: 7 frames
    router = Endpoint.router(ctx, "inproc://most-frames", limits)
    raw = raw_dealer(ctx, "inproc://most-frames", b"worker:raw")
    x = np.ones(3, np.float32)
    request = InferRequest(request_id=1, variant="v", budget_us=1000, inputs=(tensor_meta("a", x), tensor_meta("b", x)))
    try:
        bundle = encode_bundle([(request, [x, x]), (request, [x, x])])
        assert len(bundle) == limits.max_frames
        await raw.send_multipart(bundle)
        await raw.send_multipart(bundle + [b""])
        await raw.send_multipart(encode(Heartbeat(sender="raw", role="worker")))
        got = [await asyncio.wait_for(router.recv(), 5) for _ in range(3)]
        assert [type(g.msg).__name__ for g in got] == ["InferRequest", "InferRequest", "Heartbeat"]
        assert router.protocol_errors == 1
    finally:
        raw.close()
        router.close()


async def _until_readable(endpoint: Endpoint) -> None:
    while not endpoint.readable():
        await asyncio.sleep(0.01)


async def test_a_receive_cancelled_once_a_message_is_waiting_loses_nothing(ctx) -> None:
    """A receive waits for the socket to be readable and takes the message only when its task
    runs: cancelled between the wake-up and the task's next step, the message stays on the socket,
    whole, for the next receive."""
    router = Endpoint.router(ctx, "inproc://cancelled-mid-message")
    raw = raw_dealer(ctx, "inproc://cancelled-mid-message", b"agent:x")
    try:
        receiving = asyncio.create_task(router.recv())
        await asyncio.sleep(0.05)  # waiting on the socket
        waiter = receiving._fut_waiter  # the future the task awaits: the socket becoming readable
        assert waiter is not None and not waiter.done()
        await raw.send_multipart(encode(Heartbeat(sender="x", role="agent", seq=1)))
        await raw.send_multipart(encode(Heartbeat(sender="x", role="agent", seq=2)))
        for _ in range(1000):
            if waiter.done():
                break
            await asyncio.sleep(0)  # one loop turn at a time: the task steps only after the future is done
        assert waiter.done() and not receiving.done()
        receiving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await receiving
        got = [await asyncio.wait_for(router.recv(), 5) for _ in range(2)]
        assert [g.msg for g in got] == [Heartbeat(sender="x", role="agent", seq=n) for n in (1, 2)]
        assert {g.peer for g in got} == {b"agent:x"}
        assert router.protocol_errors == 0 and router.routes.dropped == 0
    finally:
        raw.close()
        router.close()
