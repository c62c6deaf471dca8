"""When ``letmesh up`` calls the mesh ready: the placed variants served, the unplaced ones not waited for."""

from __future__ import annotations

from letmesh.launcher import placement_served
from protocol.message import StatusReply
from protocol.types import ModelStatus

READY = ModelStatus(name="digits-cnn", family="digits", accuracy=0.98, state="READY", workers=("w1",), placed=True)
UNPLACED = ModelStatus(name="digits-tiny", family="digits", accuracy=0.5, state="UNAVAILABLE", workers=(),
                       reason="not placed: the current plan runs it on no worker")
STARTING = ModelStatus(name="other", family="other", accuracy=0.9, state="UNAVAILABLE", workers=(),
                       reason="placed on w2, not ready yet", placed=True)


def status(*models: ModelStatus, version: int = 4) -> StatusReply:
    return StatusReply(controller_epoch=1, routing_version=version, agents=(), workers=(), models=models, gateways=())


def gateway(unserved: str = "0", version: str = "4") -> dict[str, str]:
    return {"Letmesh-Unserved-Variants": unserved, "Letmesh-Routing-Version": version}


def test_a_variant_the_plan_leaves_unplaced_is_not_waited_for() -> None:
    assert placement_served(status(READY, UNPLACED), 200, gateway())


def test_a_placed_variant_whose_worker_is_starting_is_waited_for() -> None:
    assert not placement_served(status(READY, STARTING), 200, gateway())


def test_the_gateway_must_be_ready_serve_what_it_routes_and_hold_the_latest_table() -> None:
    assert not placement_served(status(READY), 503, gateway())
    assert not placement_served(status(READY), 200, gateway(unserved="1"))
    assert not placement_served(status(READY, version=5), 200, gateway(version="4"))  # table not there yet
    assert not placement_served(status(READY), 200, {"Letmesh-Unserved-Variants": "0"})  # an older gateway
    assert placement_served(status(READY, version=5), 200, gateway(version="6"))
