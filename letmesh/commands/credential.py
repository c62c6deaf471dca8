"""``letmesh keys`` (who may join the mesh) and ``letmesh tokens`` (who may call the gateway)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


# What `keys revoke` does to a running mesh, by role.
REVOKED_EFFECT = {
    "agent": "a running controller refuses it within a heartbeat; the agent stops its workers and their work "
             "moves to the other agents",
    "gateway": "a running controller refuses it within a heartbeat; the gateway leaves the workers' list and its "
               "readiness and liveness answer 503",
    "operator": "its next connection to a running controller is refused",
}


def _keys_dir(args: argparse.Namespace) -> Path:
    import os

    return Path(args.keys or os.environ.get("LETMESH_KEYS_DIR") or Path(".letmesh") / "keys")


def cmd_keys(args: argparse.Namespace) -> int:
    from mesh import keys

    root = Path(args.dir) if getattr(args, "dir", None) else _keys_dir(args)
    try:
        if args.keys_command == "init":
            host = keys.init_keyring(root)
            print(f"keyring created in {root}\n  controller key pair: {root / 'controller.key_secret'} (keep on the controller host)"
                  f"\n  operator key for this host's CLI: {host}")
            print(f"next: letmesh keys add agent NAME --keys {root}   (one per host), then start roles with --keys")
        elif args.keys_command == "add":
            host = keys.add_peer(root, args.role, args.name)
            print(f"authorised {args.role} {args.name!r}; its key pair is in {host}/")
            print(f"copy that folder to the {args.role}'s host (it holds {args.role}-{args.name}.key_secret and controller.key)"
                  f" and start it with --keys <that folder>; keep it private (mode 0600)")
        elif args.keys_command == "revoke":
            role = keys.revoke_peer(root, args.name)
            bare = args.name.rpartition(":")[2]
            print(f"revoked {role} {bare!r}: {REVOKED_EFFECT[role]}")
        else:
            for role, name, public in keys.list_peers(root):
                print(f"{role:<9} {name:<24} {public}")
    except keys.KeysError as exc:
        print(f"letmesh keys: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from gateway.access import AccessError, issue_token

    try:
        token = issue_token(args.file, args.name, tuple(s.strip() for s in args.scopes.split(",") if s.strip()),
                            rate_per_s=args.rate, burst=args.burst)
    except AccessError as exc:
        print(f"letmesh tokens: {exc}", file=sys.stderr)
        return 1
    print(f"added client {args.name!r} to {args.file} (only its sha256 is stored); its token, shown once:\n{token}")
    print(f"clients send: Authorization: Bearer <token>; gateways read the file with --tokens-file {args.file}")
    return 0
