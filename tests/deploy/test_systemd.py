"""deploy/systemd/letmesh-agent.service: systemd accepts it, it runs the agent unprivileged and
hardened with only its state folder writable, and its example environment file configures the
agent (every variable is an AgentConfig field, the state dir is the writable one)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agents.config import AgentConfig
from mesh.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "letmesh-agent.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "agent.env.example"


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values, in order (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"directive outside a section: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def environment(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_the_agent_runs_unprivileged_hardened_and_restarts_on_failure() -> None:
    service = directives(UNIT.read_text())["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["User"] not in ("", "root") and one["Group"] not in ("", "root")
    command = one["ExecStart"].split()
    assert Path(command[0]).name == "letmesh" and command[1:] == ["agent"]
    assert one["Restart"] == "on-failure"
    assert one["NoNewPrivileges"] == "yes" and one["ProtectSystem"] == "strict" and one["ProtectHome"] == "yes"
    assert one["PrivateTmp"] == "yes" and one["CapabilityBoundingSet"] == ""
    writable = {p.lstrip("-") for values in service["ReadWritePaths"] for p in values.split()}
    state = "/var/lib/" + one["StateDirectory"]
    assert writable == {state}
    assert one["EnvironmentFile"].endswith("agent.env")


def test_the_example_environment_configures_the_agent_with_its_state_in_the_writable_folder() -> None:
    env = environment(ENV_EXAMPLE.read_text())
    fields = {f"LETMESH_AGENT_{name.upper()}" for name in AgentConfig.__dataclass_fields__}
    unknown = {k for k in env if k.startswith("LETMESH_") and k not in fields}
    assert not unknown, f"not AgentConfig fields: {unknown}"
    config = load_config(AgentConfig, env=env, section="agent")  # what `letmesh agent` builds from it
    service = directives(UNIT.read_text())["Service"]
    assert config.state_dir == "/var/lib/" + service["StateDirectory"][-1]
    assert config.controller.startswith("tcp://") and config.agent_id and config.keys_dir


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at this interpreter's letmesh for the check.
    letmesh = Path(sys.executable).with_name("letmesh")
    if not letmesh.exists():
        letmesh = Path(sys.executable)
    unit = tmp_path / UNIT.name
    unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={letmesh}", UNIT.read_text(), flags=re.M))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr

    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                              capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    if security.returncode != 0 and exposure is None:
        return  # an older systemd without offline security analysis
    assert exposure is not None, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 4.0, security.stdout  # systemd rates up to 4.9 "OK"; the default is 9.6
