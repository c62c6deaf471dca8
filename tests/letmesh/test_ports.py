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
