"""The mutable pieces of a fleet under construction: devices, gpu-lets and what they serve.

Plain records owned by one ``Fleet`` during one ``plan()`` call; the fleet keeps their
invariants. Imports nothing of ours at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.planning.planner import DeviceSlot


def split_limit(kind: str, capacity: int) -> int:
    """Gpu-lets a device may hold: two on a CUDA GPU (p and 100 - p), one per core on a CPU."""
    return 2 if kind.startswith("cuda") else capacity


@dataclass(frozen=True, slots=True)
class Need:
    """What the fleet must know about a demanded variant."""

    variant: str
    slo_ms: float
    memory_bytes: int


@dataclass(slots=True)
class Item:
    variant: str
    rate: float
    batch: int = 1


@dataclass(slots=True)
class Let:
    serial: int
    size: int
    items: list[Item]
    alpha: float = 1.0
    duty: float = 0.0
    load: float = 1.0  # occupancy: round time / duty cycle
    # Largest batch per variant, for a gpu-let a running worker is: it was started to run no more.
    caps: dict[str, int] = field(default_factory=dict)

    def copy(self) -> Let:
        return Let(self.serial, self.size, [Item(i.variant, i.rate, i.batch) for i in self.items], self.alpha, self.duty,
                   self.load, dict(self.caps))

    def has(self, variant: str) -> bool:
        return any(i.variant == variant for i in self.items)


@dataclass(slots=True)
class Device:
    index: int
    slot: DeviceSlot
    limit: int
    lets: list[Let] = field(default_factory=list)
    memory_used: int = 0
    free: int = -1  # capacity not held by a gpu-let; kept by Fleet._commit

    def __post_init__(self) -> None:
        self.free = self.slot.capacity - sum(let.size for let in self.lets)
