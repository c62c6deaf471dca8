"""The ``letmesh`` command: the argument parser and dispatch to ``letmesh.commands``.

Option definitions live here; what each command does lives in ``letmesh.commands.<concern>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from letmesh.arg_types import PORT, SECONDS, number, whole
from letmesh.commands import credential, planning, query, repository, role, up
from mesh.config import ConfigError
from mesh.log_format import FORMAT_ENV, FORMATS, configure as configure_logging

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level: {', '.join(LOG_LEVELS)}")
    return level


def _global_options(p: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    """Options every command takes, before or after its name (``letmesh gateway --log-level INFO``).

    The top parser holds the defaults; a command's parser defaults to SUPPRESS, so it sets a value
    only when the option is given after the command's name and never overwrites one given before.
    """

    def default(value):
        return value if with_defaults else argparse.SUPPRESS

    p.add_argument("--log-level", type=_log_level, default=default("WARNING"), metavar="LEVEL",
                   help="DEBUG, INFO, WARNING (default) or ERROR")
    p.add_argument("--log-format", choices=FORMATS, default=default(None),
                   help="text (default; a line's fields as key=value after the message) or json (one object "
                        f"per line); also ${FORMAT_ENV}")
    p.add_argument("--config", default=default(None), metavar="FILE",
                   help="TOML file with [controller], [gateway] and [agent] tables (read by the roles and by up)")


def _accept_global_options_everywhere(p: argparse.ArgumentParser) -> None:
    """Give every command's parser, at any depth (``bandit report``), the global options.

    Walking the finished tree means a command added later needs no extra line to get them. It
    reads argparse's ``_actions``, stable since subparsers exist, as no public API lists them.
    """
    seen: set[int] = set()
    todo = [p]
    while todo:
        parser = todo.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    if id(child) not in seen:
                        seen.add(id(child))
                        _global_options(child, with_defaults=False)
                        # The deepest command parsed sets the last: its usage goes with an error.
                        child.set_defaults(command_parser=child)
                        todo.append(child)


class _Version(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("letmesh")
        except PackageNotFoundError:
            text = "(not installed)"
        print(f"letmesh {text} (Python {sys.version.split()[0]})")
        parser.exit()


def _security_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", dest="keys_dir", default=None,
                   help="keys folder (letmesh keys): CURVE-encrypt and authenticate every link")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="allow plaintext, unauthenticated links on a non-loopback address")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="letmesh", description="An inference-serving mesh.")
    p.add_argument("--version", action=_Version, help="print the version and exit")
    _global_options(p, with_defaults=True)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("controller", help="run the controller")
    c.add_argument("--bind", default=None, help="control socket, e.g. tcp://127.0.0.1:5555")
    c.add_argument("--advertise", default=None, help="address workers dial, if not the bound one")
    c.add_argument("--repository", default=None, help="model repository folder")
    c.add_argument("--state-dir", default=None, help="where the plan, profiles and decision log live (default: .letmesh)")
    c.add_argument("--metrics-port", type=PORT, default=None, help="serve Prometheus /metrics on this port (default: off)")
    _security_flags(c)
    c.set_defaults(func=role.cmd_controller)

    g = sub.add_parser("gateway", help="run a gateway (Open Inference Protocol over HTTP)")
    g.add_argument("--controller", default=None, help="the controller's address (default: tcp://127.0.0.1:5555)")
    g.add_argument("--http-host", default=None, help="address the HTTP API listens on (default: 127.0.0.1)")
    g.add_argument("--http-port", type=PORT, default=None, help="port of the HTTP API (default: 8000)")
    g.add_argument("--data-bind", default=None, help="data socket workers dial, e.g. tcp://127.0.0.1:5556")
    g.add_argument("--data-advertise", default=None, help="data address workers dial, if not the bound one")
    g.add_argument("--gateway-id", default=None, help="this gateway's name in the mesh (default: the host name)")
    g.add_argument("--metrics-port", type=PORT, default=None,
                   help="serve /metrics on this port too, without the API's tokens (it is always on the HTTP port)")
    _security_flags(g)
    g.add_argument("--tokens-file", default=None, help="bearer tokens for HTTP clients (see README); none: open")
    g.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM), with --tls-key")
    g.add_argument("--tls-key", default=None, help="the private key (PEM) of --tls-cert")
    g.add_argument("--strict-readiness", action="store_true", default=None,
                   help="ready only when every variant has a live worker (default: every family can be served)")
    g.set_defaults(func=role.cmd_gateway)

    a = sub.add_parser("agent", help="run the device agent of this host")
    a.add_argument("--controller", default=None, help="the controller's address (default: tcp://127.0.0.1:5555)")
    a.add_argument("--agent-id", default=None, help="this host's name in the mesh (default: one kept in STATE_DIR)")
    a.add_argument("--state-dir", default=None, help="where the agent keeps its id and artifacts (default: .letmesh)")
    a.add_argument("--max-cores", type=whole(0), default=None, help="cores of this host the agent offers (default: all)")
    a.add_argument("--max-memory-mb", type=whole(0), default=None,
                   help="memory of this host the agent offers its workers (default: all, or its cgroup's limit)")
    a.add_argument("--onnx-upgrade", action="store_true", default=None,
                   help="serve TorchScript variants through ONNX Runtime where that answers the same and is faster here")
    a.add_argument("--artifact-cache-mb", type=whole(0), default=None,
                   help="keep the artifact cache within this size, removing what nothing here uses "
                        "(default: 10240; 0: no bound)")
    a.add_argument("--metrics-port", type=PORT, default=None, help="serve Prometheus /metrics on this port (default: off)")
    _security_flags(a)
    a.set_defaults(func=role.cmd_agent)

    for name, func, helptext in (("up", up.cmd_up, "run a whole mesh on this machine"),
                                 ("demo", up.cmd_demo, "run a mesh, send held-out digits through it, report")):
        u = sub.add_parser(name, help=helptext)
        u.add_argument("--repository", default=None, help="model repository (default: build the demo one)")
        u.add_argument("--state-dir", default=".letmesh", help="the mesh's state, keys and demo repository (default: .letmesh)")
        if name == "up":
            u.add_argument("--http-host", default=None,
                           help="address the gateway listens on (default: [gateway] http_host, else 127.0.0.1)")
            u.add_argument("--http-port", type=PORT, default=None, help="default: [gateway] http_port, else 8000")
            u.add_argument("--controller-port", type=PORT, default=None,
                           help="default: the port of [controller] bind, else 5555")
            u.add_argument("--ready-timeout", type=SECONDS, default=180.0,
                           help="seconds to wait for the first placement to serve before giving up (default: 180)")
            u.add_argument("--onnx-upgrade", action="store_true",
                           help="the agent serves TorchScript variants through ONNX Runtime where that answers the "
                                "same and is faster here (default: [agent] onnx_upgrade, else off)")
            u.add_argument("--insecure", action="store_true",
                           help="plaintext links without keys (default: CURVE with a keyring in STATE_DIR/keys)")
        else:
            u.add_argument("--requests", type=whole(1), default=300, help="requests of the sample traffic (default: 300)")
            u.add_argument("--concurrency", type=whole(1), default=8, help="requests in flight at once (default: 8)")
        u.set_defaults(func=func)

    s = sub.add_parser("status", help="print agents, workers and models")
    s.add_argument("--controller", default="tcp://127.0.0.1:5555", help="the controller's address (default: %(default)s)")
    s.add_argument("--timeout", type=SECONDS, default=3.0, help="seconds to wait for its answer (default: %(default)s)")
    s.add_argument("--keys", default=None, help="keys folder with an operator key (default: $LETMESH_KEYS_DIR, else .letmesh/keys)")
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s.set_defaults(func=query.cmd_status)

    pr = sub.add_parser("profile", help="show measured profiles; --rerun measures every device again")
    pr.add_argument("--controller", default="tcp://127.0.0.1:5555", help="the controller's address (default: %(default)s)")
    pr.add_argument("--rerun", action="store_true", help="re-measure every variant on every live device")
    pr.add_argument("--wait", action="store_true", help="wait until profiling in progress has finished")
    pr.add_argument("--wait-timeout", type=SECONDS, default=900.0, help="seconds --wait waits at most (default: %(default)s)")
    pr.add_argument("--keys", default=None, help="keys folder with an operator key")
    pr.add_argument("--json", action="store_true", help="print the profiles as JSON (progress goes to stderr)")
    pr.set_defaults(func=query.cmd_profile)

    rp = sub.add_parser("replan", help="re-plan the mesh now (optionally with another planner policy)")
    rp.add_argument("--controller", default="tcp://127.0.0.1:5555", help="the controller's address (default: %(default)s)")
    rp.add_argument("--policy", default=None, help="gpulet, temporal, whole or static")
    rp.add_argument("--keys", default=None, help="keys folder with an operator key")
    rp.set_defaults(func=query.cmd_replan)

    b = sub.add_parser("bandit", help="the contextual-bandit variant selector")
    bsub = b.add_subparsers(dest="bandit_command", required=True)
    br = bsub.add_parser("report", help="learned preferences and offline estimates from the decision log")
    br.add_argument("--state-dir", default=".letmesh", help="the controller's state folder")
    br.add_argument("--family", default=None, help="report this family only (default: every family with a model)")
    br.add_argument("--limit", type=int, default=20_000, help="newest logged decisions to evaluate on")
    br.add_argument("--json", action="store_true", help="print the report as JSON (null where there is no estimate)")
    br.set_defaults(func=query.cmd_bandit_report)

    pl = sub.add_parser("plan", help="the layout a workload would get, and how many devices it needs")
    planning.add_plan_arguments(pl)
    pl.set_defaults(func=planning.cmd_plan)
    sm = sub.add_parser("simulate", help="replay arrivals through the planned layout (discrete-event simulation)")
    planning.add_simulate_arguments(sm)
    sm.set_defaults(func=planning.cmd_simulate)

    k = sub.add_parser("keys", help="CurveZMQ keys: who may join the mesh")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    ki = ksub.add_parser("init", help="create a keyring: the controller's key pair and an operator key")
    ki.add_argument("dir", help="the folder to create the keyring in")
    ka = ksub.add_parser("add", help="issue and authorise a key pair for a host")
    ka.add_argument("role", choices=("agent", "gateway", "operator"), help="what the key pair will run as")
    ka.add_argument("name", help="the agent id, gateway id or operator name it will run as")
    kr = ksub.add_parser("revoke", help="take a key out; live links refuse it from then on")
    kr.add_argument("name", help="NAME or ROLE:NAME")
    kl = ksub.add_parser("list", help="authorised keys")
    for kp in (ka, kr, kl):
        kp.add_argument("--keys", default=None, help="the keyring (default: $LETMESH_KEYS_DIR, else .letmesh/keys)")
    k.set_defaults(func=credential.cmd_keys)

    t = sub.add_parser("tokens", help="bearer tokens for the gateway's HTTP clients")
    tsub = t.add_subparsers(dest="tokens_command", required=True)
    ta = tsub.add_parser("add", help="issue a token for a client and add its digest to a tokens file")
    ta.add_argument("name", help="the client's name (kept with the token's digest)")
    ta.add_argument("--file", required=True, help="the tokens file (TOML) gateways read with --tokens-file")
    ta.add_argument("--scopes", default="inference,feedback",
                    help="comma-separated: inference, feedback, management (default: %(default)s)")
    ta.add_argument("--rate", type=number(0.0), default=0.0, help="requests per second allowed (0: unlimited)")
    ta.add_argument("--burst", type=number(0.0), default=0.0, help="requests at once (default: one second's worth)")
    ta.set_defaults(func=credential.cmd_tokens)

    from letmesh.repo import add_repo_arguments

    add_repo_arguments(sub)  # letmesh repo add MODEL_FILE

    z = sub.add_parser("zoo", help="demo model repository")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zb = zsub.add_parser("build", help="train the demo models into DIR")
    zb.add_argument("dir", help="the repository folder to write")
    zb.add_argument("--synthetic", action="store_true",
                    help="also build the 'synth' family, costly enough per request to overload a small machine")
    zb.add_argument("--backend", choices=("torchscript", "onnx"), default="torchscript",
                    help="the artifact the digits variants are served from (both are built; default torchscript)")
    zb.set_defaults(func=repository.cmd_zoo)

    _accept_global_options_everywhere(p)
    return p


# Commands that run a role or a mesh: they print little, and their pipes are sockets and children.
LONG_RUNNING = frozenset({"controller", "gateway", "agent", "up", "demo"})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said with the command's usage, not the top level's
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        configure_logging(args.log_level, args.log_format or os.environ.get(FORMAT_ENV) or "text")
    except ValueError as exc:  # a bad LETMESH_LOG_FORMAT; the flags are checked by the parser
        print(f"letmesh: {exc}", file=sys.stderr)
        return 2
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so a reader gone away is seen below rather than at exit
        return code
    except KeyboardInterrupt:  # Ctrl-C where a command has no handler of its own: one line, not a traceback
        print(f"letmesh {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:
        if args.command in LONG_RUNNING:  # a broken pipe there is a socket's or a child's, not the reader's
            raise
        # The reader went away (``| head``): stop quietly, as a command killed by SIGPIPE does;
        # stdout goes to /dev/null so the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except ConfigError as exc:
        print(f"letmesh {args.command}: config: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from mesh.keys import KeysError  # here: mesh.keys loads ZeroMQ, which most commands never need

        said = _said(exc) if not isinstance(exc, KeysError) else str(exc)
        if said is None:
            raise
        logging.getLogger("letmesh").debug("%s failed", args.command, exc_info=True)
        print(f"letmesh {args.command}: {said}", file=sys.stderr)
        return 2


def _said(exc: Exception) -> str | None:
    """What to tell of a failure that comes from what the user gave (a path, a file's contents, a
    state folder), rather than a traceback; None for anything else."""
    import json
    import sqlite3

    from controller.store_schema import StoreVersionError

    if isinstance(exc, UnicodeDecodeError):
        return f"a file given is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    if isinstance(exc, (StoreVersionError, sqlite3.DatabaseError)):
        return f"the state store cannot be used: {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"a JSON file given or kept in the state folder is damaged: {exc}"
    return None


if __name__ == "__main__":
    sys.exit(main())
