"""Initial placement: every variant on exactly one worker, partitions that never share a core."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.placement import PlannedWorker, initial_placement, split_device, workers_memory_holds
from protocol.types import DeviceInfo, Partition


def cpu(cores: int, device_id: str = "cpu0") -> DeviceInfo:
    return DeviceInfo(device_id=device_id, kind="cpu", name="test cpu", cores=cores, memory_bytes=1 << 30)


def gpu(device_id: str = "cuda0", sms: int = 132, *, mps: bool = True) -> DeviceInfo:
    return DeviceInfo(device_id=device_id, kind="cuda", name="test gpu", cores=sms, memory_bytes=80 << 30, sm_count=sms,
                      mps=mps)


def costs(n: int) -> dict[str, float]:
    return {f"v{i}": float(i + 1) for i in range(n)}


def placed(workers: list[PlannedWorker]) -> Counter[str]:
    return Counter(v for w in workers for v in w.variants)


def check_invariants(workers: list[PlannedWorker], devices: list[DeviceInfo], variants: dict[str, float]) -> None:
    """What every placement must hold, whatever its input."""
    assert placed(workers) == Counter(list(variants)), "every variant exactly once"
    assert len({w.worker_id for w in workers}) == len(workers)
    by_id = {d.device_id: d for d in devices}
    for device_id, device in by_id.items():
        parts = [w.partition for w in workers if w.partition.device_id == device_id]
        if device.kind == "cuda":
            assert all(p.kind == "cuda" and p.mps_percent > 0 for p in parts)
            assert sum(p.mps_percent for p in parts) <= 100
        else:
            used = [c for p in parts for c in p.cores]
            assert len(used) == len(set(used)), f"a core of {device_id} is in two partitions"
            assert all(0 <= c < device.cores for c in used)
            assert all(p.cores for p in parts), "a CPU worker without a core"
    for w in workers:
        assert w.partition.device_id in by_id
        assert w.variants and list(w.variants) == sorted(w.variants)


def test_two_cores_five_variants_gives_two_disjoint_single_core_workers() -> None:
    variants = costs(5)
    workers = initial_placement("a1", [cpu(2)], variants)

    assert len(workers) == 2
    assert sorted(w.partition.cores for w in workers) == [(0,), (1,)]
    check_invariants(workers, [cpu(2)], variants)


def test_eight_cores_two_variants_gives_two_workers_of_four_cores() -> None:
    variants = costs(2)
    workers = initial_placement("a1", [cpu(8)], variants)

    assert [w.variants for w in workers] == [("v1",), ("v0",)]  # costliest first
    assert [w.partition.cores for w in workers] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    check_invariants(workers, [cpu(8)], variants)


def test_one_variant_gets_the_whole_device() -> None:
    workers = initial_placement("a1", [cpu(8)], {"only": 1.0})
    assert [(w.partition.cores, w.variants) for w in workers] == [(tuple(range(8)), ("only",))]


@pytest.mark.parametrize(
    ("n_variants", "shares"),
    [(1, [100]), (2, [50, 50]), (3, [33, 33, 33]), (5, [25, 25, 25, 25]), (9, [25, 25, 25, 25])],
)
def test_gpu_is_split_into_mps_shares_summing_to_at_most_100(n_variants: int, shares: list[int]) -> None:
    variants = costs(n_variants)
    workers = initial_placement("a1", [gpu()], variants)

    assert [w.partition.mps_percent for w in workers] == shares
    assert all(w.partition.kind == "cuda" and w.partition.cores == () for w in workers)
    check_invariants(workers, [gpu()], variants)


def test_cpu_and_gpu_share_the_variants() -> None:
    devices = [cpu(2), gpu()]
    variants = costs(5)
    workers = initial_placement("a1", devices, variants)

    assert Counter(w.partition.device_id for w in workers) == {"cpu0": 2, "cuda0": 3}
    check_invariants(workers, devices, variants)


def test_a_lone_variant_on_a_gpu_host_starts_on_the_gpu_whatever_order_the_agent_lists_devices() -> None:
    for devices in ([cpu(1), gpu()], [gpu(), cpu(1)]):
        (worker,) = initial_placement("a1", devices, {"only": 1.0})
        assert worker.partition == Partition(device_id="cuda0", kind="cuda", mps_percent=100)


def test_a_gpu_without_an_mps_daemon_is_one_whole_partition() -> None:
    # Nothing would hold a worker to a share of it: variants time-share one worker on all of it.
    devices = [gpu(mps=False)]
    workers = initial_placement("a1", devices, costs(3))
    assert [(w.partition.mps_percent, w.variants) for w in workers] == [(100, ("v0", "v1", "v2"))]
    check_invariants(workers, devices, costs(3))


def test_longest_first_onto_least_loaded_balances_cost() -> None:
    workers = initial_placement("a1", [cpu(2)], {"heavy": 10.0, "b": 1.0, "c": 1.0, "d": 1.0})
    assert sorted(w.variants for w in workers) == [("b", "c", "d"), ("heavy",)]


@pytest.mark.parametrize(
    ("kwargs", "cores"),
    [
        ({"cores_per_partition": 2}, [(0, 1), (2, 3), (4, 5), (6, 7)]),
        ({"max_partitions_per_device": 2}, [(0, 1, 2, 3), (4, 5, 6, 7)]),
        ({"cores_per_partition": 3}, [(0, 1, 2, 3), (4, 5, 6, 7)]),
    ],
)
def test_partition_size_and_count_limits(kwargs: dict, cores: list[tuple[int, ...]]) -> None:
    variants = costs(8)
    workers = initial_placement("a1", [cpu(8)], variants, **kwargs)
    assert sorted(w.partition.cores for w in workers) == cores
    check_invariants(workers, [cpu(8)], variants)


def test_worker_ids_carry_the_agent_id() -> None:
    workers = initial_placement("edge-7", [cpu(2)], costs(3))
    assert all(w.worker_id.startswith("edge-7.") and w.agent_id == "edge-7" for w in workers)


@pytest.mark.parametrize(("devices", "variants"), [([], costs(3)), ([cpu(4)], {})])
def test_nothing_to_place_gives_no_workers(devices: list[DeviceInfo], variants: dict[str, float]) -> None:
    assert initial_placement("a1", devices, variants) == []


def test_same_input_same_output_whatever_the_dict_order() -> None:
    variants = {"c": 2.0, "a": 5.0, "b": 2.0, "d": 0.5, "e": 5.0}
    reordered = dict(reversed(list(variants.items())))
    first = initial_placement("a1", [cpu(2), gpu()], variants)
    assert initial_placement("a1", [cpu(2), gpu()], variants) == first
    assert initial_placement("a1", [cpu(2), gpu()], reordered) == first


def test_split_device_cpu_partitions_are_contiguous_and_disjoint() -> None:
    assert split_device(cpu(6), 3, 1) == [
        Partition(device_id="cpu0", kind="cpu", cores=(0, 1)),
        Partition(device_id="cpu0", kind="cpu", cores=(2, 3)),
        Partition(device_id="cpu0", kind="cpu", cores=(4, 5)),
    ]


@st.composite
def devices_strategy(draw) -> list[DeviceInfo]:
    n_cpu = draw(st.integers(0, 2))
    n_gpu = draw(st.integers(0 if n_cpu else 1, 2))
    out = [cpu(draw(st.integers(1, 32)), device_id=f"cpu{i}") for i in range(n_cpu)]
    out += [gpu(device_id=f"cuda{i}", sms=draw(st.integers(1, 132))) for i in range(n_gpu)]
    return out


variant_costs = st.dictionaries(
    st.text("abcdefgh-0123", min_size=1, max_size=6),
    st.floats(0.001, 1000.0, allow_nan=False),
    min_size=1,
    max_size=24,
)


@settings(max_examples=300, deadline=None)
@given(
    devices=devices_strategy(),
    variants=variant_costs,
    cores_per_partition=st.integers(1, 8),
    max_partitions=st.integers(1, 8),
)
def test_property_every_variant_once_and_no_shared_core(
    devices: list[DeviceInfo], variants: dict[str, float], cores_per_partition: int, max_partitions: int
) -> None:
    workers = initial_placement(
        "a1", devices, variants, cores_per_partition=cores_per_partition, max_partitions_per_device=max_partitions
    )
    check_invariants(workers, devices, variants)
    for device in devices:
        assert sum(w.partition.device_id == device.device_id for w in workers) <= max_partitions
    again = initial_placement(
        "a1", devices, variants, cores_per_partition=cores_per_partition, max_partitions_per_device=max_partitions
    )
    assert again == workers


MIB = 1 << 20


def test_a_device_gets_no_more_workers_than_its_memory_holds() -> None:
    variants = costs(5)
    devices = [cpu(8), cpu(4, "cpu1")]
    workers = initial_placement("a1", devices, variants, max_workers={"cpu0": 1})
    assert sum(w.partition.device_id == "cpu0" for w in workers) == 1
    assert sum(w.partition.device_id == "cpu1" for w in workers) == 3  # uncapped: one per variant it takes
    check_invariants(workers, devices, variants)
    (only,) = [w for w in workers if w.partition.device_id == "cpu0"]
    # The size it would have had beside two more (3 variants a device: 2 cores each); the cores
    # left free are where the profiling run measures alone.
    assert only.partition.cores == (0, 1)


def test_what_a_devices_memory_holds_at_start() -> None:
    board = DeviceInfo(device_id="cpu0", kind="cpu", name="edge", cores=4, memory_bytes=1000 * MIB)  # 900 for workers
    assert workers_memory_holds(board, needs=100 * MIB, overhead=200 * MIB) == 4
    assert workers_memory_holds(board, needs=100 * MIB, overhead=200 * MIB, beside=400 * MIB) == 2
    assert workers_memory_holds(board, needs=100 * MIB, overhead=200 * MIB, beside=800 * MIB) == 1, "never none"
    assert workers_memory_holds(board, needs=0, overhead=0) is None, "nothing known of a worker's size"
    unknown = DeviceInfo(device_id="cpu0", kind="cpu", name="edge", cores=4, memory_bytes=0)
    assert workers_memory_holds(unknown, needs=0, overhead=200 * MIB) is None
