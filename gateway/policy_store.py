"""Policy replicas: the gateway decides variants locally from the controller's latest snapshots.

No controller round trip per request: the controller pushes a snapshot of each family's learned
policy when it changes, and the gateway swaps it in. Until a family's first snapshot arrives,
a fresh policy with the same arguments decides (it explores among the candidates evenly).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence

from mesh.bandit import DEFAULT_VW_ARGS, BadModel, BanditPolicy, Candidate, ContextValue, Decision

log = logging.getLogger(__name__)


class PolicyReplicas:
    """One BanditPolicy per family. Not thread-safe; used from the gateway's event loop."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._policies: dict[str, BanditPolicy] = {}
        self.versions: dict[str, int] = {}
        self._rng = random.Random(seed)

    def new_controller(self) -> None:
        """A different controller answers now: its next snapshots are taken whatever their versions."""
        self.versions.clear()

    def apply_snapshot(self, family: str, version: int, vw_args: str, model: bytes) -> bool:
        """Install a newer snapshot; an older or unloadable one is ignored. True if installed."""
        if version <= self.versions.get(family, -1):
            return False
        try:
            policy = BanditPolicy(vw_args, model=model)
        except BadModel:
            log.warning("ignored a policy snapshot VW cannot load", extra={"family": family, "version": version})
            return False
        old = self._policies.get(family)
        self._policies[family] = policy
        self.versions[family] = version
        if old is not None:
            old.close()
        return True

    def decide(
        self, family: str, context: Mapping[str, ContextValue], budget_ms: float, load: float,
        candidates: Sequence[Candidate],
    ) -> Decision:
        policy = self._policies.get(family)
        if policy is None:
            policy = self._policies[family] = BanditPolicy(DEFAULT_VW_ARGS)
            self.versions.setdefault(family, 0)
        return policy.decide(context, budget_ms, load, candidates, rng=self._rng)

    def close(self) -> None:
        for policy in self._policies.values():
            policy.close()
        self._policies.clear()
