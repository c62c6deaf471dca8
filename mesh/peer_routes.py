"""Which connection a ROUTER talks to for each peer name, when a name may be claimed twice.

A dialling socket's routing identity is its peer name (``role:name``) followed by a tag of its
own, random and never shown to anyone: two sockets claiming one name (a restarted process whose
old connection lingers, two agents given the same id, a key holder pretending to be another
peer) reach the ROUTER as two distinct connections, and every message of both is read. Left to
libzmq, a second connection under a live identity is never read from, and what it sends stays
in the ROUTER's memory for good, even after it closes.

The first connection heard under a name keeps it while it is connected: messages from any
other connection under that name are dropped, and sends to the name go to the first. When
another connection speaks, the first is asked whether it is still there (``alive``, at most
once per ``probe_every_s`` per name); once it is gone, the newcomer takes the name over. On a
link with keys, a connection whose key is that name's own (``rightful``) takes the name at
once from one whose key is not: a key holder squatting on another peer's name while that peer
was away cannot lock it out. A pure object with an injected clock; it keeps at most
``capacity`` names, forgetting the one heard from longest ago.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable

# A tag is a zero byte and 16 hex digits. A name typed on a command line cannot hold a zero
# byte, and libzmq's own generated identities (a zero byte and four bytes) are shorter.
TAG_BYTES = 17
DEFAULT_CAPACITY = 16_384
DEFAULT_PROBE_EVERY_S = 0.1


def tagged(name: str) -> bytes:
    """A fresh routing identity for a socket that dials under ``name``."""
    return name.encode() + b"\x00" + secrets.token_hex(8).encode()


def name_of(routing_id: bytes) -> bytes:
    """The peer name in a routing identity: the identity itself when it has no tag."""
    if len(routing_id) > TAG_BYTES and routing_id[-TAG_BYTES] == 0:
        return routing_id[:-TAG_BYTES]
    return routing_id


def owns(key_name: str | None, routing_id: bytes) -> bool:
    """Whether the key named ``key_name`` may hold the peer name in ``routing_id``: its own name, a
    profiler name of its agent (``profiler:A:...`` for ``agent:A``), or any ``cli:`` name for an
    operator's. Names of several connections at once (profilers, command lines) are not issued as
    keys: without this rule none would ever be rightful, and another key dialling first kept them."""
    if key_name is None:
        return False
    name = name_of(routing_id).decode("utf-8", "replace")
    if name == key_name:
        return True
    role, _, who = key_name.partition(":")
    return (role == "agent" and name.startswith(f"profiler:{who}:")) or (role == "operator" and name.startswith("cli:"))


class PeerRoutes:
    """Owned by one ROUTER endpoint; used from one thread."""

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY, probe_every_s: float = DEFAULT_PROBE_EVERY_S) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._probe_every_s = probe_every_s
        # name -> (routing identity holding it, whether its key is that name's own)
        self._holder: OrderedDict[bytes, tuple[bytes, bool]] = OrderedDict()
        self._probed: dict[bytes, float] = {}  # name -> when its holder was last asked
        self.dropped = 0  # messages from a connection that did not hold its name
        self.taken_over = 0  # names a newcomer took: its holder gone, or under another key than its own

    def __len__(self) -> int:
        return len(self._holder)

    def heard(self, routing_id: bytes, now: float, alive: Callable[[bytes], bool], *,
              rightful: bool = False) -> bytes | None:
        """A message came in on ``routing_id``: the peer name to hand it on under, or None to drop it.

        ``rightful``: the connection's key is the one issued under the name it claims."""
        name = name_of(routing_id)
        held = self._holder.get(name)
        if held is not None and held[0] == routing_id:
            self._holder.move_to_end(name)
            return name
        if held is not None and not (rightful and not held[1]):
            if now - self._probed.get(name, -float("inf")) < self._probe_every_s:
                self.dropped += 1
                return None
            self._probed[name] = now
            if alive(held[0]):
                self.dropped += 1
                return None
        if held is not None:
            self.taken_over += 1
            self._probed.pop(name, None)
        self._holder[name] = (routing_id, rightful)
        self._holder.move_to_end(name)
        while len(self._holder) > self._capacity:
            gone, _ = self._holder.popitem(last=False)
            self._probed.pop(gone, None)
        return name

    def route(self, name: bytes) -> bytes:
        """The routing identity a send to ``name`` goes to (``name`` itself when never heard)."""
        held = self._holder.get(name)
        return name if held is None else held[0]
