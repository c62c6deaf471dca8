"""The gateway's link to the controller: register, heartbeat, receive routing tables.

The data plane never waits on this link: when the controller is down the dispatcher keeps
serving on the last routing table it received, and this actor re-registers until it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import zmq
import zmq.asyncio

from gateway.config import GatewayConfig
from gateway.dispatcher import Dispatcher
from mesh.actor import Actor
from mesh.clock import Clock, SystemClock
from mesh.liveness import Liveness
from mesh.lifecycle import feed, tick
from mesh.keys import ClientKeys, rejoin_hint
from mesh.links import link_options
from mesh.transport import Endpoint, Incoming
from protocol.codec import encode
from gateway.event_log import EventLog
from gateway.mesh_status import StatusFeed
from gateway.policy_store import PolicyReplicas
from protocol.types import DecisionRecord
from protocol.message import (
    AuthorizedAgents,
    DecisionRecords,
    DemandReport,
    DeregisterGateway,
    ErrorReply,
    GetStatus,
    Heartbeat,
    PolicySnapshot,
    RegisterGateway,
    RegisterGatewayReply,
    RoutingTable,
    StatusReply,
)

log = logging.getLogger(__name__)
DEREGISTER_LINGER_MS = 1000  # how long a stopping gateway's goodbye may wait to be sent
# Refused, a gateway beats every this many ticks (not every one), to learn when its key is back.
REVOKED_PROBE_TICKS = 10


def _encodable(record: DecisionRecord) -> bool:
    try:
        encode(DecisionRecords(records=(record,)))
    except (OverflowError, TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Tick:
    """Local timer message."""


class ControlLinkActor(Actor):
    """State touched only from ``handle``; the receive and timer tasks only ``tell``."""

    def __init__(
        self, config: GatewayConfig, dispatcher: Dispatcher, *, ctx: zmq.asyncio.Context, http_url: str,
        events: EventLog, policies: PolicyReplicas, clock: Clock | None = None, keys: ClientKeys | None = None,
        status: StatusFeed | None = None, revoked: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name="gateway-control", mailbox_size=10_000)
        self.config = config
        self._dispatcher = dispatcher
        self._events = events
        self._policies = policies
        self._status = status
        # Called with why when the controller refuses this gateway's key, and with "" once it
        # takes it again: the service's readiness and liveness follow it.
        self._on_revoked = revoked
        self.revoked = ""
        self._ctx = ctx
        self._keys = keys
        self._http_url = http_url
        self._clock = clock or SystemClock()
        self._endpoint: Endpoint | None = None
        self._tasks: list[asyncio.Task] = []
        self._registered = False
        self._last_register = float("-inf")
        self._seq = 0
        self._controller = Liveness(interval_s=config.heartbeat_interval_s, missed_limit=config.missed_heartbeats)
        self.controller_connected = False
        self._controller_instance = ""  # of the controller that answered the last registration
        self._lost_since: float | None = None  # when the controller was declared lost, until heard again
        self.first_table = asyncio.Event()
        self.unsendable_records = 0
        self._last_demand = self._clock.monotonic()

    async def on_start(self) -> None:
        self._endpoint = Endpoint.dealer(self._ctx, self.config.controller, f"gateway:{self.config.gateway_id}",
                                         security=self._keys, link=link_options(self.config), control=True)
        self._tasks = [
            asyncio.create_task(feed(self._endpoint, self), name="gateway-control-recv"),
            asyncio.create_task(tick(self, self.config.heartbeat_interval_s, Tick()), name="gateway-control-tick"),
        ]
        self._register()

    async def on_stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._endpoint is not None:
            if self.failure is None and self._registered:
                # A clean stop says goodbye, so the controller forgets this gateway now instead of
                # declaring it lost after its heartbeats stop; a crashed link re-registers instead.
                self._send(DeregisterGateway(gateway_id=self.config.gateway_id))
                self._endpoint.close(linger_ms=DEREGISTER_LINGER_MS)
            else:
                self._endpoint.close()

    async def handle(self, msg: object) -> object:
        now = self._clock.monotonic()
        match msg:
            case Tick():
                if self.revoked:  # refused: only a beat now and then, to see the key taken back
                    self._seq += 1
                    if self._seq % REVOKED_PROBE_TICKS == 0:
                        self._send(Heartbeat(sender=self.config.gateway_id, role="gateway", seq=self._seq))
                    return None
                if not self._registered and now - self._last_register >= 1.0:
                    self._register()
                for _ in self._controller.lost(now):
                    log.warning("controller lost; serving on routing table version %d", self._dispatcher.routing_version)
                    self._lost_since = now
                    self.controller_connected = False
                    self._registered = False
                self._seq += 1
                self._send(Heartbeat(sender=self.config.gateway_id, role="gateway", seq=self._seq))
                self._ship_decisions(now)
                self._report_demand(now)
                if self._status is not None and self._registered and self._status.due(now):
                    self._send(GetStatus())  # only while the dashboard is watched (gateway/mesh_status.py)
            case Incoming(msg=PolicySnapshot() as snap, buffers=buffers):
                self._controller.beat("controller", now)
                if len(buffers) == 1 and buffers[0].nbytes == snap.model_bytes:
                    self._policies.apply_snapshot(snap.family, snap.version, snap.vw_args, bytes(buffers[0]))
            case Incoming(msg=inner):
                self._controller.beat("controller", now)
                if self._lost_since is not None:
                    log.info("controller back after %.1f s", now - self._lost_since)
                    self._lost_since = None
                self.controller_connected = True
                self._on_controller(inner)
        return None

    def _on_controller(self, msg: object) -> None:
        match msg:
            case RoutingTable():
                self._dispatcher.peers.routes_changed(msg)
                self._dispatcher.apply_routing(msg)
                self.first_table.set()
            case RegisterGatewayReply():
                self._registered = True
                if msg.controller_instance != self._controller_instance:
                    if self._controller_instance:
                        log.info("a new controller instance (epoch %d): taking its routing table and policies",
                                 msg.controller_epoch)
                        self._dispatcher.new_controller()
                        self._policies.new_controller()
                    self._controller_instance = msg.controller_instance
                if self.revoked:
                    log.warning("the controller takes this gateway's key again")
                    self._set_revoked("")
            case StatusReply():
                if self._status is not None:
                    self._status.received(msg, self._clock.monotonic())
            case AuthorizedAgents(keys=keys, workers=workers):
                self._dispatcher.peers.agents_changed(keys, workers)
            case ErrorReply(code="unknown_peer"):
                self._registered = False
                self._register()
            case ErrorReply(code="revoked", message=text):
                self._registered = False
                if not self.revoked:
                    log.error("the controller at %s refuses this gateway: %s; readiness and liveness answer 503. "
                              "To serve again, %s", self.config.controller, text,
                              rejoin_hint("gateway", self.config.gateway_id))
                    self._set_revoked(text or "key revoked")
            case Heartbeat():
                pass
            case other:
                log.warning("unexpected message from controller: %s", type(other).__name__)

    def _set_revoked(self, why: str) -> None:
        self.revoked = why
        if self._on_revoked is not None:
            self._on_revoked(why)

    def _ship_decisions(self, now: float) -> None:
        """Joined decisions go to the controller in batches; back to the log for the next tick if the
        link is full (or down).

        A record the codec cannot carry is dropped and counted (``unsendable_records``), not
        allowed to hold back the batch it came in.
        """
        records = self._events.due(now)
        size = self.config.decision_batch_max
        i = 0
        while i < len(records):
            batch = tuple(records[i:i + size])
            try:
                self._endpoint.send_nowait(DecisionRecords(records=batch))
            except zmq.Again:
                self._events.requeue(records[i:])  # first next tick; the log's bound drops the oldest
                return
            except (OverflowError, TypeError, ValueError):
                kept = [r for r in batch if _encodable(r)]
                self.unsendable_records += len(batch) - len(kept)
                log.warning("dropped %d decision records the codec cannot carry", len(batch) - len(kept))
                records[i:i + size] = kept
                if len(kept) == len(batch):  # not the records: give up on this batch rather than loop
                    i += size
                continue
            i += size

    def _report_demand(self, now: float) -> None:
        window = now - self._last_demand
        self._last_demand = now
        counts, missed, named = self._dispatcher.demand.take()
        if window > 0 and self._registered:
            self._send(DemandReport(gateway_id=self.config.gateway_id, window_s=window, counts=counts,
                                    missed=missed, named=named))

    def _register(self) -> None:
        self._last_register = self._clock.monotonic()
        self._send(
            RegisterGateway(
                gateway_id=self.config.gateway_id,
                data_endpoint=self.config.data_advertise or self._dispatcher.address,
                http_url=self._http_url,
            )
        )

    def _send(self, msg: object) -> None:
        assert self._endpoint is not None
        try:
            self._endpoint.send_nowait(msg)
        except zmq.Again:
            log.debug("controller link backed up")
