"""A worker played by a DEALER socket in the test: heartbeats, and echoes or holds requests."""

from __future__ import annotations

import asyncio
import contextlib

from mesh.transport import Endpoint, EndpointClosed
from protocol.codec import tensor_meta, tensors_from_frames
from protocol.message import Heartbeat, InferReply, InferRequest, WorkerHello
from protocol.types import ReplyStatus


class FakeWorker:
    """Heartbeats and answers like a worker: echoes its input after ``delay_s``, or holds it.

    Each answer says it computed for ``compute_us`` (a batch of one); ``answer`` may be switched
    off while it serves. With ``error`` set, every answer is that error instead. With ``serial``,
    requests are answered one after another, ``delay_s`` apart, as a worker with a queue does."""

    def __init__(self, ctx, address: str, worker_id: str, *, delay_s: float = 0.0, answer: bool = True,
                 compute_us: int = 1000, error: str = "", serial: bool = False) -> None:
        self.worker_id = worker_id
        self.ep = Endpoint.dealer(ctx, address, f"worker:{worker_id}")
        self.delay_s, self.answer, self.compute_us, self.error = delay_s, answer, compute_us, error
        self.serial = serial
        self.late = False  # set: every request is answered as dropped unrun (ReplyStatus.LATE)
        self._free_at = 0.0  # serial: when the last request taken is answered (loop time)
        self.received: list[int] = []
        self.budgets: list[int] = []  # each request's budget_us as it arrived
        self.sends: list[int] = []  # requests per send from the gateway (a bundle carries several)
        self._in_send = 0
        self.tasks = [asyncio.create_task(self._serve()), asyncio.create_task(self._beat())]

    async def _beat(self) -> None:
        self.ep.send_nowait(WorkerHello(worker_id=self.worker_id, variants=("v",)))
        while True:
            self.ep.send_nowait(Heartbeat(sender=self.worker_id, role="worker"))
            await asyncio.sleep(0.05)

    async def _serve(self) -> None:
        while True:
            try:
                incoming = await self.ep.recv()
            except EndpointClosed:
                return
            msg = incoming.msg
            if not isinstance(msg, InferRequest):
                continue
            self.received.append(msg.request_id)
            self.budgets.append(msg.budget_us)
            self._in_send += 1
            if not incoming.more:
                self.sends.append(self._in_send)
                self._in_send = 0
            if self.answer:
                loop = asyncio.get_running_loop()
                if self.serial:
                    self._free_at = max(self._free_at, loop.time()) + self.delay_s
                    loop.call_at(self._free_at, self._reply, msg, incoming.buffers)
                else:
                    loop.call_later(self.delay_s, self._reply, msg, incoming.buffers)

    def _reply(self, msg: InferRequest, buffers) -> None:
        if self.late:  # dropped unrun: it could not have finished in time
            with contextlib.suppress(EndpointClosed):
                self.ep.send_nowait(InferReply(request_id=msg.request_id, variant=msg.variant, status=ReplyStatus.LATE))
            return
        if self.error:
            with contextlib.suppress(EndpointClosed):
                self.ep.send_nowait(InferReply(request_id=msg.request_id, variant=msg.variant,
                                               status=ReplyStatus.ERROR, error=self.error))
            return
        arrays = tensors_from_frames(msg.inputs, buffers)
        reply = InferReply(request_id=msg.request_id, variant=msg.variant, status=ReplyStatus.OK, compute_us=self.compute_us,
                           batch_size=1, outputs=tuple(tensor_meta("x", a) for a in arrays))
        with contextlib.suppress(EndpointClosed):
            self.ep.send_nowait(reply, arrays)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.ep.close()


@contextlib.asynccontextmanager
async def gateway_with_fake_workers(ctx, model, **app_options):
    """A real dispatcher and HTTP app on a TestServer; ``client.serve(**kwargs)`` starts FakeWorker
    "w1" and routes ``model`` to it. Everything is closed on exit."""
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.dispatcher import Dispatcher
    from gateway.http_app import make_app
    from protocol.message import RoutingTable
    from protocol.types import WorkerRoute

    dispatcher = Dispatcher(ctx, "tcp://127.0.0.1:*", gateway_id="test", heartbeat_interval_s=0.05,
                            missed_heartbeats=20)
    await dispatcher.start()
    client = TestClient(TestServer(make_app(dispatcher, **{"max_body_bytes": 64 * 1024, "selection": "accurate",
                                                           **app_options})))
    await client.start_server()
    workers: list[FakeWorker] = []

    def serve(**kwargs) -> FakeWorker:
        worker = FakeWorker(ctx, dispatcher.address, "w1", **kwargs)
        workers.append(worker)
        dispatcher.apply_routing(RoutingTable(version=1, models=(model,), workers=(
            WorkerRoute(worker_id="w1", variants=(model.name,), latency_ms={model.name: (40.0, 80.0, 160.0)}),)))
        return worker

    client.serve = serve
    client.dispatcher = dispatcher
    try:
        yield client
    finally:
        await client.close()
        for w in workers:
            await w.close()
        await dispatcher.stop()
