"""ZeroMQ transport: ROUTER/DEALER sockets that send and receive letmesh messages.

A ROUTER binds (controller, gateway data socket); a DEALER dials out (agents, workers,
gateways towards the controller). ROUTER sockets set ROUTER_MANDATORY so a send to a peer
that is gone fails at once instead of vanishing; every socket has an explicit linger and a
maximum message size. Frames that do not decode are counted and dropped here, at the edge:
handlers only ever see valid messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from protocol import DEFAULT_LIMITS, Limits, ProtocolError, decode, encode

log = logging.getLogger(__name__)

LINGER_MS = 0
# A receive that finds a message waiting completes without giving the event loop a turn; a
# loop reading a backlog would starve every other task (heartbeats, the worker's batching loop)
# for as long as messages keep coming. recv() yields once this much time has passed since it last did.
FAIR_SHARE_S = 0.002


class TransportError(Exception):
    """Root of transport failures."""


class PeerUnreachable(TransportError):
    """The ROUTER has no connected peer with that identity (it left or never came)."""


class EndpointClosed(TransportError):
    """The endpoint was closed while an operation waited on it."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One decoded message: ``peer`` is the routing identity on a ROUTER, None on a DEALER."""

    peer: bytes | None
    msg: Any
    buffers: list[memoryview]


class Endpoint:
    """An asyncio ZeroMQ socket speaking letmesh messages.

    Not safe to share between event loops; one task may send while another receives.
    """

    def __init__(self, sock: zmq.asyncio.Socket, kind: int, limits: Limits) -> None:
        self._sock = sock
        self._kind = kind
        self._limits = limits
        self.protocol_errors = 0
        self.address = ""
        self._yielded = time.monotonic()

    @classmethod
    def router(cls, ctx: zmq.asyncio.Context, bind: str, limits: Limits = DEFAULT_LIMITS) -> Endpoint:
        sock = ctx.socket(zmq.ROUTER)
        _common_options(sock, limits)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        try:
            sock.bind(bind)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        ep = cls(sock, zmq.ROUTER, limits)
        ep.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return ep

    @classmethod
    def dealer(
        cls, ctx: zmq.asyncio.Context, connect: str, identity: str, limits: Limits = DEFAULT_LIMITS
    ) -> Endpoint:
        sock = ctx.socket(zmq.DEALER)
        _common_options(sock, limits)
        sock.setsockopt(zmq.IDENTITY, identity.encode())
        sock.connect(connect)
        ep = cls(sock, zmq.DEALER, limits)
        ep.address = connect
        return ep

    def connect(self, address: str) -> None:
        """A DEALER may dial several ROUTERs (a worker dials every gateway)."""
        self._sock.connect(address)

    def disconnect(self, address: str) -> None:
        try:
            self._sock.disconnect(address)
        except zmq.ZMQError:
            pass

    async def send(self, msg: Any, tensors: Sequence[np.ndarray] = (), to: bytes | None = None) -> None:
        frames: list[Any] = encode(msg, tensors)
        if self._kind == zmq.ROUTER:
            if to is None:
                raise ValueError("a ROUTER send needs the peer identity")
            frames.insert(0, to)
        try:
            await self._sock.send_multipart(frames, copy=False)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise PeerUnreachable(repr(to)) from None
            if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                raise EndpointClosed(str(exc)) from None
            raise

    def send_nowait(self, msg: Any, tensors: Sequence[np.ndarray] = (), to: bytes | None = None) -> None:
        """Send without awaiting; raises PeerUnreachable, or zmq.Again if the queue is full."""
        frames: list[Any] = encode(msg, tensors)
        if self._kind == zmq.ROUTER:
            if to is None:
                raise ValueError("a ROUTER send needs the peer identity")
            frames.insert(0, to)
        # On a zmq.asyncio socket a non-blocking send reports its failure through the future it returns.
        future = self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        if not future.done():  # queued behind an awaited send: its outcome arrives later
            future.add_done_callback(_swallow)
            return
        exc = future.exception()
        if exc is None:
            return
        if isinstance(exc, zmq.ZMQError) and exc.errno == zmq.EHOSTUNREACH:
            raise PeerUnreachable(repr(to)) from None
        if isinstance(exc, zmq.ZMQError) and exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
            raise EndpointClosed(str(exc)) from None
        raise exc

    async def recv(self) -> Incoming:
        """The next valid message; invalid ones are logged, counted and skipped."""
        if time.monotonic() - self._yielded >= FAIR_SHARE_S:
            await asyncio.sleep(0)
            self._yielded = time.monotonic()
        while True:
            try:
                frames = await self._sock.recv_multipart(copy=False)
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                    raise EndpointClosed(str(exc)) from None
                raise
            peer = None
            if self._kind == zmq.ROUTER:
                peer = bytes(frames[0].buffer)
                frames = frames[1:]
            try:
                msg, buffers = decode(frames, self._limits)
            except ProtocolError as exc:
                self.protocol_errors += 1
                log.warning("dropped invalid message", extra={"peer": peer, "error": str(exc)})
                continue
            return Incoming(peer, msg, buffers)

    def close(self, linger_ms: int = LINGER_MS) -> None:
        self._sock.close(linger=linger_ms)

    @property
    def closed(self) -> bool:
        return self._sock.closed


def _swallow(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("queued send failed: %s", future.exception())


def _common_options(sock: zmq.Socket, limits: Limits) -> None:
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_total_bytes + limits.max_header_bytes)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.setsockopt(zmq.RCVHWM, 10_000)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
