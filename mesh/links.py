"""Socket-level settings of every letmesh link: linger, size limits, queue bounds, ZMTP
heartbeats, TCP keepalive and the redial backoff, so a silently dropped link is torn down and
redialled within a few seconds of a heal. Used by ``mesh.transport``; imports nothing of ours
beyond ``protocol``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zmq

from protocol import Limits

LINGER_MS = 0


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """Socket-level liveness of every link: a ZMTP PING every ``heartbeat_s``, the link closed
    when nothing came back within ``timeout_s``; redials start at ``reconnect_s`` and back off
    to at most ``reconnect_max_s``."""

    heartbeat_s: float = 1.0
    timeout_s: float = 3.0
    reconnect_s: float = 0.1
    reconnect_max_s: float = 2.0


DEFAULT_LINK = LinkOptions()


def link_options(config: Any) -> LinkOptions:
    """The link options of a role's config (fields ``link_heartbeat_s``, ``link_timeout_s``, ``link_reconnect_max_s``)."""
    return LinkOptions(
        heartbeat_s=getattr(config, "link_heartbeat_s", DEFAULT_LINK.heartbeat_s),
        timeout_s=getattr(config, "link_timeout_s", DEFAULT_LINK.timeout_s),
        reconnect_max_s=getattr(config, "link_reconnect_max_s", DEFAULT_LINK.reconnect_max_s),
    )


def socket_options(sock: zmq.Socket, limits: Limits, link: LinkOptions = DEFAULT_LINK, *, dialer: bool = False) -> None:
    """The options every letmesh socket sets before it binds or dials (``dialer``: a DEALER)."""
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_total_bytes + limits.max_header_bytes)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.setsockopt(zmq.RCVHWM, 10_000)
    sock.setsockopt(zmq.RECONNECT_IVL, max(1, round(link.reconnect_s * 1000)))
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, max(1, round(link.reconnect_max_s * 1000)))
    if link.heartbeat_s > 0:
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, round(link.heartbeat_s * 1000)))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, round(link.timeout_s * 1000)))
        # A dialer asks the ROUTER (its TTL) to give up on it in half the time it gives the ROUTER
        # itself: the ROUTER lets go of a dead dialer's connection, and of its name, before the
        # dialer redials (a redial of the same socket would take over anyway; a restarted
        # process, under a new tag, waits until the old connection is gone).
        ttl_s = link.timeout_s / 2 if dialer else link.timeout_s
        sock.setsockopt(zmq.HEARTBEAT_TTL, max(100, round(ttl_s * 1000)))
    # TCP keepalive catches a dead link even when the ZMTP heartbeat is off; the kernel's
    # retransmission limit (TCP_USER_TIMEOUT via TCP_MAXRT) stops a cut link from waiting on
    # backoff for tens of seconds.
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, max(1, round(link.timeout_s)))
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    sock.setsockopt(zmq.TCP_MAXRT, max(1000, round(link.timeout_s * 2000)))
    # A connection made during a partition may stall in its handshake, where ZMTP heartbeats do
    # not run yet: give up on it after a few timeouts (libzmq's default is 30 s) and redial.
    sock.setsockopt(zmq.HANDSHAKE_IVL, max(5000, round(link.timeout_s * 3000)))
