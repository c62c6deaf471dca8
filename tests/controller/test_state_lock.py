"""One controller per state directory: the lock, as a second controller or `letmesh up` meets it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.state_lock import StateDirInUse, check_free, hold
from letmesh.cli import main
from letmesh.launcher import free_port
from letmesh.zoo import build_trivial


def test_a_held_state_directory_is_refused_naming_the_holder_until_it_is_let_go(tmp_path: Path) -> None:
    state = tmp_path / "state"
    check_free(tmp_path / "never-made")  # no lock file: free, and nothing is created
    assert not (tmp_path / "never-made").exists()
    held = hold(state)
    try:
        for attempt in (hold, check_free):
            with pytest.raises(StateDirInUse, match=f"in use by another controller \\(pid {os.getpid()}\\)"):
                attempt(state)
    finally:
        held.close()
    check_free(state)
    hold(state).close()


@pytest.mark.parametrize("command", ["controller", "up"])
def test_a_second_controller_on_a_state_directory_stops_before_it_starts(tmp_path: Path, capsys,
                                                                         command: str) -> None:
    repo, state = tmp_path / "repo", tmp_path / "state"
    build_trivial(repo)
    ports = ["--http-port", str(free_port()), "--controller-port", str(free_port())] if command == "up" else \
        ["--bind", f"tcp://127.0.0.1:{free_port()}"]
    with hold(state):
        code = main([command, "--repository", str(repo), "--state-dir", str(state), "--insecure", *ports])
    assert code == (2 if command == "controller" else 1)
    err = capsys.readouterr().err
    assert err.startswith(f"letmesh {command}: state directory {state} is in use by another controller"), err
    assert sorted(p.name for p in state.iterdir()) == ["controller.lock"]  # nothing else was made
