"""``letmesh up`` and ``letmesh demo``: a whole mesh on this machine as child processes.

``up`` checks its config file and every port before it starts anything, says each start-up
milestone, and exits non-zero, stopping the rest, when a role dies.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
import time
from pathlib import Path

from mesh.config import load_config


class BuildFailed(Exception):
    """The demo model repository could not be built (the child's exit status in the message)."""


def _build_demo(repo: str) -> None:
    """In a child process: torch and the trained models leave with it, rather than stay in the
    launcher for as long as the mesh runs (about 600 MB). The launcher decides on Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from letmesh.zoo import build_zoo

    build_zoo(Path(repo), progress=lambda line: print(f"  {line}", flush=True))


def _ensure_repository(args: argparse.Namespace) -> Path:
    if args.repository:
        return Path(args.repository)
    repo = Path(args.state_dir) / "repository"
    if any(repo.glob("*/manifest.json")):  # built before: only checked (and a missing model trained)
        print(f"checking the demo model repository in {repo} ...", flush=True)
    else:
        print(f"building the demo model repository in {repo} (the first run trains the models) ...", flush=True)
    child = multiprocessing.get_context("spawn").Process(target=_build_demo, args=(str(repo),), name="letmesh-zoo")
    child.start()
    try:
        child.join()
    finally:  # interrupted (a signal handler raised): the build stops with the launcher
        if child.exitcode is None:
            child.terminate()
            child.join()
    if child.exitcode != 0:
        raise BuildFailed(f"building the demo model repository in {repo} failed (exit status {child.exitcode})")
    return repo


def _placement(args: argparse.Namespace) -> tuple[str, int, int]:
    """(HTTP host, HTTP port, controller port) for ``up``, from its flags, else the config file
    and environment, else the defaults. Checks every table of the config file on the way, so a bad
    value stops ``up`` (ConfigError) before anything starts."""
    from agents.config import AgentConfig
    from controller.config import ControllerConfig
    from gateway.config import GatewayConfig

    load_config(AgentConfig, toml_path=args.config, section="agent")
    controller = load_config(ControllerConfig, toml_path=args.config, section="controller")
    gateway = load_config(GatewayConfig, toml_path=args.config, section="gateway",
                          flags={"http_host": args.http_host, "http_port": args.http_port})
    controller_port = args.controller_port
    if controller_port is None:
        tail = controller.bind.rsplit(":", 1)[-1]
        controller_port = int(tail) if tail.isdigit() else 5555
    return gateway.http_host, gateway.http_port, controller_port


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stopped_code(signum: int) -> int:
    """Ctrl-C: 130, as a shell reports a command interrupted; SIGTERM (a service manager stopping
    it) is a clean stop, as it is once the mesh is up."""
    return 128 + signal.SIGINT if signum == signal.SIGINT else 0


def cmd_up(args: argparse.Namespace) -> int:
    from letmesh.launcher import LaunchError, LocalMesh
    from letmesh.port import PortsClash, PortTaken

    http_host, http_port, controller_port = _placement(args)
    repo = Path(args.repository) if args.repository else Path(args.state_dir) / "repository"
    mesh = LocalMesh(repository=repo, state_dir=Path(args.state_dir), http_host=http_host, http_port=http_port,
                     controller_port=controller_port, log_level=args.log_level, quiet=False,
                     secure=not args.insecure, config_path=Path(args.config) if args.config else None,
                     metrics=True, onnx_upgrade=args.onnx_upgrade)
    try:  # before the demo models are trained, and again (inside start) just before the roles bind
        mesh.check_ports()
    except PortTaken as exc:
        print(f"letmesh up: {exc}; nothing was started (--http-port and --controller-port choose others)",
              file=sys.stderr)
        return 1
    except PortsClash as exc:
        print(f"letmesh up: {exc}; nothing was started (--http-port and --controller-port choose them)",
              file=sys.stderr)
        return 2
    from controller.state_lock import StateDirInUse, check_free

    try:  # another mesh's controller on this state directory (its own ports)
        check_free(args.state_dir)
    except StateDirInUse as exc:
        print(f"letmesh up: {exc}; nothing was started", file=sys.stderr)
        return 1
    from controller.error import RepositoryError
    from controller.repository import check_root

    def interrupt(signum, frame):  # while the demo models train: stop at once (the next run resumes)
        raise _Interrupted(signum)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        check_root(_ensure_repository(args))
    except RepositoryError as exc:
        print(f"letmesh up: {exc}; nothing was started", file=sys.stderr)
        return 2
    except BuildFailed as exc:
        print(f"letmesh up: {exc}; nothing was started", file=sys.stderr)
        return 1
    except _Interrupted as exc:
        print("letmesh up: stopped while preparing the model repository; nothing was started", file=sys.stderr)
        return _stopped_code(exc.signum)
    stop = {"now": False, "signal": 0}

    def on_signal(signum, frame):
        stop["now"], stop["signal"] = True, signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("starting controller, gateway and agent ...", flush=True)
    try:
        mesh.start(timeout_s=args.ready_timeout, progress=lambda line: print(f"  {line}", flush=True),
                   cancelled=lambda: stop["now"])
    except PortTaken as exc:
        print(f"letmesh up: {exc}; nothing was left running", file=sys.stderr)
        return 1
    except LaunchError as exc:
        if stop["now"]:
            print("letmesh up: stopped before the mesh was ready; nothing was left running", file=sys.stderr, flush=True)
            return _stopped_code(stop["signal"])
        print(f"letmesh up: {exc}\nletmesh up: stopped every role it had started", file=sys.stderr)
        return 1
    links = (f"  links are CURVE-encrypted; keys in {mesh.keys_dir} (letmesh keys list --keys {mesh.keys_dir})\n"
             if mesh.keys_dir else "  links are plaintext (--insecure)\n")
    keys = f" --keys {mesh.keys_dir}" if mesh.keys_dir else ""
    print(f"\nletmesh is up.\n  inference (Open Inference Protocol): {mesh.http_url}/v2/models/<model>/infer\n"
          f"  models: curl -X POST {mesh.http_url}/v2/repository/index\n"
          f"  status: letmesh status --controller {mesh.controller_address}{keys}\n"
          f"  metrics: {mesh.http_url}/metrics (gateway)  {mesh.metrics_url('controller')} (controller)  "
          f"{mesh.metrics_url('agent')} (agent)\n"
          f"  dashboard: {mesh.http_url}/dashboard\n"
          f"{links}"
          f"  Ctrl-C stops the mesh.\n", flush=True)
    code = 0
    try:
        while not stop["now"]:
            died = mesh.exited()
            if died is not None:
                print(f"letmesh up: {died}\nletmesh up: stopping the other roles", file=sys.stderr, flush=True)
                code = 1
                break
            time.sleep(0.2)
    finally:
        print("stopping the mesh ...", flush=True)
        mesh.stop()
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from letmesh.demo import run_demo

    try:
        repo = _ensure_repository(args)
    except BuildFailed as exc:
        print(f"letmesh demo: {exc}", file=sys.stderr)
        return 1
    return run_demo(repo, Path(args.state_dir), requests=args.requests, concurrency=args.concurrency,
                    config_path=Path(args.config) if args.config else None)
