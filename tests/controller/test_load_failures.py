"""Variants set aside on a worker's load failure, and restored on an operator's re-plan, on a real registry."""

from __future__ import annotations

from controller.load_failures import LoadFailures
from controller.registry import Registry
from tests.controller.test_registry import CPU, INTERVAL_S, MISSED, plan, variant


def test_a_load_failure_sets_aside_only_what_the_peer_hosts_and_a_replan_restores_it() -> None:
    reg = Registry({"small": variant("small"), "large": variant("large")}, heartbeat_interval_s=INTERVAL_S,
                   missed_heartbeats=MISSED)
    reg.agent_registered("a1", "host-1", CPU, 0.0)
    reg.plan_worker(plan("a1.w0", "a1", "small"))
    reg.unavailable["broken"] = "sha256 mismatch"  # refused by the repository scan
    failures = LoadFailures(reg)

    assert not failures.report("worker", "a1.w0", "large", "forged"), "a1.w0 does not host large"
    assert not failures.report("agent", "a2", "small", "forged"), "a2 runs no worker of small"
    assert failures.report("worker", "a1.w0", "small", "OSError: no space")
    assert not failures.report("agent", "a1", "small", "again"), "already aside"
    assert "small" not in reg.variants and reg.unavailable["small"] == "OSError: no space"

    assert failures.restore() == ["small"]
    assert "small" in reg.variants and set(reg.unavailable) == {"broken"}
    assert failures.restore() == []
