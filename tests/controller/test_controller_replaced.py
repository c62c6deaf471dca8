"""A gateway that outlives its controller takes a new controller's routing table and policies, even
when that controller lost its state and counts its versions from the start again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from controller.config import ControllerConfig
from controller.controller_actor import ControllerActor
from controller.learner import Learner
from gateway.config import GatewayConfig
from gateway.service import GatewayService
from letmesh.launcher import free_port
from tests.controller.test_controller_bandit import records

BOUND_S = 20.0


async def until(predicate, what: str) -> None:
    for _ in range(int(BOUND_S / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {BOUND_S} s: {what}")


async def controller(ctx, repo: Path, state: Path, port: int) -> ControllerActor:
    actor = ControllerActor(ControllerConfig(bind=f"tcp://127.0.0.1:{port}", repository=str(repo), state_dir=str(state),
                                             heartbeat_interval_s=0.05, missed_heartbeats=10), ctx=ctx)
    await asyncio.wait_for(actor.start(), BOUND_S)
    return actor


async def test_a_gateway_follows_a_controller_that_lost_its_state(ctx, repo: Path, tmp_path: Path) -> None:
    port = free_port()
    old_state = tmp_path / "old"
    learner = Learner(old_state)  # a policy learned and published three times before
    for i in range(3):
        learner.learn(records(50, seed=i, prefix=f"r{i}-"))
        learner.publish()
    learner.close()
    first = await controller(ctx, repo, old_state, port)
    await first.stop()  # one start before: the next counts its routing versions from epoch 2
    old = await controller(ctx, repo, old_state, port)
    gateway = GatewayService(GatewayConfig(controller=f"tcp://127.0.0.1:{port}", gateway_id="g1", http_port=0,
                                           data_bind="tcp://127.0.0.1:*", heartbeat_interval_s=0.05,
                                           missed_heartbeats=4))
    await gateway.start()
    new = None
    try:
        await until(lambda: gateway.dispatcher.routing_version == old.plane.registry.routing_version
                    and gateway.policies.versions.get("trivial") == 3, "the gateway follows the first controller")
        held = gateway.dispatcher.routing_version
        await old.stop()

        new = await controller(ctx, repo, tmp_path / "new", port)  # its state is gone: versions start over
        assert new.plane.registry.routing_version < held

        await until(lambda: gateway.dispatcher.routing_version == new.plane.registry.routing_version,
                    "the gateway takes the new controller's routing table")
        await until(lambda: gateway.policies.versions.get("trivial") == 0, "the gateway takes the new controller's policy")
    finally:
        await gateway.stop()
        if new is not None:
            await new.stop()
