"""Commands that ask a running mesh or its state: ``status``, ``profile``, ``replan``, ``bandit report``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def print_json(doc: Any) -> None:
    """``doc`` as JSON on stdout; a number that is not finite (an estimate with no data) is null."""
    print(json.dumps(_finite(doc), indent=2, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def cmd_status(args: argparse.Namespace) -> int:
    from letmesh.status import StatusUnavailable, fetch_status, format_status, status_json

    try:
        status = fetch_status(args.controller, timeout_s=args.timeout, keys_dir=args.keys)
    except StatusUnavailable as exc:
        print(f"letmesh status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(status_json(status))
    else:
        print(format_status(status))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from letmesh.profiles import fetch_profiles, format_profiles, profiles_json, wait_for_profiles
    from letmesh.status import StatusUnavailable

    def say(line: str) -> None:  # progress; on stderr when stdout carries JSON
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        reply = fetch_profiles(args.controller, rerun=args.rerun, keys_dir=args.keys)
        if args.rerun or args.wait:
            reply = wait_for_profiles(args.controller, timeout_s=args.wait_timeout, say=say, keys_dir=args.keys)
    except StatusUnavailable as exc:
        print(f"letmesh profile: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(profiles_json(reply))
    else:
        print(format_profiles(reply))
    if (args.rerun or args.wait) and reply.running:  # what is stored so far, and that it is not the end
        print(f"letmesh profile: profiling still running ({', '.join(reply.running)}) after --wait-timeout "
              f"{args.wait_timeout:g} s", file=sys.stderr)
        return 1
    return 0


def cmd_bandit_report(args: argparse.Namespace) -> int:
    from letmesh.bandit_report import format_report, report_data

    if args.limit < 1:
        print(f"letmesh bandit report: --limit must be at least 1 (the newest decisions evaluated on), "
              f"got {args.limit}", file=sys.stderr)
        return 2
    try:
        data = report_data(Path(args.state_dir), family=args.family, limit=args.limit)
    except FileNotFoundError as exc:
        print(f"letmesh bandit report: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(data)
    else:
        print(format_report(data))
    return 0


def cmd_replan(args: argparse.Namespace) -> int:
    from letmesh.status import StatusUnavailable, ask_controller
    from protocol.message import Replan, ReplanReply

    try:
        reply = ask_controller(args.controller, Replan(policy=args.policy or ""), ReplanReply, keys_dir=args.keys)
    except StatusUnavailable as exc:
        print(f"letmesh replan: {exc}", file=sys.stderr)
        return 1
    if not reply.accepted:
        print(f"letmesh replan: {reply.message}", file=sys.stderr)
        return 2
    keys = f" --keys {args.keys}" if args.keys else ""
    if reply.message:
        print(reply.message)
    print(f"re-planning with policy {reply.policy}; watch it with: letmesh status --controller {args.controller}{keys}")
    return 0
