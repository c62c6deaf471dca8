"""Device memory in the live layout: a device's workers together need no more than it holds (90 %
of it), each variant's need being what its manifest declares or its weights and one batch."""

from __future__ import annotations

import dataclasses

from controller.replanner import layout
from protocol.types import DeviceInfo
from tests.controller.test_replanner_batches import samples, variants

GIB = 1 << 30


def hosts(memory_bytes: int, n: int = 2) -> dict[str, tuple[DeviceInfo, ...]]:
    return {f"a{i}": (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=4, memory_bytes=memory_bytes),)
            for i in range(n)}


def needing(memory_bytes: int) -> dict:
    return {name: dataclasses.replace(v, memory_bytes=memory_bytes) for name, v in variants().items()}


def test_variants_that_do_not_fit_one_device_s_memory_together_are_placed_on_two() -> None:
    demand = {"big": 20.0, "tiny": 20.0}
    # One host: its four cores carry both, and with weights of a byte its memory holds both ...
    light = layout(hosts(GIB, n=1), variants(), samples(), [], demand)
    assert {v for d in light.desired for v in d.variants} == {"big", "tiny"} and light.plan.unserved == {}
    # ... but not two workers of 600 MiB: one variant waits for a second host.
    alone = layout(hosts(GIB, n=1), needing(600 << 20), samples(), [], demand)
    assert len({v for d in alone.desired for v in d.variants}) == 1 and len(alone.plan.unserved) == 1
    heavy = layout(hosts(GIB), needing(600 << 20), samples(), [], demand)
    assert {v for d in heavy.desired for v in d.variants} == {"big", "tiny"} and heavy.plan.unserved == {}
    by_host: dict[str, int] = {}
    for d in heavy.desired:
        by_host[d.agent_id] = by_host.get(d.agent_id, 0) + len(d.variants) * (600 << 20)
    assert len(by_host) == 2 and max(by_host.values()) <= 0.9 * GIB


def test_a_variant_no_device_has_the_memory_for_is_left_unserved() -> None:
    result = layout(hosts(GIB), needing(2 * GIB), samples(), [], {"big": 20.0})
    assert result.desired == () and result.plan.unserved == {"big": 20.0, "tiny": 1.0}  # "tiny": the floor rate


def test_a_layout_is_overcommitted_where_its_workers_need_more_than_the_planner_admits() -> None:
    from controller.reconciler import DesiredWorker
    from controller.replanner import memory_overcommitted

    heavy = needing(300 << 20)
    agents = {**hosts(GIB, n=1), "a1": (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=4, memory_bytes=0),)}
    three = [DesiredWorker("a0", "cpu0", "cpu", 1, ("big",)), DesiredWorker("a0", "cpu0", "cpu", 1, ("tiny",)),
             DesiredWorker("a0", "cpu0", "cpu", 2, ("big",))]
    assert memory_overcommitted(three, agents, heavy) == []  # 900 MiB of 90 % of 1 GiB
    guest = [*three[:2], DesiredWorker("a0", "cpu0", "cpu", 2, ("big", "tiny"))]  # a variant joined to a gpu-let
    assert memory_overcommitted(guest, agents, heavy) == ["a0/cpu0"]
    unknown = [DesiredWorker("a1", "cpu0", "cpu", 1, ("big", "tiny"))] * 8  # memory not reported: no bound
    assert memory_overcommitted(unknown, agents, heavy) == []


def test_what_a_worker_holds_beyond_its_variants_needs_is_counted_once_per_gpulet_of_its_kind() -> None:
    """Two variants of a byte each on a 1 GiB host: by their needs, a worker each. When each worker
    process holds 600 MiB of its own (its runtime), two would not fit: one gpu-let serves both."""
    demand = {"big": 20.0, "tiny": 20.0}
    # Another kind's figure, another host's, two that fit, or this host's small figure before its kind's.
    for overhead in (None, {"cuda": 600 << 20}, {"a1/cpu0": 600 << 20}, {"cpu": 300 << 20},
                     {"a0/cpu0": 300 << 20, "cpu": 600 << 20}):
        apart = layout(hosts(GIB, n=1), variants(), samples(), [], demand, worker_overhead=overhead)
        assert sorted(d.variants for d in apart.desired) == [("big",), ("tiny",)] and apart.plan.unserved == {}
    for overhead in ({"cpu": 600 << 20}, {"a0/cpu0": 600 << 20, "cpu": 0}):
        shared = layout(hosts(GIB, n=1), variants(), samples(), [], demand, worker_overhead=overhead)
        assert [d.variants for d in shared.desired] == [("big", "tiny")] and shared.plan.unserved == {}


def test_an_overcommitted_layout_counts_each_workers_own_memory() -> None:
    from controller.reconciler import DesiredWorker
    from controller.replanner import memory_overcommitted

    light = needing(100 << 20)
    two = [DesiredWorker("a0", "cpu0", "cpu", 1, ("big",)), DesiredWorker("a0", "cpu0", "cpu", 1, ("tiny",))]
    assert memory_overcommitted(two, hosts(GIB, n=1), light) == []
    assert memory_overcommitted(two, hosts(GIB, n=1), light, {"cuda": 400 << 20}) == []
    assert memory_overcommitted(two, hosts(GIB, n=1), light, {"cpu": 400 << 20}) == ["a0/cpu0"]  # 1000 MiB > 921.6
    assert memory_overcommitted(two, hosts(GIB, n=1), light, {"a0/cpu0": 400 << 20}) == ["a0/cpu0"]
    assert memory_overcommitted(two, hosts(GIB, n=1), light, {"a0/cpu0": 300 << 20, "cpu": 400 << 20}) == []
