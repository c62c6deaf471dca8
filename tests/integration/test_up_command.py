"""`letmesh up` brings a mesh up saying each step, says where to send requests, and stops it all on
SIGTERM; it refuses a taken port before starting anything, and a role that dies stops the rest
with a non-zero exit that names the role and shows its last words."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from letmesh.launcher import free_port, http_status
from tests.integration.conftest import processes_mentioning, wait_until

QUICK_PROFILING = {"LETMESH_CONTROLLER_PROFILE_REPEATS": "3", "LETMESH_CONTROLLER_PROFILE_COLOCATION": "0"}


def start_up(repo: Path, state: Path, *extra: str, http_port: int | None = None, controller_port: int | None = None,
             stderr_path: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "letmesh", "up", "--repository", str(repo), "--state-dir", str(state),
            "--http-port", str(http_port or free_port()), "--controller-port", str(controller_port or free_port()),
            "--ready-timeout", "120", *extra]
    # stderr to a file: the roles' logs pass through it, and a pipe nobody reads would fill and stall them
    with stderr_path.open("w") as err:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=dict(os.environ, **QUICK_PROFILING))


def read_until_up(proc: subprocess.Popen) -> str:
    lines = []
    for line in iter(proc.stdout.readline, ""):  # bounded by --ready-timeout: up exits if not ready by then
        lines.append(line)
        if "Ctrl-C stops the mesh" in line:
            break
    return "".join(lines)


def role_pid(marker: str, role: str) -> int:
    for pid in processes_mentioning(marker):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"letmesh" in argv and role.encode() in argv and b"up" not in argv:
            return pid
    raise AssertionError(f"no {role} process")


def finish(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    proc.stdout.close()


def test_up_says_each_step_serves_and_sigterm_leaves_no_process_behind(tmp_path, trivial_repo) -> None:
    state = tmp_path / "state"
    http_port = free_port()
    proc = start_up(trivial_repo, state, http_port=http_port, stderr_path=tmp_path / "stderr")
    try:
        out = read_until_up(proc)
        assert "letmesh is up" in out and f"http://127.0.0.1:{http_port}/v2/models/<model>/infer" in out, out
        steps = ["controller up at tcp://127.0.0.1:", "agent local registered: cpu", "workers ready: 1/1",
                 f"gateway ready at http://127.0.0.1:{http_port}", "letmesh is up"]
        positions = [out.find(step) for step in steps]
        assert -1 not in positions and positions == sorted(positions), out
        assert http_status(f"http://127.0.0.1:{http_port}/v2/health/ready") == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        finish(proc)
    wait_until(lambda: not processes_mentioning(str(state.resolve())), timeout_s=10)


def test_up_on_the_demo_repository_does_not_keep_torch_loaded_while_the_mesh_runs(tmp_path, digits_repo) -> None:
    """Checking (or training) the demo models imports torch; done in the launcher itself, that
    held ~320 MB (~600 MB after training) for as long as the mesh ran. It is done in a child."""
    state = tmp_path / "state"
    shutil.copytree(digits_repo, state / "repository")
    argv = [sys.executable, "-m", "letmesh", "up", "--state-dir", str(state), "--http-port", str(free_port()),
            "--controller-port", str(free_port()), "--ready-timeout", "120"]
    with (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=dict(os.environ, **QUICK_PROFILING))
    try:
        out = read_until_up(proc)
        assert "digits-cnn (4/4) up to date" in out and "letmesh is up" in out, out
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "onnxruntime" not in maps
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        finish(proc)
    wait_until(lambda: not processes_mentioning(str(state.resolve())), timeout_s=10)


def test_up_on_a_taken_port_names_it_and_its_holder_and_starts_nothing(tmp_path, trivial_repo) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for flag, purpose in (("http_port", "gateway HTTP"), ("controller_port", "controller")):
            state = tmp_path / f"state-{flag}"
            proc = start_up(trivial_repo, state, **{flag: port}, stderr_path=tmp_path / "stderr")
            try:
                assert proc.wait(60) == 1
                assert proc.stdout.read() == ""
            finally:
                finish(proc)
            err = (tmp_path / "stderr").read_text()
            assert f"port {port} ({purpose}, 127.0.0.1) is already in use, held by pid {os.getpid()}" in err, err
            assert "nothing was started" in err
            assert not state.exists() and not processes_mentioning(str(state.resolve()))


def test_a_role_that_dies_before_ready_fails_up_with_its_last_words(tmp_path, trivial_repo) -> None:
    config = tmp_path / "letmesh.toml"
    config.write_text(f'[gateway]\ntokens_file = "{tmp_path / "absent.toml"}"\n')
    state = tmp_path / "state"
    proc = start_up(trivial_repo, state, "--config", str(config), stderr_path=tmp_path / "stderr")
    try:
        assert proc.wait(120) == 1
    finally:
        finish(proc)
    err = (tmp_path / "stderr").read_text()
    assert "letmesh up: gateway exited with code 2 before the mesh was ready; its last lines:" in err, err
    last_words = err.split("its last lines:", 1)[1]
    assert "cannot read tokens file" in last_words and str(tmp_path / "absent.toml") in last_words, err
    wait_until(lambda: not processes_mentioning(str(state.resolve())), timeout_s=10)


def test_a_role_that_dies_after_ready_stops_the_rest_and_up_exits_1(tmp_path, trivial_repo) -> None:
    state = tmp_path / "state"
    marker = str(state.resolve())
    # --log-level after the subcommand reaches the roles: their INFO lines pass through up's stderr
    proc = start_up(trivial_repo, state, "--log-level", "info", stderr_path=tmp_path / "stderr")
    try:
        assert "letmesh is up" in read_until_up(proc)
        os.kill(role_pid(marker, "agent"), signal.SIGKILL)
        assert proc.wait(60) == 1, "up must fail when a role dies"
    finally:
        finish(proc)
    err = (tmp_path / "stderr").read_text()
    assert "letmesh up: agent exited with code -9; its last lines:" in err, err
    assert "stopping the other roles" in err
    assert " INFO " in err, "roles started by up --log-level info log at INFO"
    wait_until(lambda: not processes_mentioning(marker), timeout_s=10)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)])  # Ctrl-C; systemd, docker stop
def test_a_signal_before_the_mesh_is_ready_stops_it_and_leaves_nothing_running(tmp_path, trivial_repo, sig, code) -> None:
    state = tmp_path / "state"
    proc = start_up(trivial_repo, state, stderr_path=tmp_path / "stderr")
    try:
        for line in iter(proc.stdout.readline, ""):
            if "starting controller, gateway and agent" in line:
                break
        proc.send_signal(sig)
        assert proc.wait(60) == code
    finally:
        finish(proc)
    err = (tmp_path / "stderr").read_text()
    assert "letmesh up: stopped before the mesh was ready; nothing was left running" in err, err
    wait_until(lambda: not processes_mentioning(str(state.resolve())), timeout_s=10)


@pytest.mark.parametrize("command, sig, code, said", [
    ("up", signal.SIGINT, 130, "letmesh up: stopped while preparing the model repository; nothing was started"),
    ("up", signal.SIGTERM, 0, "letmesh up: stopped while preparing the model repository; nothing was started"),
    ("demo", signal.SIGINT, 130, "letmesh demo: interrupted"),
])
def test_a_signal_while_the_demo_models_train_stops_at_once(tmp_path, command, sig, code, said) -> None:
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "letmesh", command, "--state-dir", str(state)]
    if command == "up":
        argv += ["--http-port", str(free_port()), "--controller-port", str(free_port())]
    with (tmp_path / "stderr").open("w") as err:
        # As from a terminal: SIGINT at its default, even where this run inherited it ignored (a
        # background job of a script). A command left to Python's own Ctrl-C handling keeps it so.
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in iter(proc.stdout.readline, ""):
            if line.strip().startswith("training "):  # inside the first model's training
                break
        else:
            raise AssertionError("the demo repository build never started training")
        proc.send_signal(sig)
        assert proc.wait(30) == code  # not after the remaining models have trained
    finally:
        finish(proc)
    err = (tmp_path / "stderr").read_text()
    assert said in err and "Traceback" not in err, err
    wait_until(lambda: not processes_mentioning(str(state.resolve())), timeout_s=10)
