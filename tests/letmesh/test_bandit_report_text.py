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



def test_a_family_with_no_model_and_no_decisions_says_so_naming_the_known_ones(tmp_path, capsys) -> None:
    from controller.store import StateStore
    from letmesh.cli import main

    StateStore(tmp_path / "controller.sqlite3").close()  # a controller's (empty) state
    (tmp_path / "bandit").mkdir()
    (tmp_path / "bandit" / "digits.vw").write_bytes(b"")
    # Not an error: the family may simply not have had a request yet (this state cannot tell).
    assert main(["bandit", "report", "--state-dir", str(tmp_path), "--family", "nope"]) == 0
    out = capsys.readouterr().out
    assert "nothing to report yet: no model and no logged decision for 'nope'" in out
    assert "or the name is not a family's (families with a model: digits)" in out


def test_a_limit_below_one_is_a_usage_error(tmp_path, capsys) -> None:
    from letmesh.cli import main

    for limit in ("0", "-5"):
        assert main(["bandit", "report", "--state-dir", str(tmp_path), "--limit", limit]) == 2
        assert "--limit must be at least 1" in capsys.readouterr().err
