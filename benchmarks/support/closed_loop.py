"""Closed-loop load: N clients, each sending its next request when the last is answered, every
request recorded (send and completion time, status, the variant that served it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from benchmarks.support.loadgen import exchange
from benchmarks.support.resize_report import LoadRecord

STOP_GRACE_S = 30.0  # how long a request may still be outstanding when the load stops


class ClosedLoop:
    """N clients, each on one keep-alive HTTP/1.1 connection, sending the next request when the
    last is answered. Runs on one event loop; ``stop`` lets the requests in flight finish (bounded
    by STOP_GRACE_S; a client still waiting then counts one unanswered request)."""

    def __init__(self, port: int, request: bytes, clients: int) -> None:
        self._port = port
        self._request = request
        self._clients = clients
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.record = LoadRecord()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(), name=f"client-{i}") for i in range(self._clients)]

    async def stop(self) -> None:
        self._stopping.set()
        if not self._tasks:
            return
        done, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        self.record.unanswered += len(pending)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()

    async def _client(self) -> None:
        while not self._stopping.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
            except OSError:
                await asyncio.sleep(0.05)  # the gateway is refusing connections: try again shortly
                continue
            try:
                await self._serve(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one connection until stopped or the connection is lost (the gateway always
        answers with Content-Length)."""
        while not self._stopping.is_set():
            sent = time.monotonic_ns()
            self.record.sent += 1
            try:
                status, body = await exchange(reader, writer, self._request)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                self._note(sent, 0, "", f"connection lost: {type(exc).__name__}")
                return
            variant = error = ""
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                if status == 200:
                    variant = json.loads(body)["parameters"]["letmesh_variant"]
                else:
                    error = str(json.loads(body).get("error", ""))[:200]
            self._note(sent, status, variant, error)

    def _note(self, sent: int, status: int, variant: str, error: str = "") -> None:
        rec = self.record
        done = time.monotonic_ns()
        rec.sent_ns.append(sent)
        rec.done_ns.append(done)
        rec.status.append(status)
        rec.variant.append(variant)
        if status != 200:
            rec.errors.append((done, status, error))
