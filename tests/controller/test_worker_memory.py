"""What a worker holds beyond its variants' needs, per device kind, from the peaks ready workers
report: the largest excess among them now, kept while no worker of the kind reports."""

from __future__ import annotations

import dataclasses

from controller.placement import PlannedWorker
from controller.registry import Registry
from controller.worker_memory import WorkerOverhead
from protocol.types import DeviceInfo, Partition, WorkerState
from tests.controller.test_layout_manager import variant

MIB = 1 << 20


def registry() -> Registry:
    variants = {"cls-large": dataclasses.replace(variant("cls-large"), memory_bytes=100 * MIB),
                "cls-small": dataclasses.replace(variant("cls-small"), memory_bytes=20 * MIB)}
    reg = Registry(variants, heartbeat_interval_s=1.0, missed_heartbeats=1000)
    reg.agent_registered("a0", "host", (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=4,
                                                   memory_bytes=1 << 30),), now=0.0)
    return reg


def ready(reg: Registry, worker_id: str, variants: tuple[str, ...], peak: int, kind: str = "cpu") -> None:
    partition = Partition(device_id="cpu0", kind="cpu", cores=(0,)) if kind == "cpu" else \
        Partition(device_id="cuda0", kind="cuda", mps_percent=50)
    reg.plan_worker(PlannedWorker(worker_id, "a0", partition, variants))
    reg.worker_ready(worker_id, 1, {v: (1.0,) for v in variants}, 0.0, memory_peak_bytes=peak)


def test_the_largest_excess_over_a_workers_reservation_among_the_ready_ones() -> None:
    reg, est = registry(), WorkerOverhead()
    assert est.observe(reg.workers.values(), reg.variants) == {}
    ready(reg, "w0", ("cls-large",), 350 * MIB)  # 250 over its 100
    ready(reg, "w1", ("cls-large", "cls-small"), 400 * MIB)  # 280 over 120
    ready(reg, "w2", ("cls-small",), 10 * MIB)  # below its reservation: nothing, not less
    ready(reg, "g0", ("cls-large",), 0, kind="cuda")  # a GPU worker reports no host figure
    assert est.observe(reg.workers.values(), reg.variants) == {"cpu": 280 * MIB}


def test_the_figure_follows_the_workers_there_are_and_stays_when_none_reports() -> None:
    reg, est = registry(), WorkerOverhead()
    ready(reg, "w0", ("cls-large",), 350 * MIB)
    ready(reg, "w1", ("cls-small",), 520 * MIB)
    assert est.observe(reg.workers.values(), reg.variants) == {"cpu": 500 * MIB}
    reg.worker_down("w1", WorkerState.CRASHED)  # the one that held most is gone: the figure falls
    assert est.observe(reg.workers.values(), reg.variants) == {"cpu": 250 * MIB}
    reg.retire("w0", WorkerState.DRAINING)
    assert est.observe(reg.workers.values(), reg.variants) == {"cpu": 250 * MIB}  # none reports: the last figure
    assert est.known() == {"cpu": 250 * MIB}
