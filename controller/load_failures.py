"""Variants set aside because a worker (or a profiling run) could not load them, and their return on
an operator's re-plan.

Synchronous bookkeeping over the registry's variants: the control plane moves the messages and
asks for the re-plan and profiling that follow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from controller.registry import Registry
from controller.repository import Variant, set_aside
from protocol.message import ProfileDevice

log = logging.getLogger("controller.control_plane")  # the controller's log: one name for what it says


class LoadFailures:
    """Variants a worker (or its agent) reported it cannot load. Not thread-safe; the actor owns it."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._aside: dict[str, Variant] = {}

    def report(self, kind: str, peer_id: str, variant: str, reason: str,
               profiling: Iterable[ProfileDevice] = ()) -> bool:
        """Set ``variant`` aside on a report from ``peer_id`` (a worker, or an agent, placed it, or the
        agent is profiling it: ``profiling`` are its runs in flight); True when it was servable until
        now. A peer it was not placed on, nor asked to measure it, changes nothing."""
        reg = self._registry
        placed = reg.workers_of(peer_id) if kind == "agent" else [reg.workers.get(peer_id)]
        measuring = kind == "agent" and any(v.name == variant for run in profiling for v in run.variants)
        if not measuring and not any(w is not None and variant in w.plan.variants for w in placed):
            return False
        held = reg.variants.get(variant)
        if not set_aside(reg.variants, reg.unavailable, variant, reason):
            return False
        self._aside[variant] = held
        return True

    def restore(self) -> list[str]:
        """Serve again, in the next plan, every variant set aside on such a report (an operator
        asking for a re-plan may have fixed the host: a full disk, a driver); one the repository
        itself refused stays aside until the controller reads it again. Returns their names."""
        reg, restored = self._registry, sorted(self._aside)
        for name in restored:
            reg.variants[name] = self._aside[name]
            reg.unavailable.pop(name, None)
        self._aside.clear()
        if restored:
            log.info("re-plan asked for: trying again %s", ", ".join(restored))
        return restored
