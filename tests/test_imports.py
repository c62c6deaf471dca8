"""Every module imports cleanly on its own, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "mesh", "controller", "agents", "gateway", "letmesh")


def modules() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append(".".join(parts))
    return out


def _import(module: str) -> tuple[str, int, str]:
    # agents.worker pins itself to cores named in its environment; none are named here.
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    return module, proc.returncode, proc.stderr[-2000:]


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    names = modules()
    assert "protocol.codec" in names and "gateway.http_app" in names
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_import, names))
    failures = [f"{m}: exit {code}\n{err}" for m, code, err in results if code != 0]
    assert not failures, "\n\n".join(failures)
