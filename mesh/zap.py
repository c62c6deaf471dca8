"""A ZAP handler (ZeroMQ RFC 27) for the CURVE server sockets of one context.

It answers libzmq's authentication requests on ``inproc://zeromq.zap.01``: a client whose
public key is authorised right now gets status 200 and its name as the ZAP User-Id (which
every message it sends then carries as the ``User-Id`` property); any other key gets 400 and
its handshake fails. Must not import anything of ours beyond ``mesh.keys``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import zmq
import zmq.asyncio
from zmq.utils import z85

from mesh.keys import AuthorizedKeys

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "letmesh"
REFUSAL_SAY_EVERY_S = 60.0


class ZapHandler:
    """One per context, started before any CURVE server socket binds; ``close`` before the context ends.

    Runs as a task on the event loop that started it. ``refresh`` (optional) is called before
    each decision, so a keyring directory's revocations take effect at the next handshake.
    """

    def __init__(self, ctx: zmq.asyncio.Context, authorized: AuthorizedKeys, refresh=None) -> None:
        self._authorized = authorized
        self._refresh = refresh
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="zap")
        self.refused = 0
        self._said_at = float("-inf")  # when a refusal was last logged
        self._unsaid = 0  # refusals since, not logged

    def decide(self, mechanism: bytes, credentials: list[bytes]) -> str | None:
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return None
        if self._refresh is not None:
            self._refresh()
        return self._authorized.name_of(z85.encode(credentials[0]).decode())

    async def _serve(self) -> None:
        while True:
            try:
                frames = await self._sock.recv_multipart()
            except zmq.ZMQError:
                return
            if len(frames) < 6 or frames[0] != b"1.0":  # REP must answer every request, even a bad one
                await self._answer([b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"bad request", b"", b""])
                continue
            # RFC 27: version, request id, domain, address, routing identity, mechanism, credentials.
            request_id, domain, address, mechanism = frames[1], frames[2], frames[3], frames[5]
            name = None
            if domain == ZAP_DOMAIN.encode():
                try:
                    name = self.decide(mechanism, frames[6:])
                except Exception:  # a failing refresh must refuse, never let an unknown key in
                    log.exception("authentication check failed")
            if name is None:
                self.refused += 1
                now = time.monotonic()
                if now - self._said_at >= REFUSAL_SAY_EVERY_S:  # strangers may dial without end: said once a minute
                    more = f" ({self._unsaid} more refused since the last said)" if self._unsaid else ""
                    log.warning("refused a connection from %s: key not authorised%s", address.decode(errors="replace"),
                                more)
                    self._said_at, self._unsaid = now, 0
                else:
                    self._unsaid += 1
                reply = [b"1.0", request_id, b"400", b"key not authorised", b"", b""]
            else:
                reply = [b"1.0", request_id, b"200", b"OK", name.encode(), b""]
            if not await self._answer(reply):
                return

    async def _answer(self, reply: list[bytes]) -> bool:
        try:
            await self._sock.send_multipart(reply)
        except zmq.ZMQError:
            return False
        return True

    def close(self) -> None:
        self._task.cancel()
        self._sock.close(linger=0)
