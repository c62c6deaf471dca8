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


def test_a_damaged_model_is_a_note_in_the_report_not_a_traceback(tmp_path, capsys) -> None:
    from controller.learner import Learner
    from controller.store import StateStore
    from letmesh.cli import main
    from tests.controller.test_controller_bandit import records

    store = StateStore(tmp_path / "controller.sqlite3")
    learner = Learner(tmp_path)
    learner.learn(store.log_decisions(list(records(30, seed=1, prefix="e")), 1.0))
    learner.publish()
    learner.close()
    store.close()
    (tmp_path / "bandit" / "trivial.vw").write_bytes(b"\x00garbage")  # a disk fault, a stray copy

    assert main(["bandit", "report", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "family trivial: model v1, 30 updates, 30 logged decisions used here" in out
    assert "cannot be loaded" in out and "starts this family afresh" in out

