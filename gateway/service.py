"""Running a gateway: HTTP server, data dispatcher and controller link, with an ordered shutdown.

Start order: data socket, controller link, HTTP. Stop order is the reverse: stop accepting HTTP
and let handlers finish (up to the shutdown timeout), then the controller link, then the data
socket (failing whatever is still in flight, so no request is left without an answer).
"""

from __future__ import annotations

import asyncio
import logging

import zmq.asyncio
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.control_actor import ControlLinkActor
from gateway.dispatcher import Dispatcher
from gateway.event_log import EventLog
from gateway.policy_store import PolicyReplicas
from mesh.supervisor import Supervisor
from gateway.http_app import make_app

log = logging.getLogger(__name__)


class GatewayService:
    """Lifecycle object: ``start`` then ``stop``, once each, from one event loop."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.ctx: zmq.asyncio.Context | None = None
        self.dispatcher: Dispatcher | None = None
        self._supervisor: Supervisor | None = None
        self.events: EventLog | None = None
        self.policies: PolicyReplicas | None = None
        self._runner: web.AppRunner | None = None
        self.http_url = ""

    async def start(self) -> None:
        cfg = self.config
        self.ctx = zmq.asyncio.Context()
        self.dispatcher = Dispatcher(
            self.ctx,
            cfg.data_bind,
            gateway_id=cfg.gateway_id,
            heartbeat_interval_s=cfg.worker_heartbeat_interval_s,
            missed_heartbeats=cfg.worker_missed_heartbeats,
            max_outstanding_per_worker=cfg.max_outstanding_per_worker,
            deadline_grace_s=cfg.deadline_grace_ms / 1000.0,
            reply_margin_s=cfg.reply_margin_ms / 1000.0,
        )
        await self.dispatcher.start()
        self.events = EventLog(feedback_wait_s=cfg.feedback_wait_s, retain_s=cfg.feedback_retain_s)
        self.policies = PolicyReplicas()
        app = make_app(self.dispatcher, max_body_bytes=cfg.max_body_bytes, events=self.events,
                       policies=self.policies, selection=cfg.selection)
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=cfg.shutdown_timeout_s, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.http_host, cfg.http_port, reuse_address=True)
        await site.start()
        port = self._runner.addresses[0][1]
        self.http_url = f"http://{cfg.http_host}:{port}"
        # The controller link runs under a supervisor: if it crashes it is restarted and registers
        # again, while the data plane keeps serving on the last routing table.
        self._supervisor = Supervisor(name="gateway", max_restarts=10, within_s=60.0)
        self._supervisor.add("control", lambda: ControlLinkActor(
            cfg, self.dispatcher, ctx=self.ctx, http_url=self.http_url, events=self.events, policies=self.policies))
        await self._supervisor.start()
        log.info("gateway serving", extra={"http": self.http_url, "data": self.dispatcher.address})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._supervisor is not None:
            await self._supervisor.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self.policies is not None:
            self.policies.close()
        if self.ctx is not None:
            self.ctx.term()


async def run_gateway(config: GatewayConfig, stop: asyncio.Event) -> None:
    service = GatewayService(config)
    try:
        await service.start()
        print(f"letmesh gateway: HTTP {service.http_url}  data {service.dispatcher.address}", flush=True)
        await stop.wait()
    finally:
        await service.stop()
