"""Fixtures for multi-host tests: a lab of network namespaces, and settings a CI run may override.

``LETMESH_NETNS_CUT_S`` (default 8) sets how long an agent's link is cut,
``LETMESH_NETNS_CONTROLLER_CUT_S`` (default: the same) the controller's, and
``LETMESH_NETNS_RATE_RPS`` (default 20) the steady load; the defaults keep the suite within
about three minutes on a busy 2-core machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.multihost.netns import NetnsLab, unavailable_reason

CUT_S = float(os.environ.get("LETMESH_NETNS_CUT_S", "8"))
CONTROLLER_CUT_S = float(os.environ.get("LETMESH_NETNS_CONTROLLER_CUT_S", str(CUT_S)))
RATE_RPS = float(os.environ.get("LETMESH_NETNS_RATE_RPS", "20"))


@pytest.fixture(scope="module")
def lab_factory(tmp_path_factory) -> Iterator:
    """Open labs for one module; each is closed (processes, namespaces, links) at its end."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    opened: list[NetnsLab] = []

    def open_lab(hosts: list[str]) -> NetnsLab:
        lab = NetnsLab(hosts, log_dir=tmp_path_factory.mktemp("netns-logs"))
        opened.append(lab)
        lab.open()
        return lab

    try:
        yield open_lab
    finally:
        for lab in opened:
            lab.close()
