"""How `letmesh bandit report` words its estimates."""

from __future__ import annotations

from letmesh.bandit_report import format_report


def family(ips: float) -> dict:
    estimate = {"ips": ips, "ips_stderr": 0.6, "snips": 0.81, "dr": 0.79, "dr_stderr": 0.05}
    return {"families": [{"family": "digits", "model_version": 3, "updates": 40, "decisions": 12, "preferences": [],
                          "estimates": {"logged": 0.7, "deployed": estimate, "greedy": estimate}}]}


def test_an_ips_past_the_rewards_range_is_shown_beside_snips_and_explained() -> None:
    text = format_report(family(2.265))
    assert "IPS 2.265 ± 1.176   SNIPS 0.810   DR 0.790 ± 0.098" in text
    assert "SNIPS divides by those weights" in text
    assert "SNIPS divides" not in format_report(family(0.9))
