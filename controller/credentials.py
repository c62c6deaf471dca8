"""Workers' own credentials: which worker processes the controller (and, through it, the
gateways) let in, and under which name. Pure and synchronous; the controller actor moves the
messages.

An agent makes a fresh CURVE key pair for each worker process it launches and reports the
public key (``WorkerStarted.public_key``, or ``RunningWorker.public_key`` when it registers).
The key is let in as ``worker:<id>`` only when the reporting agent is the one the plan of record
runs that worker on, and only while the worker is in the registry, not stopped or crashed, and
its agent's own key is authorised: a credential lives as long as one worker process, and a
revoked agent takes its workers' credentials with it.
"""

from __future__ import annotations

from zmq.utils import z85

from controller.registry import Registry
from mesh.keys import AuthorizedKeys
from protocol.types import WorkerState

_GONE = frozenset({WorkerState.STOPPED, WorkerState.CRASHED})


def valid_key(text: str) -> bool:
    """A CURVE public key in z85 text: 40 characters that decode to 32 bytes."""
    if len(text) != 40:
        return False
    try:
        return len(z85.decode(text)) == 32
    except (ValueError, KeyError, TypeError):
        return False


class WorkerCredentials:
    """Owned by the controller actor; not thread-safe (the ZAP handler reads ``authorized``, which is)."""

    def __init__(self, authorized: AuthorizedKeys) -> None:
        self.authorized = authorized

    def reported(self, registry: Registry, agent_id: str, worker_id: str, public_key: str) -> bool:
        """An agent reports the key it issued to a worker; True when the credentials changed."""
        record = registry.workers.get(worker_id)
        if not public_key or record is None or record.plan.agent_id != agent_id or not valid_key(public_key):
            return False
        if public_key in {k for n, k in self.authorized.issued().items() if n != f"worker:{worker_id}"}:
            return False  # another worker's key: one key, one worker
        return self.authorized.issue(f"worker:{worker_id}", public_key)

    def sync(self, registry: Registry) -> bool:
        """Withdraw credentials of workers that are gone, or whose agent is no longer authorised;
        True when anything changed."""
        changed = False
        for name in self.authorized.issued():
            worker_id = name.removeprefix("worker:")
            record = registry.workers.get(worker_id)
            if (record is None or record.state in _GONE
                    or not self.authorized.allowed(f"agent:{record.plan.agent_id}")):
                changed |= self.authorized.withdraw(name)
        return changed

    def restore(self, registry: Registry, saved: dict[str, str]) -> None:
        """After a restart: let back in the saved credentials of workers in the restored plan."""
        for worker_id, key in saved.items():
            if worker_id in registry.workers and valid_key(key):
                self.authorized.issue(f"worker:{worker_id}", key)

    def by_worker(self) -> dict[str, str]:
        """worker id -> public key, for the gateways."""
        return {n.removeprefix("worker:"): k for n, k in self.authorized.issued().items()}
