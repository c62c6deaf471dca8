"""docker-compose.yml and the Dockerfile: every role restarts and reports readiness, start order waits
on health without a cycle, named volumes are writable by the image's user, and each healthcheck
command tells a live mesh from a dead one (tests/integration/test_deploy_healthchecks.py; the
stack itself is smoke-tested by deploy/compose-smoke.sh where Docker runs)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("controller", "gateway", "agent")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_role_restarts_unless_stopped_and_has_a_healthcheck(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == set(ROLES)
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        check = service.get("healthcheck", {})
        assert check.get("test", [None])[0] == "CMD" and len(check["test"]) > 1, name
        assert check.get("start_period"), f"{name}: the first start (training the demo models) needs a grace period"


def test_the_gateway_is_healthy_when_ready_not_merely_alive(compose: dict) -> None:
    test = " ".join(compose["services"]["gateway"]["healthcheck"]["test"])
    assert "/v2/health/ready" in test and "/v2/health/live" not in test


def test_start_order_waits_on_health_without_a_cycle(compose: dict) -> None:
    services = compose["services"]
    waits: dict[str, set[str]] = {}
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a bare list"
        for other, rule in depends.items():
            assert other in services and "healthcheck" in services[other], (name, other)
            assert rule.get("condition") == "service_healthy", (name, other)
        waits[name] = set(depends)
    # The gateway is ready only once an agent's workers serve: neither may wait on the other's health
    # in a loop, or neither would ever start.
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {' -> '.join((*path, name))}"
        for other in waits[name]:
            visit(other, (*path, name))
        seen.add(name)

    for name in services:
        visit(name, ())
    assert "gateway" not in waits["agent"]
    assert waits["gateway"] == {"controller"} and waits["agent"] == {"controller"}


def test_named_volumes_are_declared_and_their_mount_points_belong_to_the_image_user(compose: dict) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\S+)", dockerfile, re.M)
    assert user, "the image runs as a user"
    before_user = dockerfile[:user.start()]
    chowned = set()
    for line in re.findall(r"chown (\S+) ([^\n\\&]+)", before_user):
        owner, paths = line
        assert owner.split(":")[0] == user.group(1)
        chowned.update(paths.split())
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            if "/" in source:
                continue  # a bind mount keeps the host's ownership
            assert source in declared, f"{name}: volume {source} is not declared"
            assert target in chowned, f"{name}: {target} must exist in the image, owned by {user.group(1)}, " \
                                      "or Docker creates the volume root-owned"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client on this machine")
def test_docker_compose_accepts_the_file() -> None:
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    if version.returncode != 0:
        pytest.skip("the docker client here has no compose plugin")
    checked = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert checked.returncode == 0, checked.stderr
