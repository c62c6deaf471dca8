"""Poisoned control messages: the controller drops them and keeps answering (real ZeroMQ)."""

from __future__ import annotations

import dataclasses

from protocol.message import DecisionRecords, DemandReport, PolicySnapshot, RegisterGateway, RegisterGatewayReply
from protocol.types import CandidateInfo, DecisionRecord

GATEWAY = "tcp://127.0.0.1:17012"
ARMS = (CandidateInfo(variant="small", accuracy=0.9, predicted_latency_ms=1.0, p_deadline=1.0, energy_j=0.01),
        CandidateInfo(variant="large", accuracy=0.99, predicted_latency_ms=9.0, p_deadline=0.9, energy_j=0.1))


def record(i: int, **change) -> DecisionRecord:
    good = DecisionRecord(event_id=f"e{i}", family="trivial", context={"app": "a"}, budget_ms=50.0, load=0.0,
                          candidates=ARMS, chosen=i % 2, probability=0.5, reward=1.0, source="feedback")
    return dataclasses.replace(good, **change)


async def register(gateway) -> PolicySnapshot:
    await gateway.send(RegisterGateway(gateway_id="g1", data_endpoint=GATEWAY, http_url="http://127.0.0.1:8000"))
    await gateway.expect(RegisterGatewayReply)
    return await gateway.expect(PolicySnapshot, lambda s: s.family == "trivial")


async def test_nan_decision_records_are_dropped_and_sound_ones_still_learned(start_controller, peer) -> None:
    controller = await start_controller(policy_publish_interval_s=0.05, heartbeat_interval_s=0.05,
                                        missed_heartbeats=100)
    gateway = peer(controller.address, b"gateway:g1")
    initial = await register(gateway)
    nan = float("nan")
    poisoned = tuple(record(i, event_id=f"bad{i}", budget_ms=nan, load=nan, probability=nan, reward=nan)
                     for i in range(4))
    await gateway.send(DecisionRecords(records=poisoned))
    await gateway.send(DecisionRecords(records=(record(0, family="invented"),)))
    await gateway.sync()  # answered: the controller is up and not stalled
    assert controller.running
    await gateway.send(DecisionRecords(records=tuple(record(i) for i in range(20))))
    learned = await gateway.expect(PolicySnapshot, lambda s: s.version > initial.version)
    assert learned.family == "trivial"
    assert controller.running and controller.statistics().failed == 0


async def test_a_demand_report_of_4096_invented_names_changes_nothing(start_controller, peer) -> None:
    controller = await start_controller(heartbeat_interval_s=0.05, missed_heartbeats=100)
    gateway = peer(controller.address, b"gateway:g1")
    await register(gateway)
    invented = {f"made-up-{i}": 1000 for i in range(4096)}
    for _ in range(3):
        await gateway.send(DemandReport(gateway_id="g1", window_s=1.0, counts={"identity": 5, **invented},
                                        missed=invented, named={"identity": 2, **invented}))
    await gateway.send(DemandReport(gateway_id="g1", window_s=float("nan"), counts={"identity": 5}))
    status = await gateway.sync()
    assert {m.name for m in status.models} <= set(controller.plane.registry.variants)
    assert set(controller.plane.demand.rates()) <= {"identity"}
    assert set(controller.plane.named.rates()) <= {"identity"}
    assert len(controller.plane.demand._streams) <= len(controller.plane.registry.variants)
    assert len(controller.plane.named._streams) <= len(controller.plane.registry.variants)
    assert controller.running and controller.statistics().failed == 0
