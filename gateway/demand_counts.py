"""What a gateway tells the controller about demand: requests per variant since the last report.

Three tallies, taken together once per report: every request (the plan's demand), those that
missed their deadline (answered late, 504, or turned away because no variant could meet it: a
sign the plan carries less than it thinks), and those that named the variant itself rather than
its family (never served by another variant, so a plan that scales accuracy keeps it deployed).
Names come from the routing table, never from the wire. Pure; one event loop.
"""

from __future__ import annotations


class DemandCounts:
    __slots__ = ("counts", "missed", "named")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.missed: dict[str, int] = {}
        self.named: dict[str, int] = {}

    def request(self, variant: str) -> None:
        self.counts[variant] = self.counts.get(variant, 0) + 1

    def miss(self, variant: str) -> None:
        self.missed[variant] = self.missed.get(variant, 0) + 1

    def naming(self, variant: str) -> None:
        """A request that named ``variant`` itself (counted by ``request`` as well)."""
        self.named[variant] = self.named.get(variant, 0) + 1

    def take(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """(requests, missed, named) per variant since the last call; starts the next tally."""
        out = (self.counts, self.missed, self.named)
        self.counts, self.missed, self.named = {}, {}, {}
        return out
