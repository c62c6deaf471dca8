"""The controller actor: binds the control ROUTER and moves messages to and from the control plane.

What each message changes, and what is sent back, is decided by
:class:`~controller.control_plane.ControlPlane`; this actor receives, calls it, and sends its
outbox. A peer's identity is its ZeroMQ routing id (``agent:<id>``, ``gateway:<id>``,
``worker:<id>``), never a field of the message body.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

import zmq.asyncio

from controller.config import ControllerConfig
from controller.control_plane import ControlPlane
from controller.metrics import ControllerMetrics
from mesh.actor import Actor
from mesh.clock import Clock, SystemClock
from mesh.lifecycle import feed, tick
from mesh.links import link_options
from mesh.metrics_http import MetricsServer
from mesh.transport import Endpoint, Incoming, PeerUnreachable
from mesh.transport_metrics import EndpointCollector
from protocol.message import GetStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tick:
    """Local timer message: expire peers, send heartbeats."""


class ControllerActor(Actor):
    """Owns the control socket and the control plane.

    Concurrency: one receive task and one timer task feed the mailbox; all state is touched
    only from ``handle``, one message at a time.
    """

    def __init__(self, config: ControllerConfig, *, ctx: zmq.asyncio.Context, clock: Clock | None = None) -> None:
        super().__init__(name="controller", mailbox_size=10_000)
        self.config = config
        self._ctx = ctx
        self._clock = clock or SystemClock()
        self._endpoint: Endpoint | None = None
        self.plane: ControlPlane | None = None
        self._tasks: list[asyncio.Task] = []
        self.address = ""
        self.metrics = ControllerMetrics()
        self.metrics.registry.register(EndpointCollector(lambda: {"control": self._endpoint}))
        self._metrics_server: MetricsServer | None = None

    @property
    def metrics_url(self) -> str:
        return self._metrics_server.url if self._metrics_server is not None else ""

    async def on_start(self) -> None:
        if self.config.metrics_port:  # first: a taken port fails the start before anything else is held
            self._metrics_server = MetricsServer(self.metrics.registry, self.config.metrics_host,
                                                 self.config.metrics_port)
            await self._metrics_server.start()
        self.plane = plane = ControlPlane(self.config, self._clock, self.metrics, lambda: self.advertised_address)
        ring = plane.trust.keyring
        self._endpoint = Endpoint.router(self._ctx, self.config.bind, security=ring.server_keys() if ring else None,
                                         refresh=ring.refresh if ring else None, link=link_options(self.config))
        self.address = self._endpoint.address
        self._tasks = [
            asyncio.create_task(feed(self._endpoint, self), name="controller-recv"),
            asyncio.create_task(tick(self, self.config.heartbeat_interval_s, Tick()), name="controller-tick"),
        ]
        log.info("controller listening", extra={"address": self.address, "epoch": plane.epoch})

    async def on_stop(self) -> None:
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.plane is not None:
            self.plane.close()
        if self._endpoint is not None:
            self._endpoint.close()

    async def handle(self, msg: object) -> object:
        plane = self.plane
        assert plane is not None
        if isinstance(msg, GetStatus):  # in-process status asks (tests, embedding)
            return plane.status()
        try:
            if isinstance(msg, Tick):
                plane.tick()
            else:
                assert isinstance(msg, Incoming) and msg.peer is not None
                plane.receive(msg.peer, msg.peer_name, msg.msg)
        finally:
            self._flush()  # what was decided before an error still goes out
        return None

    @property
    def advertised_address(self) -> str:
        """The address workers dial: configured, or the bound one with a wildcard host made concrete."""
        if self.config.advertise:
            return self.config.advertise
        if "0.0.0.0" in self.address or "*" in self.address:
            host = socket.gethostname()
            return self.address.replace("0.0.0.0", host).replace("*", host)
        return self.address

    def _flush(self) -> None:
        assert self._endpoint is not None and self.plane is not None
        outbox, self.plane.outbox = self.plane.outbox, []
        for out in outbox:
            try:
                self._endpoint.send_nowait(out.msg, out.tensors, to=out.peer)
            except PeerUnreachable:
                log.debug("peer unreachable", extra={"peer": out.peer})
            except zmq.Again:
                log.warning("send queue full", extra={"peer": out.peer})
