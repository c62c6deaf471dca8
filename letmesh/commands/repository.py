"""``letmesh zoo``: the demo model repository."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_zoo(args: argparse.Namespace) -> int:
    from letmesh.zoo import build_zoo

    manifests = build_zoo(Path(args.dir), progress=lambda line: print(line, flush=True), backend=args.backend)
    if args.synthetic:
        from letmesh.costly import build_costly

        manifests += build_costly(Path(args.dir), progress=lambda line: print(line, flush=True))
    for m in manifests:
        print(f"{m['variant']:<16} {m['family']:<8} accuracy {m['accuracy']:.3f}  max batch {m['max_batch']}")
    return 0
