"""What a worker holds beyond its variants' needs, per device and per device kind, from the peaks
ready workers report: the largest excess there, rising at once and falling only after a while."""

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
    for agent in ("a0", "a1"):
        reg.agent_registered(agent, "host", (DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=4,
                                                        memory_bytes=1 << 30),), now=0.0)
    return reg


def ready(reg: Registry, worker_id: str, variants: tuple[str, ...], peak: int, *, agent: str = "a0",
          kind: str = "cpu") -> None:
    partition = Partition(device_id="cpu0", kind="cpu", cores=(0,)) if kind == "cpu" else \
        Partition(device_id="cuda0", kind="cuda", mps_percent=50)
    if worker_id not in reg.workers:
        reg.plan_worker(PlannedWorker(worker_id, agent, partition, variants))
    reg.worker_ready(worker_id, 1, {v: (1.0,) for v in variants}, 0.0, memory_peak_bytes=peak)


def test_per_device_the_largest_excess_over_a_workers_reservation_and_per_kind_the_largest_device() -> None:
    reg, est = registry(), WorkerOverhead()
    assert est.observe(reg.workers.values(), reg.variants, 0.0) == {}
    ready(reg, "w0", ("cls-large",), 350 * MIB)  # 250 over its 100
    ready(reg, "w1", ("cls-large", "cls-small"), 400 * MIB)  # 280 over 120
    ready(reg, "w2", ("cls-small",), 10 * MIB)  # below its reservation: nothing, not less
    ready(reg, "v0", ("cls-small",), 170 * MIB, agent="a1")  # another host: 150 over 20
    ready(reg, "g0", ("cls-large",), 0, kind="cuda")  # a GPU worker reports no host figure
    assert est.observe(reg.workers.values(), reg.variants, 0.0) == \
        {"a0/cpu0": 280 * MIB, "a1/cpu0": 150 * MIB, "cpu": 280 * MIB}


def test_a_figure_rises_at_once_falls_only_after_the_hold_and_stays_when_nothing_reports() -> None:
    reg, est = registry(), WorkerOverhead(fall_after_s=60.0)
    ready(reg, "w0", ("cls-large",), 350 * MIB)
    ready(reg, "w1", ("cls-small",), 520 * MIB)
    assert est.observe(reg.workers.values(), reg.variants, 0.0)["a0/cpu0"] == 500 * MIB
    reg.worker_down("w1", WorkerState.CRASHED)  # the one that held most is gone
    assert est.observe(reg.workers.values(), reg.variants, 10.0)["a0/cpu0"] == 500 * MIB  # held
    assert est.observe(reg.workers.values(), reg.variants, 69.0)["a0/cpu0"] == 500 * MIB
    assert est.observe(reg.workers.values(), reg.variants, 70.0)["a0/cpu0"] == 250 * MIB  # lower for 60 s
    ready(reg, "w0", ("cls-large",), 380 * MIB)
    assert est.observe(reg.workers.values(), reg.variants, 71.0)["a0/cpu0"] == 280 * MIB  # a rise: at once
    reg.retire("w0", WorkerState.DRAINING)
    assert est.observe(reg.workers.values(), reg.variants, 500.0) == {"a0/cpu0": 280 * MIB, "cpu": 280 * MIB}
    assert est.known() == {"a0/cpu0": 280 * MIB, "cpu": 280 * MIB}  # none reports: the last figure stands


def test_a_dip_shorter_than_the_hold_does_not_start_the_fall_over_again() -> None:
    reg, est = registry(), WorkerOverhead(fall_after_s=60.0)
    ready(reg, "w0", ("cls-large",), 400 * MIB)
    est.observe(reg.workers.values(), reg.variants, 0.0)
    ready(reg, "w0", ("cls-large",), 200 * MIB)  # a restarted process, not at its peak yet
    est.observe(reg.workers.values(), reg.variants, 10.0)
    ready(reg, "w0", ("cls-large",), 400 * MIB)  # back up: the fall is off
    est.observe(reg.workers.values(), reg.variants, 20.0)
    ready(reg, "w0", ("cls-large",), 200 * MIB)
    assert est.observe(reg.workers.values(), reg.variants, 75.0)["a0/cpu0"] == 300 * MIB  # lower since 75, not 10
    assert est.observe(reg.workers.values(), reg.variants, 135.0)["a0/cpu0"] == 100 * MIB


def test_after_the_hold_the_figure_falls_to_the_most_read_meanwhile_and_a_forgotten_agent_takes_its_own() -> None:
    reg, est = registry(), WorkerOverhead(fall_after_s=60.0)
    ready(reg, "w0", ("cls-large",), 500 * MIB)
    ready(reg, "v0", ("cls-large",), 300 * MIB, agent="a1")
    est.observe(reg.workers.values(), reg.variants, 0.0)
    for at, peak in ((10.0, 200), (30.0, 350), (50.0, 250), (70.0, 220)):
        ready(reg, "w0", ("cls-large",), peak * MIB)
        figures = est.observe(reg.workers.values(), reg.variants, at)
    assert figures["a0/cpu0"] == 250 * MIB  # 350 MiB read during the hold, less the 100 reserved
    assert est.observe(reg.workers.values(), reg.variants, 80.0, agents={"a0"}) == \
        {"a0/cpu0": 250 * MIB, "cpu": 250 * MIB}  # a1 forgotten: its 200 MiB goes with it


def test_a_prior_stands_for_a_kind_until_its_workers_report_then_their_figure_does_lower_or_higher() -> None:
    reg, est = registry(), WorkerOverhead(prior={"cpu": 200 * MIB, "cuda": 0})
    assert est.observe(reg.workers.values(), reg.variants, 0.0) == {"cpu": 200 * MIB}
    ready(reg, "w0", ("cls-large",), 160 * MIB)  # 60 over its 100
    assert est.observe(reg.workers.values(), reg.variants, 1.0) == {"a0/cpu0": 60 * MIB, "cpu": 60 * MIB}
    ready(reg, "w1", ("cls-small",), 320 * MIB, agent="a1")  # 300 over its 20
    assert est.known()["cpu"] == 60 * MIB
    assert est.observe(reg.workers.values(), reg.variants, 2.0)["cpu"] == 300 * MIB
