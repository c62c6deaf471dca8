"""Dead links: a silently cut connection (no FIN, no RST: bytes just stop) is torn down by the
socket-level heartbeat and redialled after the heal, and a control link does not replay what
was sent while it was down."""

from __future__ import annotations

import asyncio
import contextlib

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from mesh.links import LinkOptions
from mesh.transport import Endpoint
from protocol.message import Heartbeat

FAST = LinkOptions(heartbeat_s=0.2, timeout_s=0.6, reconnect_s=0.05, reconnect_max_s=0.3)


class CuttableLink:
    """A TCP relay that can go silent both ways, like a partitioned network, and heal.

    While cut it moves no bytes (they wait, as TCP would retransmit them after the heal);
    nothing is closed, so neither end learns of the cut from the network.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def cut(self) -> bool:
        return not self._flowing.is_set()

    @cut.setter
    def cut(self, value: bool) -> None:
        if value:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while True:
                await self._flowing.wait()
                data = await src.read(65536)
                if not data:  # a close, delivered in order like the bytes before it
                    await self._flowing.wait()
                    dst.close()
                    return
                await self._flowing.wait()  # read just before the cut: held until the heal
                dst.write(data)
                await dst.drain()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _next_event(monitor: zmq.asyncio.Socket, wanted: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            frames = await monitor.recv_multipart()
            if recv_monitor_message(_Frames(frames))["event"] == wanted:
                return


class _Frames:
    def __init__(self, frames):
        self._frames = frames

    def recv_multipart(self, flags=0):
        return self._frames


async def test_a_silently_cut_link_is_torn_down_and_redialled_after_the_heal(ctx) -> None:
    router = Endpoint.router(ctx, "tcp://127.0.0.1:0", link=FAST)
    link = CuttableLink(int(router.address.rsplit(":", 1)[1]))
    await link.start()
    dealer = Endpoint.dealer(ctx, f"tcp://127.0.0.1:{link.port}", "agent:a", link=FAST, control=True)
    monitor = dealer._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    heard: asyncio.Queue[int] = asyncio.Queue()

    async def serve() -> None:  # a ROUTER is always being read, as the controller's and gateways' are
        while True:
            heard.put_nowait((await router.recv()).msg.seq)

    reader = asyncio.create_task(serve())
    try:
        await dealer.send(Heartbeat(sender="a", role="agent", seq=1))
        assert await asyncio.wait_for(heard.get(), 10) == 1
        link.cut = True
        # The kernel would keep this connection for minutes; the heartbeat closes it.
        await _next_event(monitor, zmq.EVENT_DISCONNECTED, 30)
        for seq in range(100, 110):  # sent while cut: a control link keeps none of them
            with contextlib.suppress(zmq.Again):
                dealer.send_nowait(Heartbeat(sender="a", role="agent", seq=seq))
        link.cut = False
        await _next_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED, 30)
        async with asyncio.timeout(30):
            seq = 200
            while heard.empty():  # re-sent until it gets through, as agents do
                with contextlib.suppress(zmq.Again):
                    dealer.send_nowait(Heartbeat(sender="a", role="agent", seq=seq))
                seq += 1
                await asyncio.sleep(0.1)  # the re-send period (an agent's is register_retry_s)
        assert heard.get_nowait() >= 200  # nothing from the cut is replayed
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        dealer._sock.disable_monitor()
        monitor.close(linger=0)
        dealer.close()
        router.close()
        await link.close()
