"""The controller's side of the keys: who is let in (the keyring and the workers' own
credentials), what a refused message is answered, and what the gateways are told. Synchronous:
the controller actor sends what these return. Without keys (a plaintext loopback mesh) every
message passes and nothing is told.
"""

from __future__ import annotations

from controller.access import refusal
from controller.credentials import WorkerCredentials
from controller.registry import Registry
from controller.store import StateStore
from mesh.keys import Keyring, ServerKeys, with_server_key
from protocol.message import AuthorizedAgents, ErrorReply


class Trust:
    """Owned by the controller actor; not thread-safe (the ZAP handler reads the keyring's
    authorised set, which is)."""

    def __init__(self, keyring: Keyring | None, registry: Registry, store: StateStore) -> None:
        self.keyring = keyring
        self._registry = registry
        self._store = store
        self.credentials = WorkerCredentials(keyring.authorized) if keyring is not None else None
        self._told = 0  # the authorised set's version the gateways were last told
        if self.credentials is not None:
            self.credentials.restore(registry, store.credentials())

    def server_keys(self) -> ServerKeys | None:
        return self.keyring.server_keys() if self.keyring is not None else None

    def refresh(self) -> None:
        if self.keyring is not None:
            self.keyring.refresh()

    def allowed(self, name: str) -> bool:
        return self.keyring is None or self.keyring.authorized.allowed(name)

    def refused(self, peer: bytes, peer_name: str | None, msg: object) -> ErrorReply | None:
        """The answer to a message its sender's key does not allow, or None when it may be handled."""
        reg = self._registry
        why = refusal(peer.decode(errors="replace"), peer_name, msg, allowed=self.allowed,
                      agent_of_worker=lambda w: reg.workers[w].plan.agent_id if w in reg.workers else None)
        if why is None:
            return None
        return ErrorReply(code="unauthorized" if self.allowed(peer_name or "") else "revoked", message=why)

    def gateway_endpoint(self, data_endpoint: str, peer_name: str | None) -> str:
        """A gateway's data address with its public key, so workers check they reach that gateway."""
        if self.keyring is None:
            return data_endpoint
        return with_server_key(data_endpoint, self.keyring.authorized.key_of(peer_name or "") or "")

    def worker_reported(self, agent_id: str, worker_id: str, public_key: str) -> bool:
        """An agent reports the key it issued to a worker (started, or running when it registered)."""
        return self.credentials is not None and self.credentials.reported(self._registry, agent_id, worker_id,
                                                                          public_key)

    def tick(self, now: float) -> list[str]:
        """Re-read the keyring; agents whose keys were revoked are lost at once and their
        workers' credentials withdrawn. Returns the agents newly revoked."""
        if self.keyring is None or self.credentials is None:
            return []
        self.keyring.refresh()
        reg = self._registry
        revoked = reg.revoked([a for a in reg.agents if not self.allowed(f"agent:{a}")], now)
        self.credentials.sync(reg)  # workers gone, or their agent revoked
        return revoked

    def revoked_gateways(self) -> list[str]:
        """Registered gateways whose keys are no longer authorised (as of the last ``tick``)."""
        if self.keyring is None:
            return []
        return sorted(g for g in self._registry.gateways if not self.allowed(f"gateway:{g}"))

    def told(self) -> AuthorizedAgents | None:
        """What a registering gateway is told (None without keys)."""
        if self.keyring is None or self.credentials is None:
            return None
        return AuthorizedAgents(keys=self.keyring.authorized.of_role("agent"), workers=self.credentials.by_worker())

    def changes(self) -> AuthorizedAgents | None:
        """What every gateway must be told when a key was added or revoked or a worker's credential
        changed since they were last told (None when nothing did). The workers' credentials are
        saved with the plan of record then, so a restarted controller lets those workers back in."""
        if self.keyring is None or self.keyring.authorized.version == self._told:
            return None
        self._told = self.keyring.authorized.version
        msg = self.told()
        assert msg is not None
        self._store.save_credentials(msg.workers)
        return msg
