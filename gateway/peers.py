"""Which worker connections the gateway's data socket listens to, on a mesh with keys.

A worker authenticates with its own credential, a key pair its agent made for that one process;
the controller tells the gateway which agents are authorised and which worker credentials it
has let in (``AuthorizedAgents``), and which agent runs which worker (``WorkerRoute.agent_id``).
A message from socket identity ``worker:W`` is accepted only from W's own credential, and only
while it and W's agent are authorised. Pure and synchronous; without keys (no authenticated
name) everything is accepted, as before.
"""

from __future__ import annotations

from collections.abc import Mapping

from mesh.keys import AuthorizedKeys
from protocol.message import RoutingTable


class WorkerPeers:
    """Owned by the gateway; updated by its controller link, asked by the data plane."""

    def __init__(self, authorized: AuthorizedKeys | None = None) -> None:
        # The data socket's ZAP handler reads the same object: one list for handshakes and messages.
        self.authorized = authorized or AuthorizedKeys()
        self._owner: dict[str, str] = {}
        self.refused = 0

    def agents_changed(self, keys: Mapping[str, str], workers: Mapping[str, str] | None = None) -> None:
        """The controller's lists of authorised agents (name -> public key) and of the workers'
        credentials (worker id -> public key)."""
        self.authorized.replace({key: f"agent:{name}" for name, key in keys.items()})
        self.authorized.replace_issued({f"worker:{w}": key for w, key in (workers or {}).items()})

    def routes_changed(self, table: RoutingTable) -> None:
        self._owner = {r.worker_id: r.agent_id for r in table.workers if r.agent_id}

    def accepts(self, worker_id: str, peer_name: str | None) -> bool:
        if peer_name is None:
            return True
        owner = self._owner.get(worker_id)  # None: not routed yet (its hello and heartbeats come first)
        ok = (peer_name == f"worker:{worker_id}" and self.authorized.allowed(peer_name)
              and (owner is None or self.authorized.allowed(f"agent:{owner}")))
        if not ok:
            self.refused += 1
        return ok
