"""The ports ``letmesh up`` picks for its roles: free, and outside the kernel's ephemeral range, where
any outgoing connection on the host could take one before the role that is to bind it starts."""

from __future__ import annotations

import socket
from pathlib import Path

from letmesh.launcher import free_port


def test_picked_ports_are_free_and_outside_the_ephemeral_range() -> None:
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(50)]
    assert not [p for p in ports if low <= p <= high]
    assert len(set(ports)) > 40  # drawn at random: parallel launches do not race for one port
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free


def test_a_port_the_launcher_draws_is_never_one_given_or_drawn_for_another_role(monkeypatch, tmp_path) -> None:
    # The controller's port was given, not yet bound: free, so a draw could return it, and up then
    # refused to start ("controller and gateway data would both bind port ...").
    from letmesh import launcher
    from letmesh.port import distinct

    draws = iter([5601, 5601, 7001, 7001, 7002, 7003, 7004])
    monkeypatch.setattr(launcher, "free_port", lambda: next(draws))
    mesh = launcher.LocalMesh(repository=tmp_path, state_dir=tmp_path / "state", controller_port=5601, metrics=True)
    assert [mesh.controller_port, mesh.http_port, mesh.data_port, mesh.controller_metrics_port,
            mesh.agent_metrics_port] == [5601, 7001, 7002, 7003, 7004]
    distinct(mesh.ports())  # raises PortsClash for a port two roles would bind
