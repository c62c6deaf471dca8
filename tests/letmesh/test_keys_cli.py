"""The ``letmesh keys`` command and the refusal to talk plaintext beyond this host."""

from __future__ import annotations

from pathlib import Path

from letmesh.cli import main


def test_keys_init_add_list_revoke(tmp_path: Path, capsys) -> None:
    ring = tmp_path / "keys"
    assert main(["keys", "init", str(ring)]) == 0
    assert main(["keys", "add", "agent", "edge1", "--keys", str(ring)]) == 0
    out = capsys.readouterr().out
    assert str(ring / "hosts" / "agent-edge1") in out
    assert (ring / "hosts" / "agent-edge1" / "agent-edge1.key_secret").is_file()
    assert main(["keys", "list", "--keys", str(ring)]) == 0
    listed = capsys.readouterr().out.split()
    assert "edge1" in listed and "local" in listed
    assert main(["keys", "revoke", "edge1", "--keys", str(ring)]) == 0
    assert capsys.readouterr().out.startswith("revoked agent 'edge1': a running controller refuses it within a heartbeat")
    assert main(["keys", "list", "--keys", str(ring)]) == 0
    assert "edge1" not in capsys.readouterr().out
    assert main(["keys", "revoke", "edge1", "--keys", str(ring)]) == 1
    assert "no authorised key" in capsys.readouterr().err


def test_revoke_names_the_role_once_and_what_it_does_to_that_role(tmp_path: Path, capsys) -> None:
    ring = tmp_path / "keys"
    assert main(["keys", "init", str(ring)]) == 0
    for role, name in (("gateway", "gw"), ("operator", "ops")):
        assert main(["keys", "add", role, name, "--keys", str(ring)]) == 0
    capsys.readouterr()
    assert main(["keys", "revoke", "gateway:gw", "--keys", str(ring)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("revoked gateway 'gw': ") and "gateway:gw" not in out and "503" in out
    assert main(["keys", "revoke", "ops", "--keys", str(ring)]) == 0
    assert capsys.readouterr().out == "revoked operator 'ops': its next connection to a running controller is refused\n"


def test_a_role_refuses_a_remote_address_without_keys_unless_told_insecure(capsys) -> None:
    assert main(["agent", "--controller", "tcp://192.0.2.1:5555"]) == 2
    err = capsys.readouterr().err
    assert "192.0.2.1" in err and "--keys" in err and "--insecure" in err
    assert main(["gateway", "--data-bind", "tcp://0.0.0.0:5556"]) == 2
    assert main(["controller", "--bind", "tcp://0.0.0.0:5555", "--repository", "/nonexistent"]) == 2


def test_a_role_without_its_key_pair_says_how_to_issue_one(tmp_path: Path, capsys) -> None:
    ring = tmp_path / "keys"
    assert main(["keys", "init", str(ring)]) == 0
    capsys.readouterr()
    assert main(["agent", "--controller", "tcp://192.0.2.1:5555", "--agent-id", "nobody", "--keys", str(ring)]) == 2
    assert "letmesh keys add agent nobody" in capsys.readouterr().err
    assert main(["controller", "--repository", "/x", "--keys", str(tmp_path / "none")]) == 2
    assert "letmesh keys init" in capsys.readouterr().err
