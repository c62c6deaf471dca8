"""Who may say what to the controller, decided from the sender's authenticated name.

Pure: a function of the routing identity, the authenticated name (``role:name`` from the
sender's CURVE key, None on a plaintext link), the message, and what the registry knows.
Without keys every message passes (the loopback mesh of old); with keys:

- a socket identity must match the key: ``agent:A`` and ``gateway:G`` only with that agent's
  or gateway's key, ``worker:W`` only with the credential its agent issued to that worker
  process (``controller.credentials``), ``profiler:A:...`` only with agent A's key, ``cli:...``
  only with an operator key;
- what a message body says about its sender must match too (RegisterAgent.agent_id, the
  worker an agent reports on);
- status is answered to operators and gateways (a gateway's dashboard shows it), profiles and
  re-plans to operators only, artifacts to agents and workers only, and what happens to a
  worker is reported by its own agent only.
"""

from __future__ import annotations

from collections.abc import Callable

from protocol.message import (
    FetchArtifact,
    GetProfiles,
    GetStatus,
    RegisterAgent,
    RegisterGateway,
    Replan,
    VariantLoadFailed,
    WorkerCrashed,
    WorkerStarted,
    WorkerStopped,
)

_OPERATOR_ONLY = (GetProfiles, Replan)
_ABOUT_A_WORKER = (WorkerStarted, WorkerStopped, WorkerCrashed, VariantLoadFailed)


def refusal(
    peer: str, peer_name: str | None, msg: object, *, allowed: Callable[[str], bool],
    agent_of_worker: Callable[[str], str | None],
) -> str | None:
    """Why ``msg`` from ``peer`` is refused, or None when it may be handled."""
    if peer_name is None:
        return None
    if not allowed(peer_name):
        return f"{peer_name} is no longer authorised"
    role, _, name = peer_name.partition(":")
    kind, _, peer_id = peer.partition(":")
    if kind in ("agent", "gateway"):
        if peer_name != f"{kind}:{peer_id}":
            return f"identity {peer!r} does not match the key of {peer_name}"
    elif kind == "worker":
        if peer_name != f"worker:{peer_id}":
            return f"identity {peer!r} does not match the key of {peer_name}"
    elif kind == "profiler":
        if role != "agent" or peer_id.partition(":")[0] != name:
            return f"identity {peer!r} does not match the key of {peer_name}"
    elif kind == "cli":
        if role != "operator":
            return f"{peer_name} is not an operator"
    else:
        return f"unknown kind of peer {peer!r}"
    if isinstance(msg, _OPERATOR_ONLY) and role != "operator":
        return f"{type(msg).__name__} is answered to operators only"
    if isinstance(msg, GetStatus) and role not in ("operator", "gateway"):
        return "GetStatus is answered to operators and gateways only"
    if isinstance(msg, FetchArtifact) and role not in ("agent", "worker"):
        return "artifacts are served to agents and their workers only"
    if isinstance(msg, RegisterAgent) and msg.agent_id != name:
        return f"registration names agent {msg.agent_id!r} but the key is {peer_name}"
    if isinstance(msg, RegisterGateway) and msg.gateway_id != name:
        return f"registration names gateway {msg.gateway_id!r} but the key is {peer_name}"
    if isinstance(msg, _ABOUT_A_WORKER):
        owner = agent_of_worker(msg.worker_id)
        if kind == "worker":  # a worker reports only a variant it could not load, of itself
            if not isinstance(msg, VariantLoadFailed) or msg.worker_id != peer_id:
                return f"{peer_name} may not report {type(msg).__name__} on worker {msg.worker_id!r}"
        elif kind != "agent" or (owner is not None and owner != name):
            return f"worker {msg.worker_id!r} is not run by {peer_name}"
    return None
