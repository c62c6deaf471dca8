"""The ``letmesh`` command: one subcommand per role, plus ``up``, ``demo``, ``status`` and ``zoo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from mesh.config import ConfigError, load_config


def _run_role(coro_factory) -> int:
    """Run a role's main coroutine on uvloop until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await coro_factory(stop)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    from controller.config import ControllerConfig
    from controller.service import run_controller

    config = load_config(ControllerConfig, toml_path=args.config, flags=vars(args), section="controller")
    if not config.repository:
        print("letmesh controller: --repository is required (or [controller] repository in the config)", file=sys.stderr)
        return 2
    return _run_role(lambda stop: run_controller(config, stop))


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig
    from gateway.service import run_gateway

    config = load_config(GatewayConfig, toml_path=args.config, flags=vars(args), section="gateway")
    return _run_role(lambda stop: run_gateway(config, stop))


def cmd_agent(args: argparse.Namespace) -> int:
    from agents.config import AgentConfig
    from agents.service import run_agent

    config = load_config(AgentConfig, toml_path=args.config, flags=vars(args), section="agent")
    return _run_role(lambda stop: run_agent(config, stop))


def _ensure_repository(args: argparse.Namespace) -> Path:
    if args.repository:
        return Path(args.repository)
    from letmesh.zoo import build_zoo

    repo = Path(args.state_dir) / "repository"
    print(f"building the demo model repository in {repo} (first run trains the models) ...", flush=True)
    build_zoo(repo, progress=lambda line: print(f"  {line}", flush=True))
    return repo


def cmd_up(args: argparse.Namespace) -> int:
    from letmesh.launcher import LaunchError, LocalMesh

    repo = _ensure_repository(args)
    mesh = LocalMesh(repository=repo, state_dir=Path(args.state_dir), http_port=args.http_port,
                     controller_port=args.controller_port, log_level=args.log_level, quiet=False)
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("starting controller, gateway and agent ...", flush=True)
    try:
        mesh.start(timeout_s=args.ready_timeout)
    except LaunchError as exc:
        print(f"letmesh up: {exc}", file=sys.stderr)
        return 1
    print(f"\nletmesh is up.\n  inference (Open Inference Protocol): {mesh.http_url}/v2/models/<model>/infer\n"
          f"  models: curl -X POST {mesh.http_url}/v2/repository/index\n"
          f"  status: letmesh status --controller {mesh.controller_address}\n  Ctrl-C stops the mesh.\n", flush=True)
    try:
        while not stop["now"]:
            for role, proc in list(mesh.procs.items()):
                if proc.poll() is not None:
                    print(f"letmesh up: {role} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    stop["now"] = True
            time.sleep(0.2)
    finally:
        print("stopping the mesh ...", flush=True)
        mesh.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from letmesh.demo import run_demo

    repo = _ensure_repository(args)
    return run_demo(repo, Path(args.state_dir), requests=args.requests, concurrency=args.concurrency)


def cmd_status(args: argparse.Namespace) -> int:
    from letmesh.status import StatusUnavailable, fetch_status, format_status

    try:
        status = fetch_status(args.controller, timeout_s=args.timeout)
    except StatusUnavailable as exc:
        print(f"letmesh status: {exc}", file=sys.stderr)
        return 1
    print(format_status(status))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from letmesh.profiles import fetch_profiles, format_profiles, wait_for_profiles
    from letmesh.status import StatusUnavailable

    try:
        reply = fetch_profiles(args.controller, rerun=args.rerun)
        if args.rerun or args.wait:
            reply = wait_for_profiles(args.controller, timeout_s=args.wait_timeout)
    except StatusUnavailable as exc:
        print(f"letmesh profile: {exc}", file=sys.stderr)
        return 1
    print(format_profiles(reply))
    return 0


def cmd_bandit_report(args: argparse.Namespace) -> int:
    from letmesh.bandit_report import report

    try:
        print(report(Path(args.state_dir), family=args.family, limit=args.limit))
    except FileNotFoundError as exc:
        print(f"letmesh bandit report: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_replan(args: argparse.Namespace) -> int:
    from letmesh.status import StatusUnavailable, ask_controller
    from protocol.message import Replan, ReplanReply

    try:
        reply = ask_controller(args.controller, Replan(policy=args.policy or ""), ReplanReply)
    except StatusUnavailable as exc:
        print(f"letmesh replan: {exc}", file=sys.stderr)
        return 1
    if not reply.accepted:
        print(f"letmesh replan: {reply.message}", file=sys.stderr)
        return 2
    print(f"re-planning with policy {reply.policy}; watch it with: letmesh status --controller {args.controller}")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from letmesh.zoo import build_zoo

    manifests = build_zoo(Path(args.dir), progress=lambda line: print(line, flush=True))
    if args.synthetic:
        from letmesh.costly import build_costly

        manifests += build_costly(Path(args.dir), progress=lambda line: print(line, flush=True))
    for m in manifests:
        print(f"{m['variant']:<16} {m['family']:<8} accuracy {m['accuracy']:.3f}  max batch {m['max_batch']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="letmesh", description="An inference-serving mesh.")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("controller", help="run the controller")
    c.add_argument("--config", help="TOML file with a [controller] table")
    c.add_argument("--bind", default=None, help="control socket, e.g. tcp://127.0.0.1:5555")
    c.add_argument("--advertise", default=None, help="address workers dial, if not the bound one")
    c.add_argument("--repository", default=None, help="model repository folder")
    c.add_argument("--state-dir", default=None)
    c.set_defaults(func=cmd_controller)

    g = sub.add_parser("gateway", help="run a gateway (Open Inference Protocol over HTTP)")
    g.add_argument("--config", help="TOML file with a [gateway] table")
    g.add_argument("--controller", default=None)
    g.add_argument("--http-host", default=None)
    g.add_argument("--http-port", type=int, default=None)
    g.add_argument("--data-bind", default=None, help="data socket workers dial, e.g. tcp://127.0.0.1:5556")
    g.add_argument("--data-advertise", default=None, help="data address workers dial, if not the bound one")
    g.add_argument("--gateway-id", default=None)
    g.set_defaults(func=cmd_gateway)

    a = sub.add_parser("agent", help="run the device agent of this host")
    a.add_argument("--config", help="TOML file with an [agent] table")
    a.add_argument("--controller", default=None)
    a.add_argument("--agent-id", default=None)
    a.add_argument("--state-dir", default=None)
    a.add_argument("--max-cores", type=int, default=None)
    a.set_defaults(func=cmd_agent)

    for name, func, helptext in (("up", cmd_up, "run a whole mesh on this machine"),
                                 ("demo", cmd_demo, "run a mesh, send held-out digits through it, report")):
        u = sub.add_parser(name, help=helptext)
        u.add_argument("--repository", default=None, help="model repository (default: build the demo one)")
        u.add_argument("--state-dir", default=".letmesh")
        if name == "up":
            u.add_argument("--http-port", type=int, default=8000)
            u.add_argument("--controller-port", type=int, default=5555)
            u.add_argument("--ready-timeout", type=float, default=180.0)
        else:
            u.add_argument("--requests", type=int, default=300)
            u.add_argument("--concurrency", type=int, default=8)
        u.set_defaults(func=func)

    s = sub.add_parser("status", help="print agents, workers and models")
    s.add_argument("--controller", default="tcp://127.0.0.1:5555")
    s.add_argument("--timeout", type=float, default=3.0)
    s.set_defaults(func=cmd_status)

    pr = sub.add_parser("profile", help="show measured profiles; --rerun measures every device again")
    pr.add_argument("--controller", default="tcp://127.0.0.1:5555")
    pr.add_argument("--rerun", action="store_true", help="re-measure every variant on every live device")
    pr.add_argument("--wait", action="store_true", help="wait until profiling in progress has finished")
    pr.add_argument("--wait-timeout", type=float, default=900.0)
    pr.set_defaults(func=cmd_profile)

    rp = sub.add_parser("replan", help="re-plan the mesh now (optionally with another planner policy)")
    rp.add_argument("--controller", default="tcp://127.0.0.1:5555")
    rp.add_argument("--policy", default=None, help="gpulet, temporal, whole or static")
    rp.set_defaults(func=cmd_replan)

    b = sub.add_parser("bandit", help="the contextual-bandit variant selector")
    bsub = b.add_subparsers(dest="bandit_command", required=True)
    br = bsub.add_parser("report", help="learned preferences and offline estimates from the decision log")
    br.add_argument("--state-dir", default=".letmesh", help="the controller's state folder")
    br.add_argument("--family", default=None)
    br.add_argument("--limit", type=int, default=20_000, help="newest logged decisions to evaluate on")
    br.set_defaults(func=cmd_bandit_report)

    from letmesh.capacity import add_plan_arguments, run_plan
    from letmesh.simulator import add_simulate_arguments, run_simulate

    pl = sub.add_parser("plan", help="the layout a workload would get, and how many devices it needs")
    add_plan_arguments(pl)
    pl.set_defaults(func=run_plan)
    sm = sub.add_parser("simulate", help="replay arrivals through the planned layout (discrete-event simulation)")
    add_simulate_arguments(sm)
    sm.set_defaults(func=run_simulate)

    z = sub.add_parser("zoo", help="demo model repository")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zb = zsub.add_parser("build", help="train the demo models into DIR")
    zb.add_argument("dir")
    zb.add_argument("--synthetic", action="store_true",
                    help="also build the 'synth' family, costly enough per request to overload a small machine")
    zb.set_defaults(func=cmd_zoo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"letmesh: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
