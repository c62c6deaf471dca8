"""Initial placement: give every variant a worker on a fitting partition. Pure and deterministic.

A device is split into equal partitions (a core set on a CPU, an MPS percentage on a GPU whose
host runs an MPS daemon, the whole GPU on one without) and variants are spread over them by cost,
longest first onto the least loaded partition, GPUs' partitions before CPUs', so a 2-core machine
still serves a whole family with each worker time-sharing a few variants and a lone variant on a
GPU host starts on the GPU. On a device of little memory it starts no more workers than that memory
holds beside the device's profiling run (the start-up workers serve while the profiles are taken).
The interference-aware planner replaces this; the shape of its output stays the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.planning.fleet import MEMORY_FRACTION
from protocol.types import DeviceInfo, Partition


@dataclass(frozen=True, slots=True)
class PlannedWorker:
    worker_id: str
    agent_id: str
    partition: Partition
    variants: tuple[str, ...]
    batches: tuple[tuple[str, int], ...] = ()  # a plan's batch size per variant (else the manifest's)


def split_device(device: DeviceInfo, parts: int, cores_per_partition: int) -> list[Partition]:
    """Equal partitions of ``device``. CPU core numbers index the agent's usable cores."""
    if device.kind == "cuda":
        share = 100 // parts
        return [Partition(device_id=device.device_id, kind="cuda", mps_percent=share) for _ in range(parts)]
    per = max(cores_per_partition, device.cores // parts)
    out = []
    for i in range(parts):
        first = i * per
        cores = tuple(range(first, min(first + per, device.cores)))
        out.append(Partition(device_id=device.device_id, kind=device.kind, cores=cores))
    return out


def initial_placement(
    agent_id: str,
    devices: Sequence[DeviceInfo],
    variant_costs: dict[str, float],
    *,
    cores_per_partition: int = 1,
    max_partitions_per_device: int = 8,
    max_workers: Mapping[str, int] | None = None,
) -> list[PlannedWorker]:
    """Workers for one agent: every variant placed once across the agent's devices, at most
    ``max_workers[device_id]`` on a device (what its memory holds: :func:`workers_memory_holds`)."""
    if not variant_costs or not devices:
        return []
    partitions: list[Partition] = []
    per_device = max(1, -(-len(variant_costs) // len(devices)))
    for device in sorted(devices, key=lambda d: d.kind != "cuda"):  # stable: the agent's order within a kind
        if device.kind == "cuda":
            parts = min(per_device, 4, max_partitions_per_device) if device.mps else 1
        else:
            parts = min(per_device, max(1, device.cores // cores_per_partition), max_partitions_per_device)
        # Fewer workers where memory holds fewer, each of the size it would have had: the cores
        # left free are where the device's profiling run measures without a worker beside it.
        held = max(1, min(parts, (max_workers or {}).get(device.device_id, parts)))
        partitions.extend(split_device(device, parts, cores_per_partition)[:held])
    load = [0.0] * len(partitions)
    assigned: list[list[str]] = [[] for _ in partitions]
    # Longest processing time first: costliest variant onto the least loaded partition.
    for name in sorted(variant_costs, key=lambda n: (-variant_costs[n], n)):
        i = min(range(len(partitions)), key=lambda j: (load[j], j))
        assigned[i].append(name)
        load[i] += variant_costs[name]
    return [
        PlannedWorker(
            worker_id=f"{agent_id}.w{i}",
            agent_id=agent_id,
            partition=partitions[i],
            variants=tuple(sorted(names)),
        )
        for i, names in enumerate(assigned)
        if names
    ]


def workers_memory_holds(device: DeviceInfo, *, needs: int, overhead: int, beside: int = 0) -> int | None:
    """How many start-up workers ``device``'s memory holds (the planner's share of it,
    MEMORY_FRACTION): each takes ``overhead`` beyond its variants, the variants' ``needs`` are
    counted whole (where they land is not decided yet), and other processes (a profiling run's) hold
    ``beside``. At least 1, for the variants must be served; None where memory or overhead is unknown."""
    if device.memory_bytes <= 0 or overhead <= 0:
        return None
    room = int(MEMORY_FRACTION * device.memory_bytes) - needs - beside
    return max(1, room // overhead)


def extend_placement(planned: Sequence[PlannedWorker], costs: dict[str, float], missing: Sequence[str]) -> list[PlannedWorker]:
    """Add variants new to the repository to an existing placement, least loaded worker first."""
    workers = list(planned)
    if not workers:
        return workers
    load = [sum(costs.get(v, 1.0) for v in w.variants) for w in workers]
    for name in sorted(missing, key=lambda n: (-costs.get(n, 1.0), n)):
        i = min(range(len(workers)), key=lambda j: (load[j], j))
        w = workers[i]
        workers[i] = PlannedWorker(w.worker_id, w.agent_id, w.partition, tuple(sorted((*w.variants, name))))
        load[i] += costs.get(name, 1.0)
    return workers
