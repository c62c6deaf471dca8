"""Fuzzing the controller's control plane: decision records and demand reports of any value, and
arbitrary bodies under their tags, never stop or stall it, and never grow its tables beyond the
repository's names. A real controller on an event loop in a background thread, over real ZeroMQ."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import ControllerConfig
from controller.controller_actor import ControllerActor
from protocol.codec import PROTOCOL_VERSION, decode, encode
from protocol.message import DecisionRecords, DemandReport, GetStatus, StatusReply
from protocol.types import CandidateInfo, DecisionRecord

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
WAIT_MS = 10_000


class Controller:
    def __init__(self, repo: Path, state: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.actor: ControllerActor = self.call(self._start(repo, state))
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, b"gateway:fuzz")
        self.sock.connect(self.actor.address)

    async def _start(self, repo: Path, state: Path) -> ControllerActor:
        import zmq.asyncio

        self.actx = zmq.asyncio.Context()
        actor = ControllerActor(ControllerConfig(bind="tcp://127.0.0.1:0", repository=str(repo), state_dir=str(state),
                                                 heartbeat_interval_s=0.2, auto_profile=False), ctx=self.actx)
        await actor.start()
        return actor

    def call(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def status(self) -> StatusReply:
        """Ask for status; everything sent before has then been handled (one mailbox, in order)."""
        self.sock.send_multipart(encode(GetStatus()))
        while True:
            assert self.sock.poll(WAIT_MS), "the controller did not answer its status within 10 s"
            msg, _ = decode(self.sock.recv_multipart())
            if isinstance(msg, StatusReply):
                return msg

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()
        self.call(self.actor.stop())
        self.actx.term()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def controller(repo: Path, tmp_path_factory) -> Iterator[Controller]:
    c = Controller(repo, tmp_path_factory.mktemp("fuzz-state"))
    try:
        yield c
    finally:
        c.close()


wire_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), wire_ints.map(float),
                    st.sampled_from([float("nan"), float("inf"), -0.0, 1e300]))
names = st.one_of(st.sampled_from(["identity", "double", "triple", "negate", "wide", "trivial", ""]),
                  st.text(max_size=300))
context = st.dictionaries(st.text(max_size=80), st.one_of(st.text(max_size=300), wire_ints, numbers, st.booleans()),
                          max_size=40)
candidates = st.lists(st.builds(CandidateInfo, variant=names, accuracy=numbers, predicted_latency_ms=numbers,
                                p_deadline=numbers, energy_j=numbers), max_size=70).map(tuple)
records = st.builds(DecisionRecord, event_id=st.text(max_size=200), family=names, context=context, budget_ms=numbers,
                    load=numbers, candidates=candidates, chosen=wire_ints, probability=numbers, reward=numbers,
                    source=st.sampled_from(["feedback", "implicit", "other"]), met=st.booleans())
counts = st.dictionaries(names, wire_ints, max_size=300)
reports = st.builds(DemandReport, gateway_id=names, window_s=numbers, counts=counts, missed=counts, named=counts)
plain = st.recursive(st.one_of(st.none(), st.booleans(), wire_ints, st.floats(), st.text(max_size=50)),
                     lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner,
                                                                                          max_size=5)), max_leaves=30)


@FUZZ
@given(batch=st.lists(records, max_size=8), report=reports,
       raw=st.tuples(st.sampled_from([DecisionRecords.TAG, DemandReport.TAG]), plain))
def test_control_messages_never_stop_stall_or_grow_the_controller(controller: Controller, batch, report,
                                                                  raw) -> None:
    controller.sock.send_multipart(encode(DecisionRecords(records=tuple(batch))))
    controller.sock.send_multipart(encode(report))
    controller.sock.send_multipart([msgpack.packb([PROTOCOL_VERSION, raw[0], raw[1]], use_bin_type=True)])
    status = controller.status()
    actor = controller.actor
    assert actor.running and actor.statistics().failed == 0
    variants = {m.name for m in status.models}
    families = {m.family for m in status.models}
    assert {v for _, v in actor.plane.demand._streams} <= variants
    assert set(actor.plane.demand._peaks) <= variants
    assert set(actor.plane.learner.policies) <= families
    assert not status.unavailable
