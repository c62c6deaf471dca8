"""Which gateway links a worker keeps: the controller's latest list is authoritative, and bounded.

Pure. Gateway addresses arrive on the wire (``GatewayListChanged``); without a bound and without
closing the links of gateways that left, a worker's table of links only grows. Imports nothing of
the worker's I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

MAX_GATEWAYS = 64
MAX_ADDRESS_LEN = 256


def gateway_changes(connected: Collection[str], announced: Sequence[str],
                    max_gateways: int = MAX_GATEWAYS) -> tuple[list[str], list[str]]:
    """(addresses to connect, addresses to close) to go from ``connected`` to ``announced``.

    At most ``max_gateways`` of the announced addresses are kept, in the order announced; an empty,
    over-long or repeated address is skipped. A connected address no longer announced is closed.
    """
    wanted: list[str] = []
    for address in announced:
        if len(wanted) >= max_gateways:
            break
        if address and len(address) <= MAX_ADDRESS_LEN and address not in wanted:
            wanted.append(address)
    keep = set(wanted)
    return [a for a in wanted if a not in connected], sorted(a for a in connected if a not in keep)
