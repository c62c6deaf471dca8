"""``letmesh controller``, ``gateway`` and ``agent``: one role per process, until SIGINT or SIGTERM.

A command module: parses nothing (``letmesh.cli`` does), builds the role's config and runs it.
Heavy role packages are imported inside the commands, so other commands start fast.
"""

from __future__ import annotations

import argparse
import signal
import sys

from mesh.config import load_config


def _run_role(role: str, coro_factory) -> int:
    """Run a role's main coroutine on uvloop until SIGINT or SIGTERM; a clean stop is logged at INFO."""
    import asyncio  # here, not at the top: commands that run no role start without it
    import logging

    log = logging.getLogger(f"letmesh.{role}")

    def stopping(signum: int) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        stop.set()

    async def main() -> None:
        from mesh import heap

        heap.settle()  # the role's packages are imported: collections walk only what it allocates since
        nonlocal stop
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping, sig)
        await coro_factory(stop)
        log.info("stopped cleanly")

    stop = None
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    return 0


def _set_cpu_policy(role: str, policy: str) -> None:
    """This process's scheduling policy (mesh.cpu_policy), before the role starts its threads."""
    import logging

    from mesh import cpu_policy

    problem = cpu_policy.apply(policy)
    if problem:
        logging.getLogger(f"letmesh.{role}").warning("CPU policy not set: %s", problem)


def _tcp_port(address: str) -> tuple[str, int]:
    """(host, port) a ``tcp://HOST:PORT`` bind address listens on; port 0 for one that checks nothing."""
    bare = address.partition(" curve=")[0]
    if not bare.startswith("tcp://"):
        return "", 0
    host, _, port = bare.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")
    return ("0.0.0.0" if host == "*" else host), (int(port) if port.isdigit() else 0)


def _ports_taken(role: str, ports: list[tuple[str, int, str]]) -> bool:
    """Say which port another process holds (and who), as ``up`` does, rather than fail mid-start."""
    from letmesh.port import PortTaken, check_free

    for host, port, purpose in ports:
        try:
            check_free(host or "0.0.0.0", port, purpose)  # "": every interface, as the servers read it
        except PortTaken as exc:
            print(f"letmesh {role}: {exc}", file=sys.stderr)
            return True
        except OSError:  # a name the probe cannot resolve (a ZeroMQ interface name): the bind decides
            continue
    return False


def _refuse_plaintext(addresses: list[str], config, role: str, name: str = "") -> None:
    """Stop before starting when the role would talk plaintext beyond this host, or its keys are not there."""
    from mesh import keys

    keys.refuse_plaintext(addresses, config.keys_dir, config.insecure, role)
    if config.keys_dir and role == "controller":
        keys.Keyring(config.keys_dir)
    elif config.keys_dir:
        keys.client_keys(config.keys_dir, role, name)


def cmd_controller(args: argparse.Namespace) -> int:
    from controller.config import ControllerConfig
    from controller.error import RepositoryError
    from controller.repository import check_root
    from controller.service import run_controller
    from controller.state_lock import StateDirInUse, hold

    config = load_config(ControllerConfig, toml_path=args.config, flags=vars(args), section="controller")
    if not config.repository:
        print("letmesh controller: --repository is required (or [controller] repository in the config)", file=sys.stderr)
        return 2
    _refuse_plaintext([config.bind], config, "controller")
    try:
        check_root(config.repository)
    except RepositoryError as exc:
        print(f"letmesh controller: {exc}", file=sys.stderr)
        return 2
    try:
        lock = hold(config.state_dir)  # held until this process ends
    except StateDirInUse as exc:
        print(f"letmesh controller: {exc}", file=sys.stderr)
        return 2
    with lock:
        if _ports_taken("controller", [(*_tcp_port(config.bind), "controller"),
                                       (config.metrics_host, config.metrics_port, "controller metrics")]):
            return 1
        return _run_role("controller", lambda stop: run_controller(config, stop))


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig
    from gateway.service import run_gateway

    config = load_config(GatewayConfig, toml_path=args.config, flags=vars(args), section="gateway")
    _refuse_plaintext([config.controller, config.data_bind], config, "gateway", config.gateway_id)
    from gateway.access import AccessError, load_tokens
    from gateway.service import tls_context

    try:  # a bad tokens file or certificate stops the start, with the reason
        if config.tokens_file:
            load_tokens(config.tokens_file)
        tls_context(config.tls_cert, config.tls_key)
    except AccessError as exc:
        print(f"letmesh gateway: {exc}", file=sys.stderr)
        return 2
    if _ports_taken("gateway", [(config.http_host, config.http_port, "gateway HTTP"),
                                (config.http_host, config.metrics_port, "gateway metrics"),
                                (*_tcp_port(config.data_bind), "gateway data")]):
        return 1
    _set_cpu_policy("gateway", config.cpu_policy)
    return _run_role("gateway", lambda stop: run_gateway(config, stop))


def cmd_agent(args: argparse.Namespace) -> int:
    from agents.config import AgentConfig
    from agents.service import run_agent

    config = load_config(AgentConfig, toml_path=args.config, flags=vars(args), section="agent")
    _refuse_plaintext([config.controller], config, "agent", config.agent_id)
    if _ports_taken("agent", [(config.metrics_host, config.metrics_port, "agent metrics")]):
        return 1
    return _run_role("agent", lambda stop: run_agent(config, stop))
