"""Which profiling runs the controller asks of agents, and how far they are. Pure.

A device needs profiling when some variant has no stored profile for its device kind. The
partition menu is the device kind's: core counts on a CPU (1, 2, 4, ... up to its cores), MPS
percentages {20, 40, 50, 60, 80, 100} on a CUDA GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from controller.repository import Variant
from mesh.latency import warmup_batches
from protocol.message import ProfileDevice
from protocol.types import DeviceInfo, ProfileSample

MPS_MENU = (20, 40, 50, 60, 80, 100)


def partition_menu(device: DeviceInfo) -> tuple[int, ...]:
    if device.kind == "cuda":
        return MPS_MENU
    sizes = {device.cores}
    size = 1
    while size < device.cores:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def unprofiled(variants: Iterable[Variant], device_kind: str, samples: Iterable[ProfileSample]) -> list[Variant]:
    have = {s.variant for s in samples if s.device_kind == device_kind}
    return sorted((v for v in variants if v.name not in have), key=lambda v: v.name)


@dataclass(slots=True)
class ProfilingRuns:
    """Runs in flight by (agent, request id) -> progress."""

    next_id: int = 1
    running: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def commands(
        self, agent_id: str, devices: Sequence[DeviceInfo], variants: Sequence[Variant], samples: Sequence[ProfileSample],
        *, everything: bool = False, colocation: bool = True, repeats: int = 20,
    ) -> list[ProfileDevice]:
        """ProfileDevice commands for the agent's devices that lack profiles (all of them if ``everything``)."""
        out = []
        for device in devices:
            todo = sorted(variants, key=lambda v: v.name) if everything else unprofiled(variants, device.kind, samples)
            if not todo or any(a == agent_id for a, _ in self.running):
                continue
            batches = sorted({b for v in todo for b in warmup_batches(v.max_batch)})
            request_id = self.next_id
            self.next_id += 1
            self.running[(agent_id, request_id)] = (0, 0)
            out.append(ProfileDevice(
                request_id=request_id,
                device_id=device.device_id,
                variants=tuple(v.spec() for v in todo),
                partitions=partition_menu(device),
                batches=tuple(batches),
                colocation=colocation,
                repeats=repeats,
            ))
        return out

    def progress(self, agent_id: str, request_id: int, completed: int, total: int, done: bool) -> None:
        if done:
            self.running.pop((agent_id, request_id), None)
        elif (agent_id, request_id) in self.running:
            self.running[(agent_id, request_id)] = (completed, total)

    def forget_agent(self, agent_id: str) -> None:
        for key in [k for k in self.running if k[0] == agent_id]:
            del self.running[key]

    def describe(self) -> tuple[str, ...]:
        """One line per run: ``agent: done/total``, or ``agent: starting`` before its first report."""
        return tuple(f"{agent}: {done}/{total}" if total else f"{agent}: starting"
                     for (agent, _), (done, total) in sorted(self.running.items()))
