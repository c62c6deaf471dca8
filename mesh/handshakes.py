"""What a dialler's failed CURVE handshake means, and saying so once a minute with what to do.

libzmq's monitor on the dialling socket tells three failures apart; :mod:`mesh.transport` watches
them and redials, this module words them. Imports only ``mesh.keys``.
"""

from __future__ import annotations

import logging
import time

import zmq

from mesh.keys import ROLES, rejoin_hint

log = logging.getLogger("mesh.transport")  # where a role's link messages have always been logged

# A dialler's failed handshakes, as libzmq's monitor reports them on its side: the server refused
# this key (AUTH); the server's answer did not decrypt, so this process was given another server's
# public key (NO_DETAIL; libzmq would retry it every reconnect interval by itself); one side has
# keys and the other not (PROTOCOL, mechanism mismatch).
REFUSALS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
# A refusal is logged at most this often per server and cause, process-wide: a role that dials
# afresh at every retry (an agent registering) would otherwise say it at each one.
REFUSAL_LOG_EVERY_S = 60.0
_refusals_said: dict[tuple[str, str], float] = {}


def refusal_cause(event: int, value: int) -> str:
    """What a dialler's failed handshake means: not_authorised, server_key, no_keys or protocol."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "not_authorised"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "server_key"
    return "no_keys" if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH else "protocol"


def refusal_text(cause: str, address: str, identity: str) -> str:
    role, _, name = identity.partition(":")
    if cause == "not_authorised":
        text = f"{address} refused this key: {role} {name!r} is not authorised there (revoked, or issued by another keyring)"
        if role in ROLES:  # a worker's or a profiler's key may just not have reached that server yet
            text += f"; to serve, {rejoin_hint(role, name)}"
        return text
    if cause == "server_key":
        text = (f"no handshake with {address}, twice in a row and without a reason: the server's public key this "
                f"process was given is not that server's (a keys folder from another keyring?), or the server "
                f"restarts or stalls mid-handshake")
        if role in ROLES:
            text += f"; a keys folder from another keyring is replaced by hosts/{role}-{name}/ of the server's keyring"
        return text
    if cause == "no_keys":
        return f"no handshake with {address}: it runs without keys while this process has them; start both with --keys"
    return f"no handshake with {address}: a ZMTP protocol error"


def say_refused(cause: str, address: str, identity: str, delay_s: float | None) -> None:
    """Log what ``cause`` means for ``address`` (and when it is dialled again, if this process
    redials it), at most once a minute per server and cause."""
    now = time.monotonic()
    if now - _refusals_said.get((address, cause), float("-inf")) < REFUSAL_LOG_EVERY_S:
        return
    if len(_refusals_said) >= 256:  # addresses come from configuration and the controller: bounded all the same
        _refusals_said.clear()
    _refusals_said[(address, cause)] = now
    when = "" if delay_s is None else f"; dialling again in {delay_s:.0f} s"
    log.warning("%s%s (said once a minute)", refusal_text(cause, address, identity), when)
