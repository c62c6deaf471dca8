"""The accuracy-scaling MILP's headroom, adapted to the deadlines the mesh actually meets.

Proteus keeps a fixed capacity headroom (beta) over the profiled throughput. A real host has
costs the profiles do not see and that grow with load: the gateway and clients on the same
cores, interference the model does not know, workers starting beside serving ones. A plan at
the edge of profiled capacity then misses deadlines, plan after plan. So the headroom the MILP
starts its ladder from rises when the share of requests that missed their deadline since the
last plan is above ``miss_target`` (by that share, at least by ``min_step``), up to ``ceiling``,
and eases back toward ``base`` by ``ease`` per plan while misses stay under a quarter of the
target. Windows with fewer than ``min_requests`` requests say nothing. Pure and synchronous.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class AdaptiveHeadroom:
    base: float = 1.2
    ceiling: float = 5.0
    miss_target: float = 0.01
    min_step: float = 1.1
    ease: float = 0.98
    min_requests: int = 50
    beta: float = 0.0  # the current headroom; starts at ``base``

    def __post_init__(self) -> None:
        if not 1.0 <= self.base <= self.ceiling:
            raise ValueError(f"need 1 <= base <= ceiling, got {self.base}, {self.ceiling}")
        if not (0 < self.miss_target < 1 and self.min_step >= 1 and 0 < self.ease <= 1):
            raise ValueError("need 0 < miss_target < 1, min_step >= 1 and 0 < ease <= 1")
        if self.beta <= 0:
            self.beta = self.base

    def update(self, requests: int, missed: int) -> float:
        """Fold in the outcomes since the last plan; returns the headroom for this one."""
        if requests >= self.min_requests:
            share = min(1.0, missed / requests)
            if share > self.miss_target:
                self.beta = min(self.ceiling, self.beta * max(self.min_step, 1.0 + share))
            elif share < self.miss_target / 4:
                self.beta = max(self.base, self.beta * self.ease)
        return self.beta
