"""A request's deadline: fixed once, when the request is accepted, then only asked about.

Clocks of different hosts do not agree, so on the wire a deadline travels as the budget left
(microseconds) and is fixed again on the receiver's clock at arrival. Pure; standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Deadline:
    """An instant on this process's monotonic clock (seconds) by which an answer is due."""

    at: float

    @classmethod
    def after(cls, budget_s: float, now: float) -> Deadline:
        return cls(now + budget_s)

    @classmethod
    def from_wire(cls, budget_us: int, now: float) -> Deadline:
        """The deadline a peer sent as the budget it had left when it sent the message."""
        return cls(now + max(budget_us, 0) / 1e6)

    def remaining(self, now: float) -> float:
        """Seconds left (negative once passed)."""
        return self.at - now

    def passed(self, now: float) -> bool:
        return now > self.at

    def wire_budget_us(self, now: float, keep_s: float = 0.0) -> int:
        """The budget to send on, keeping ``keep_s`` back for the answer's way home; never negative."""
        return max(round((self.at - now - keep_s) * 1e6), 0)
