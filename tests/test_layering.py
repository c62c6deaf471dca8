"""The layering of DESIGN.md: protocol <- mesh <- controller | agents | gateway; the three never meet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"protocol", "mesh", "controller", "agents", "gateway", "letmesh"}
ALLOWED = {
    "protocol": set(),
    "mesh": {"protocol"},
    "controller": {"protocol", "mesh"},
    "agents": {"protocol", "mesh"},
    "gateway": {"protocol", "mesh"},
    "letmesh": OURS,
}
FORBIDDEN_THIRD_PARTY = {"protocol": {"zmq", "torch"}}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    for path in files:
        roots = imported_roots(path)
        ours = (roots & OURS) - {package}
        assert ours <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {sorted(ours - ALLOWED[package])}"
        banned = roots & FORBIDDEN_THIRD_PARTY.get(package, set())
        assert not banned, f"{path.relative_to(ROOT)} imports {sorted(banned)}"


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from gateway.dispatcher import Dispatcher\nimport controller.registry\n")
    assert {"gateway", "controller"} <= imported_roots(bad)
