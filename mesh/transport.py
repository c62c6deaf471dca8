"""ZeroMQ transport: ROUTER/DEALER sockets that send and receive letmesh messages.

A ROUTER binds (controller, gateway data socket); a DEALER dials out (agents, workers,
gateways towards the controller). ROUTER sockets set ROUTER_MANDATORY so a send to a peer
that is gone fails at once instead of vanishing. A DEALER's routing identity is its peer name
plus a secret tag of its own (``mesh.peer_routes``): a second connection claiming a live
peer's name is read and its messages dropped, never handed the name while the first is
connected, and never left unread in libzmq's memory. Every socket carries the link
settings of ``mesh.links`` (linger, size limits, ZMTP heartbeats, keepalive, redial backoff).

With keys (``mesh.keys``) a socket speaks CURVE: a ROUTER authenticates each client through
the context's ZAP handler and every message it receives carries the client's authenticated
name (``Incoming.peer_name``). Frames that do not decode are counted and dropped here, at the
edge: handlers only ever see valid messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from mesh.handshakes import REFUSALS, refusal_cause, say_refused
from mesh.frames import take_frames
from mesh.keys import ClientKeys, KeysError, ServerKeys, split_server_key
from mesh.links import DEFAULT_LINK, LINGER_MS, LinkOptions, socket_options
from mesh.peer_routes import PeerRoutes, name_of, owns, tagged
from mesh.readiness import Readiness
from mesh.zap import ZAP_DOMAIN, ZapHandler
from protocol import DEFAULT_LIMITS, Limits, ProtocolError, decode_all, encode, encode_bundle

log = logging.getLogger(__name__)

# A receive that finds a message waiting completes without giving the event loop a turn; a
# loop reading a backlog would starve every other task (heartbeats, the worker's batching loop)
# for as long as messages keep coming. recv() yields once this much time has passed since it last did.
FAIR_SHARE_S = 0.002
# Messages per bundle a sender packs (a receiver accepts up to Limits.max_bundle).
BUNDLE_MAX = 64
# Tensor bytes per bundle, well under a receiver's whole-message limit (Limits.max_total_bytes):
# a message that alone is larger still goes, on its own, as it would unbundled.
BUNDLE_BYTES = 16 << 20
# A control DEALER queues at most this much while its link is slow; while it is down it queues
# nothing (IMMEDIATE), so stale registrations and heartbeats are not replayed in bulk on a heal.
CONTROL_SNDHWM = 1000
# libzmq never redials a connection whose CURVE handshake the server refused; a dialler with keys
# dials it again itself (the server may not know its key yet: a gateway just restarted, a worker's
# credential on its way), after a delay that doubles up to this.
REFUSED_REDIAL_MAX_S = 30.0
# A ROUTER warns at most this often that a second connection claims a live peer's name.
CLAIM_WARNING_EVERY_S = 10.0


# One ZAP handler per context (libzmq asks inproc://zeromq.zap.01 of the socket's context);
# shared by the context's CURVE servers and closed with the last of them.
_ZAP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class TransportError(Exception):
    """Root of transport failures."""


class PeerUnreachable(TransportError):
    """The ROUTER has no connected peer with that identity (it left or never came)."""


class EndpointClosed(TransportError):
    """The endpoint was closed while an operation waited on it."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One decoded message: ``peer`` is the routing identity on a ROUTER, None on a DEALER;
    ``peer_name`` the sender's authenticated name (``role:name``) on a CURVE socket, else None."""

    peer: bytes | None
    msg: Any
    buffers: list[memoryview]
    peer_name: str | None = None
    more: bool = False  # more messages of the same bundle are already decoded and waiting


class Endpoint:
    """An asyncio ZeroMQ socket speaking letmesh messages.

    Not safe to share between event loops; one task may send while another receives.
    """

    def __init__(self, sock: zmq.asyncio.Socket, kind: int, limits: Limits) -> None:
        self._sock = sock
        # Sends and receives go through the same libzmq socket without pyzmq's asyncio layer, and
        # wait on ``_ready`` when they cannot go at once (its module says why).
        self._now = zmq.Socket.shadow(sock.underlying)
        self._ready = Readiness(self._now)
        # Dropped unclosed, its descriptor must not stay watched (a later socket may get its number).
        weakref.finalize(self, self._ready.close)
        self._kind = kind
        self._limits = limits
        self.protocol_errors = 0
        self.address = ""
        self._yielded = time.monotonic()
        self.secure = False
        self._client: ClientKeys | None = None
        self._zap_ctx: zmq.asyncio.Context | None = None
        self._dialled: dict[str, str] = {}  # bare address -> as given (with the server key)
        self._refusals: dict[str, int] = {}  # bare address -> handshakes refused in a row
        self._redials: dict[str, asyncio.TimerHandle] = {}  # one pending redial per server at most
        self._identity = ""  # a DEALER's peer name, for what a refusal says
        self._watch: asyncio.Task | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._redial_base_s = DEFAULT_LINK.reconnect_max_s
        self.refused_handshakes = 0
        self.handshakes = 0  # completed (a DEALER with keys counts them)
        self._unpacked: deque[Incoming] = deque()  # the rest of a received bundle
        self.routes = PeerRoutes() if kind == zmq.ROUTER else None
        self._most_frames = limits.max_frames + (1 if kind == zmq.ROUTER else 0)  # and the routing identity
        self._claim_warned = -CLAIM_WARNING_EVERY_S

    @classmethod
    def router(
        cls, ctx: zmq.asyncio.Context, bind: str, limits: Limits = DEFAULT_LIMITS, *,
        security: ServerKeys | None = None, link: LinkOptions = DEFAULT_LINK, refresh: Callable[[], Any] | None = None,
    ) -> Endpoint:
        """Bind a ROUTER; with ``security`` only clients whose key ``security.authorized`` names get in.

        ``refresh`` is called before each authentication decision (re-reading a keyring directory).
        """
        sock = ctx.socket(zmq.ROUTER)
        socket_options(sock, limits, link)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Identities carry a secret tag, so only the socket that owns one reconnects under it:
        # its new connection takes over at once from a stale one. Without handover libzmq never
        # reads the newcomer, and keeps what it sends until the process exits.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        ep = cls(sock, zmq.ROUTER, limits)
        try:
            if security is not None:
                ep._serve_curve(ctx, security, refresh)
            sock.bind(bind)
        except (zmq.ZMQError, KeysError):
            ep.close()
            raise
        ep.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return ep

    @classmethod
    def dealer(
        cls, ctx: zmq.asyncio.Context, connect: str, identity: str, limits: Limits = DEFAULT_LIMITS, *,
        security: ClientKeys | None = None, link: LinkOptions = DEFAULT_LINK, control: bool = False,
    ) -> Endpoint:
        """Dial ``connect``; with ``security`` the server must present the expected public key.

        A ``control`` DEALER queues nothing while disconnected and little while connected: its
        senders re-send state, so a stale message is worth less than a fresh one.
        """
        sock = ctx.socket(zmq.DEALER)
        socket_options(sock, limits, link, dialer=True)
        sock.setsockopt(zmq.IDENTITY, tagged(identity))
        if control:
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDHWM, CONTROL_SNDHWM)
        ep = cls(sock, zmq.DEALER, limits)
        ep._identity = identity
        ep._client = security
        ep.secure = security is not None
        try:
            if security is not None:
                sock.curve_publickey = security.public_key
                sock.curve_secretkey = security.secret_key
                ep._watch_refusals(link.reconnect_max_s)
            ep.connect(connect)
        except zmq.ZMQError:
            ep.close()  # left open, it would keep the context (and the process) from ending
            raise
        ep.address = split_server_key(connect)[0]
        return ep

    def _serve_curve(self, ctx: zmq.asyncio.Context, security: ServerKeys, refresh: Callable[[], Any] | None) -> None:
        held = _ZAP.get(ctx)
        if held is None:
            held = [ZapHandler(ctx, security.authorized, refresh), 0]
            _ZAP[ctx] = held
        held[1] += 1
        self._zap_ctx = ctx
        self.secure = True
        self._sock.zap_domain = ZAP_DOMAIN.encode()
        self._sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP answer: refused, never let in
        self._sock.curve_secretkey = security.secret_key
        self._sock.curve_publickey = security.public_key
        self._sock.curve_server = True

    def connect(self, address: str) -> None:
        """A DEALER may dial several ROUTERs (a worker dials every gateway).

        ``address`` may carry the server's public key (``mesh.keys.with_server_key``); without
        one a CURVE DEALER expects the controller's.
        """
        bare, server_key = split_server_key(address)
        if self._client is not None:  # options are read at connect: each connection may expect its own server
            self._sock.curve_serverkey = server_key or self._client.server_key
        self._dialled[bare] = address
        self._sock.connect(bare)
        self._ready.touched()

    def disconnect(self, address: str) -> None:
        bare = split_server_key(address)[0]
        self._dialled.pop(bare, None)
        self._refusals.pop(bare, None)
        self._cancel_redial(bare)
        try:
            self._sock.disconnect(bare)
        except zmq.ZMQError:
            pass
        self._ready.touched()

    def _watch_refusals(self, base_s: float) -> None:
        """Dial again, later, a server that refused this socket's key (see REFUSED_REDIAL_MAX_S)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on an event loop: nothing to redial with
        self._redial_base_s = max(base_s, 0.1)
        events = REFUSALS | zmq.EVENT_HANDSHAKE_SUCCEEDED
        self._monitor = self._sock.get_monitor_socket(events)
        self._watch = loop.create_task(self._watch_loop(), name="refused-redial")

    async def _watch_loop(self) -> None:
        from zmq.utils.monitor import parse_monitor_message

        assert self._monitor is not None
        while True:
            try:
                event = parse_monitor_message(await self._monitor.recv_multipart())
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            bare = event["endpoint"].decode(errors="replace")
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshakes += 1
                self._refusals.pop(bare, None)
                self._cancel_redial(bare)  # a redial scheduled before would drop this link
                continue
            self.refused_handshakes += 1
            n = self._refusals[bare] = self._refusals.get(bare, 0) + 1
            cause = refusal_cause(event["event"], event["value"])
            if cause == "server_key":
                # libzmq redials this one itself, backing off to the link's reconnect_max_s. One such
                # failure may be a server going down mid-handshake; twice in a row, it is said.
                if n >= 2:
                    say_refused(cause, bare, self._identity, None)
                continue
            delay = min(REFUSED_REDIAL_MAX_S, self._redial_base_s * 2 ** (n - 1))
            say_refused(cause, bare, self._identity, delay)
            self._cancel_redial(bare)
            self._redials[bare] = asyncio.get_running_loop().call_later(delay, self._redial, bare)

    def _cancel_redial(self, bare: str) -> None:
        timer = self._redials.pop(bare, None)
        if timer is not None:
            timer.cancel()

    def _redial(self, bare: str) -> None:
        self._redials.pop(bare, None)
        address = self._dialled.get(bare)
        if address is None or self._sock.closed:
            return  # disconnected on purpose meanwhile
        try:
            self._sock.disconnect(bare)
        except zmq.ZMQError:
            pass
        self.connect(address)

    async def send(self, msg: Any, tensors: Sequence[np.ndarray] = (), to: bytes | None = None) -> None:
        """Send, waiting while the link's queue is full."""
        frames = self._addressed(encode(msg, tensors), to)
        while True:
            try:
                self._send_now(frames, to)
                return
            except zmq.Again:
                try:
                    await self._ready.wait(zmq.POLLOUT, fresh=True)
                except zmq.ZMQError as exc:
                    raise EndpointClosed(str(exc)) from None

    def send_nowait(self, msg: Any, tensors: Sequence[np.ndarray] = (), to: bytes | None = None) -> None:
        """Send without awaiting; raises PeerUnreachable, or zmq.Again if the queue is full."""
        self._send_now(self._addressed(encode(msg, tensors), to), to)

    def send_many_nowait(self, items: Sequence[tuple[Any, Sequence[np.ndarray]]], to: bytes | None = None) -> None:
        """Send several (message, tensors) to one peer as bundles: one send, and one wake-up of
        each side's I/O thread, per bundle instead of per message. Raises like ``send_nowait``;
        bundles before the failing one have been sent."""
        chunk: list[tuple[Any, Sequence[np.ndarray]]] = []
        size = 0
        for item in items:
            nbytes = sum(np.asarray(t).nbytes for t in item[1])
            if chunk and (len(chunk) == BUNDLE_MAX or size + nbytes > BUNDLE_BYTES):
                self._send_now(self._addressed(encode_bundle(chunk), to), to)
                chunk, size = [], 0
            chunk.append(item)
            size += nbytes
        if chunk:
            self._send_now(self._addressed(encode_bundle(chunk), to), to)

    def _addressed(self, frames: list[Any], to: bytes | None) -> list[Any]:
        if self.routes is not None:
            if to is None:
                raise ValueError("a ROUTER send needs the peer identity")
            frames.insert(0, self.routes.route(to))
        return frames

    def _send_now(self, frames: list[Any], to: bytes | None) -> None:
        if self._ready.closed:
            raise EndpointClosed("the endpoint is closed")
        try:
            self._now.send_multipart(frames, flags=zmq.NOBLOCK, copy=len(frames) < 3)
        except zmq.Again:
            raise
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise PeerUnreachable(repr(to)) from None
            if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                raise EndpointClosed(str(exc)) from None
            raise
        finally:
            self._ready.touched()  # the send may have consumed the signal a receive waits for

    def readable(self) -> bool:
        """Whether recv() would return at once: a message of a bundle already unpacked, or one
        waiting on the socket."""
        if self._unpacked:
            return True
        return bool(self._ready.recheck() & zmq.POLLIN)

    async def recv(self) -> Incoming:
        """The next valid message; invalid ones are logged, counted and skipped.

        The messages of a bundle come one call at a time, in send order."""
        if self._unpacked:
            return self._unpacked.popleft()
        if time.monotonic() - self._yielded >= FAIR_SHARE_S:
            await asyncio.sleep(0)
            self._yielded = time.monotonic()
        while True:
            if self._ready.closed:
                raise EndpointClosed("the endpoint is closed")
            try:
                frames = take_frames(self._now, self._most_frames)
            except zmq.Again:
                try:
                    await self._ready.wait(zmq.POLLIN)
                except zmq.ZMQError as exc:
                    raise EndpointClosed(str(exc)) from None
                continue
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                    raise EndpointClosed(str(exc)) from None
                raise
            finally:
                self._ready.touched()  # a send waiting for room may have lost its signal to this
            if frames is None:
                self.protocol_errors += 1
                log.warning("dropped invalid message", extra={"error": f"more than {self._most_frames} frames"})
                continue
            peer_name = None
            first = 0 if self.routes is None else 1  # a ROUTER's first frame is the routing identity
            if self.secure and len(frames) > first:
                try:
                    peer_name = frames[first].get("User-Id")
                except zmq.ZMQError:
                    peer_name = None
            peer = None
            if self.routes is not None:
                routing_id = bytes(frames[0].buffer)
                rightful = owns(peer_name, routing_id)
                peer = self.routes.heard(routing_id, time.monotonic(), self._still_connected, rightful=rightful)
                if peer is None:
                    self._claimed(routing_id)
                    continue
                frames = frames[1:]
            elif len(frames) == 1 and len(frames[0]) == 0:
                continue  # a ROUTER asking whether this connection is still there
            try:
                decoded = decode_all(frames, self._limits)
            except ProtocolError as exc:
                self.protocol_errors += 1
                log.warning("dropped invalid message", extra={"peer": peer, "error": str(exc)})
                continue
            last = len(decoded) - 1
            for i, (msg, buffers) in enumerate(decoded[1:], 1):
                self._unpacked.append(Incoming(peer, msg, buffers, peer_name, more=i < last))
            msg, buffers = decoded[0]
            return Incoming(peer, msg, buffers, peer_name, more=last > 0)

    def _still_connected(self, routing_id: bytes) -> bool:
        """Whether a connection holds ``routing_id``: an empty message to it fails at once if
        none does (ROUTER_MANDATORY); a DEALER of ours skips it."""
        try:
            self._now.send_multipart([routing_id, b""], flags=zmq.NOBLOCK)
        except zmq.Again:
            return True  # connected, and backed up
        except zmq.ZMQError as exc:
            return exc.errno != zmq.EHOSTUNREACH
        finally:
            self._ready.touched()
        return True

    def _claimed(self, routing_id: bytes) -> None:
        now = time.monotonic()
        if now - self._claim_warned >= CLAIM_WARNING_EVERY_S:
            self._claim_warned = now
            log.warning("a second connection claims %r while the first is connected; its messages are dropped "
                        "(%d so far)", name_of(routing_id)[:64], self.routes.dropped if self.routes else 0)

    def close(self, linger_ms: int = LINGER_MS) -> None:
        for bare in list(self._redials):
            self._cancel_redial(bare)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._monitor is not None:
            if not self._sock.closed:
                self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._ready.close()
        if not self._sock.closed:
            self._sock.close(linger=linger_ms)
        ctx, self._zap_ctx = self._zap_ctx, None
        if ctx is not None:
            held = _ZAP.get(ctx)
            if held is not None:
                held[1] -= 1
                if held[1] <= 0:
                    held[0].close()
                    del _ZAP[ctx]

    @property
    def closed(self) -> bool:
        return self._sock.closed
