"""The ``letmesh`` command line itself: what it imports to start, its global options and its errors."""

from __future__ import annotations

import subprocess
import sys
import typing
from importlib.metadata import version
from pathlib import Path

import pytest

from agents.config import AgentConfig
from controller.config import ControllerConfig
from controller.planning import POLICIES
from gateway.config import GatewayConfig
from gateway.selection import SELECTION_MODES
from letmesh.cli import build_parser, main
from letmesh.commands.planning import PLANNER_POLICIES
from letmesh.launcher import free_port
from mesh.batching import POLICIES as BATCHING_POLICIES
from mesh.config import load_config

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("scipy", "torch", "sklearn", "vowpalwabbit")


def loaded_after(code: str) -> set[str]:
    """Which of HEAVY a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_importing_the_cli_loads_no_scipy_torch_or_vowpal_wabbit() -> None:
    assert loaded_after("import letmesh.cli") == set()


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["plan", "--help"], ["keys", "list", "--keys", "/nonexistent"]])
def test_building_the_parser_and_light_commands_load_no_heavy_library(argv: list[str]) -> None:
    code = f"import contextlib, io\nfrom letmesh.cli import main\nwith contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n    main({argv!r})"
    assert loaded_after(code) == set()


def test_the_probe_sees_a_heavy_import_when_there_is_one() -> None:
    assert "scipy" in loaded_after("import letmesh.capacity")


def test_the_parsers_planner_policies_are_the_planners() -> None:
    assert PLANNER_POLICIES == POLICIES


# --- global options ------------------------------------------------------------------------------


def letmesh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "letmesh", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("argv", "level", "config"),
    [
        (["status"], "WARNING", None),
        (["status", "--log-level", "debug"], "DEBUG", None),
        (["--log-level", "error", "bandit", "report"], "ERROR", None),
        (["--log-level", "error", "keys", "list", "--log-level", "info"], "INFO", None),
        (["gateway", "--config", "c.toml", "--http-port", "1"], "WARNING", "c.toml"),
        (["--config", "c.toml", "up", "--log-level", "Info"], "INFO", "c.toml"),
    ],
)
def test_global_options_are_taken_before_or_after_the_command(argv: list[str], level: str, config: str | None) -> None:
    args = build_parser().parse_args(argv)
    assert (args.log_level, args.config) == (level, config)


@pytest.mark.parametrize("argv", [["gateway", "--log-level", "loud"], ["--log-level", "loud", "status"]])
def test_a_bad_log_level_is_a_usage_error_not_a_traceback(argv: list[str]) -> None:
    proc = letmesh(*argv)
    assert proc.returncode == 2
    assert "'loud' is not a log level: DEBUG, INFO, WARNING, ERROR" in proc.stderr and "usage:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_names_the_installed_package() -> None:
    proc = letmesh("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"letmesh {version('letmesh')} (Python ")


# --- config files --------------------------------------------------------------------------------


def test_every_role_config_loads_its_defaults_and_offers_the_choices_the_code_knows() -> None:
    for cls in (ControllerConfig, GatewayConfig, AgentConfig):
        assert load_config(cls, env={}) == cls()

    def choices(cls: type, field: str) -> tuple:
        return typing.get_args(typing.get_type_hints(cls)[field])

    assert choices(GatewayConfig, "selection") == SELECTION_MODES
    assert choices(ControllerConfig, "planner") == (*POLICIES, "static")
    assert choices(ControllerConfig, "batching") == BATCHING_POLICIES


@pytest.mark.parametrize(
    ("command", "toml", "message"),
    [
        (["gateway"], '[gateway]\nselection = "best"\n',
         "letmesh gateway: config: gateway.selection: 'best' is not one of bandit, accurate"),
        (["controller", "--repository", "/nonexistent"], "[controller]\nreplan_period_s = 0\n",
         "letmesh controller: config: controller.replan_period_s: must be greater than 0, got 0.0"),
        (["agent"], "[agent]\nmax_cores = -2\n", "letmesh agent: config: agent.max_cores: must be at least 0, got -2"),
        (["up", "--repository", "/nonexistent"], "[gateway]\nhttp_port = 80000\n",
         "letmesh up: config: gateway.http_port: must be at most 65535, got 80000"),
        (["up", "--repository", "/nonexistent"], "[agent]\nheartbeat_interval = 1\n",
         "letmesh up: config: agent.heartbeat_interval: unknown key; did you mean 'heartbeat_interval_s'?"),
        (["up", "--repository", "/nonexistent"], "[gatway]\nhttp_port = 9000\n",
         "letmesh up: config: gatway: unknown table (the tables are agent, controller, gateway); did you mean [gateway]?"),
        (["agent"], "[controller]\nreplan_period_s = 5\n[logging]\nlevel = 1\n",
         "letmesh agent: config: logging: unknown table"),
    ],
)
def test_a_bad_config_file_is_exit_2_naming_key_and_problem_before_anything_starts(
    tmp_path: Path, capsys, command: list[str], toml: str, message: str
) -> None:
    path = tmp_path / "letmesh.toml"
    path.write_text(toml)
    state = tmp_path / "state"
    extra = ["--state-dir", str(state)] if command[0] in ("up", "controller", "agent") else []
    assert main([*command, *extra, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and str(path) in err, err
    assert not state.exists()


@pytest.mark.parametrize("command", [["up"], ["controller"]])
@pytest.mark.parametrize("where, message", [("missing", "is not a folder"), ("empty", "holds no */manifest.json")])
def test_a_repository_that_is_not_one_is_exit_2_with_one_line_before_anything_starts(
        tmp_path: Path, capsys, command: list[str], where: str, message: str) -> None:
    repo = tmp_path / where
    if where == "empty":
        (repo / "not-a-variant").mkdir(parents=True)
    state = tmp_path / "state"
    extra = ["--http-port", str(free_port()), "--controller-port", str(free_port())] if command == ["up"] else []
    assert main([*command, "--repository", str(repo), "--state-dir", str(state), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"letmesh {command[0]}: model repository {repo} {message}"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, usage", [(["up", "--bogus-flag"], "usage: letmesh up"),
                                         (["status", "--bogus", "x"], "usage: letmesh status"),
                                         (["bandit", "report", "--bogus"], "usage: letmesh bandit report")])
def test_an_unknown_flag_is_exit_2_with_the_commands_own_usage(capsys, argv: list[str], usage: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"{usage.removeprefix('usage: ')}: error: unrecognized arguments: {' '.join(argv[len(usage.split()) - 2:])}" in err


@pytest.mark.parametrize("argv, message", [
    (["gateway", "--controller", "127.0.0.1:5555"],
     "letmesh gateway: config: gateway.controller: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME, got "
     "'127.0.0.1:5555'; did you mean tcp://127.0.0.1:5555?"),
    (["agent", "--controller", "tcp://127.0.0.1"], "letmesh agent: config: agent.controller: expected tcp://HOST:PORT"),
    (["controller", "--bind", "localhost:5555"], "letmesh controller: config: controller.bind: expected tcp://"),
])
def test_an_address_without_scheme_or_port_is_exit_2_before_anything_starts(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err, err


def test_a_role_whose_port_is_taken_says_which_and_by_whom_and_exits_1(tmp_path: Path, capsys) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["gateway", "--http-port", str(port), "--data-bind", f"tcp://127.0.0.1:{free_port()}"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"letmesh gateway: port {port} (gateway HTTP, 127.0.0.1) is already in use, held by pid"), err
        assert main(["gateway", "--http-port", str(free_port()), "--data-bind", f"tcp://127.0.0.1:{port}"]) == 1
        assert f"port {port} (gateway data, 127.0.0.1) is already in use" in capsys.readouterr().err
        repo = tmp_path / "repo" / "m"
        repo.mkdir(parents=True)
        (repo / "manifest.json").write_text("{}")
        assert main(["controller", "--bind", f"tcp://127.0.0.1:{port}", "--repository", str(repo.parent),
                     "--state-dir", str(tmp_path / "state")]) == 1
        assert f"letmesh controller: port {port} (controller, 127.0.0.1) is already in use" in capsys.readouterr().err


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:5555", "letmesh status: cannot dial '127.0.0.1:5555'"),
])
def test_status_at_an_address_that_cannot_be_dialled_is_one_line_not_a_traceback(capsys, address: str, message: str) -> None:
    assert main(["status", "--controller", address, "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


PLAN_INPUTS = [f"--{flag}={ROOT / path}" for flag, path in (
    ("workload", "examples/workload.toml"), ("devices", "examples/devices.toml"),
    ("profiles", "benchmarks/data/gpu_profile.csv"))]


def test_a_reader_that_goes_away_stops_the_output_quietly() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "letmesh", "plan", *PLAN_INPUTS, "--no-search"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head -0` does: every write now fails with EPIPE
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


def test_plan_and_simulate_refuse_a_json_path_they_cannot_write_before_running(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere" / "out.json"
    for command, extra in (("plan", []), ("simulate", ["--poisson"])):
        assert main([command, *PLAN_INPUTS, *extra, "--json", str(missing)]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"letmesh {command}: --json {missing}: folder {missing.parent} does not exist")
        assert captured.out == ""  # refused before it planned or simulated anything


def test_simulate_shows_no_attainment_for_a_variant_that_got_no_request(tmp_path, capsys) -> None:
    workload = tmp_path / "workload.toml"
    workload.write_text('[[models]]\nvariant = "resnet50"\nrate_rps = 50\nslo_ms = 108\n\n'
                        '[[models]]\nvariant = "vgg16"\nrate_rps = 0\nslo_ms = 142\n')
    code = main(["simulate", f"--workload={workload}", f"--devices={ROOT / 'examples/devices.toml'}",
                 f"--profiles={ROOT / 'benchmarks/data/gpu_profile.csv'}", "--poisson", "--duration-s", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    (row,) = [line for line in out.splitlines() if line.startswith("vgg16 ")]
    assert row.split()[1:4] == ["142", "0", "-"], row


@pytest.mark.parametrize("argv", [
    ["status", "--timeout", "-1"],  # waited forever
    ["status", "--timeout", "nan"],
    ["profile", "--wait-timeout", "inf"],
    ["simulate", "--workload", "w.toml", "--devices", "d.toml", "--poisson", "--duration-s", "inf"],  # never ended
    ["simulate", "--workload", "w.toml", "--devices", "d.toml", "--poisson", "--max-wait-ms", "nan"],
    ["up", "--controller-port", "70000"], ["up", "--controller-port", "-1"], ["agent", "--metrics-port", "0"],
    ["demo", "--requests", "0"], ["demo", "--concurrency", "-1"],
    ["plan", "--workload", "w.toml", "--devices", "d.toml", "--max-batch", "0"],
    ["tokens", "add", "x", "--rate", "-5"],
], ids=lambda argv: " ".join(argv[:1] + argv[-2:]))
def test_a_number_out_of_its_range_is_a_usage_error_naming_the_flag(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    flag = next(a for a in reversed(argv) if a.startswith("--"))
    assert f"argument {flag}" in capsys.readouterr().err


def test_files_that_are_not_what_a_command_needs_are_said_so_without_a_traceback(tmp_path, capsys) -> None:
    not_text = tmp_path / "workload.toml"
    not_text.write_bytes(b"\xff\xfe\x00")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for argv, says in ((["plan", "--workload", str(not_text), "--devices", str(not_text)], "not UTF-8"),
                       (["zoo", "build", str(a_file)], str(a_file)),
                       (["keys", "init", str(a_file)], str(a_file)),
                       (["tokens", "add", "x", "--file", str(tmp_path / "no" / "such" / "t.toml")], "no")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err


def test_up_given_one_port_for_two_roles_says_so_before_starting_anything(tmp_path: Path, capsys) -> None:
    port = free_port()
    state = tmp_path / "state"
    assert main(["up", "--http-port", str(port), "--controller-port", str(port), "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"letmesh up: controller and gateway HTTP would both bind port {port}; nothing was started"), err
    assert not (state / "repository").exists()  # not even the demo models were built
