"""The controller's bandit learner over real ZeroMQ: decisions in, policy snapshots out, kept across restarts."""

from __future__ import annotations

import random

from controller.store import StateStore
from mesh.bandit import BanditPolicy, Candidate
from protocol.message import DecisionRecords, PolicySnapshot, RegisterGateway, RegisterGatewayReply
from protocol.types import CandidateInfo, DecisionRecord

GATEWAY = "tcp://127.0.0.1:17011"
ARMS = (CandidateInfo(variant="small", accuracy=0.9, predicted_latency_ms=1.0, p_deadline=1.0, energy_j=0.01),
        CandidateInfo(variant="large", accuracy=0.99, predicted_latency_ms=9.0, p_deadline=0.9, energy_j=0.1))
PREFERS = {"fast-app": 0, "careful-app": 1}


def records(n: int, seed: int, prefix: str) -> tuple[DecisionRecord, ...]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        app = rng.choice(sorted(PREFERS))
        chosen = rng.randrange(2)
        out.append(DecisionRecord(
            event_id=f"{prefix}{i}", family="trivial", context={"app": app}, budget_ms=50.0, load=0.0,
            candidates=ARMS, chosen=chosen, probability=0.5,
            reward=1.0 if chosen == PREFERS[app] else 0.0, source="feedback",
        ))
    return tuple(out)


def preferred(model: bytes, vw_args: str, app: str) -> str:
    cands = [Candidate(variant=c.variant, accuracy=c.accuracy, predicted_latency_ms=c.predicted_latency_ms,
                       p_deadline=c.p_deadline, energy_j=c.energy_j) for c in ARMS]
    with BanditPolicy(vw_args, model=model) as policy:
        pmf = policy.pmf({"app": app}, 50.0, 0.0, cands)
    return ARMS[max(range(len(pmf)), key=pmf.__getitem__)].variant


async def register(gateway) -> PolicySnapshot:
    await gateway.send(RegisterGateway(gateway_id="g1", data_endpoint=GATEWAY, http_url="http://127.0.0.1:8000"))
    await gateway.expect(RegisterGatewayReply)
    return await gateway.expect(PolicySnapshot, lambda s: s.family == "trivial")


async def test_decisions_train_a_policy_that_reaches_gateways_and_survives_a_restart(start_controller, peer, tmp_path):
    state = tmp_path / "state"
    # This peer sends no heartbeats: give it 5 s before the controller drops it, so that training
    # on a busy machine cannot outlast the gateway (this test is about learning, not liveness).
    first = await start_controller(state_dir=state, policy_publish_interval_s=0.05, heartbeat_interval_s=0.05,
                                   missed_heartbeats=100)
    gateway = peer(first.address, b"gateway:g1")
    initial = await register(gateway)
    assert len(gateway.buffers[id(initial)][0]) == initial.model_bytes > 0

    batch = records(600, seed=1, prefix="e")
    await gateway.send(DecisionRecords(records=batch))
    learned = await gateway.expect(PolicySnapshot, lambda s: s.version > initial.version)
    model = gateway.buffers[id(learned)][0]
    assert len(model) == learned.model_bytes
    assert preferred(model, learned.vw_args, "fast-app") == "small"
    assert preferred(model, learned.vw_args, "careful-app") == "large"

    # The same events again are ignored: logged once, learned once.
    await gateway.send(DecisionRecords(records=batch[:50]))
    await gateway.sync()
    await first.stop()
    store = StateStore(state / "controller.sqlite3")
    try:
        logged = store.decisions("trivial")
    finally:
        store.close()
    assert [r.event_id for r in logged] == [r.event_id for r in batch]

    second = await start_controller(state_dir=state)
    gateway2 = peer(second.address, b"gateway:g1")
    restored = await register(gateway2)
    assert restored.version >= learned.version
    model = gateway2.buffers[id(restored)][0]
    assert preferred(model, restored.vw_args, "fast-app") == "small"
    assert preferred(model, restored.vw_args, "careful-app") == "large"
