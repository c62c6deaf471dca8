"""Running a gateway: HTTP server, data dispatcher and controller link, with an ordered shutdown.

Start order: data socket, HTTP, controller link. Stop (SIGTERM): readiness answers 503 first
(for ``drain_announce_s``, while requests are still taken, so load balancers move away), then the
requests in flight finish (up to the shutdown timeout), then no new connection is taken and the
open ones are left up to ``drain_linger_s`` to close after their next answer, then HTTP closes,
then the controller link, then the data socket (failing whatever is still in flight, so no request
is left without an answer).

The controller link runs under a supervisor; when it gives up (crashes past its restart limit)
readiness and liveness answer 503 (see :mod:`gateway.health`): the gateway keeps answering on its
last routing table but would never learn of a re-plan, so it asks to be taken out and restarted.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

import zmq.asyncio
from aiohttp import web

from gateway.access import AccessError, load_tokens
from gateway.config import GatewayConfig
from gateway.control_actor import ControlLinkActor
from gateway.dispatcher import Dispatcher
from gateway.event_log import EventLog
from gateway.mesh_status import StatusFeed
from gateway.policy_store import PolicyReplicas
from gateway.health import Health, install, watch
from mesh.keys import client_keys, gateway_server_keys
from mesh.metrics_http import MetricsServer
from mesh.supervisor import Supervisor
from mesh.links import link_options
from gateway.http_app import METRICS, make_app

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
        self._watch: asyncio.Task[None] | None = None
        self.health = Health()
        self.http_url = ""
        self.metrics: MetricsServer | None = None

    async def start(self) -> None:
        cfg = self.config
        self.ctx = zmq.asyncio.Context()
        server_keys = gateway_server_keys(cfg.keys_dir, cfg.gateway_id) if cfg.keys_dir else None
        client_keys_ = client_keys(cfg.keys_dir, "gateway", cfg.gateway_id) if cfg.keys_dir else None
        self.dispatcher = Dispatcher(
            self.ctx,
            cfg.data_bind,
            gateway_id=cfg.gateway_id,
            heartbeat_interval_s=cfg.worker_heartbeat_interval_s,
            missed_heartbeats=cfg.worker_missed_heartbeats,
            max_outstanding_per_worker=cfg.max_outstanding_per_worker,
            max_inflight=cfg.max_inflight,
            admission=cfg.admission,
            deadline_grace_s=cfg.deadline_grace_ms / 1000.0,
            reply_margin_s=cfg.reply_margin_ms / 1000.0,
            security=server_keys,
            link=link_options(cfg),
        )
        await self.dispatcher.start()
        self.events = EventLog(feedback_wait_s=cfg.feedback_wait_s, retain_s=cfg.feedback_retain_s)
        self.policies = PolicyReplicas()
        status = StatusFeed()  # the controller's status, asked for while the dashboard is watched
        app = make_app(self.dispatcher, max_body_bytes=cfg.max_body_bytes, body_timeout_s=cfg.body_timeout_s,
                       events=self.events, policies=self.policies, selection=cfg.selection,
                       access=load_tokens(cfg.tokens_file) if cfg.tokens_file else None, status=status,
                       strict_readiness=cfg.strict_readiness)
        install(app, self.health)
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=cfg.shutdown_timeout_s, access_log=None
        )
        await self._runner.setup()
        tls = tls_context(cfg.tls_cert, cfg.tls_key)
        site = web.TCPSite(self._runner, cfg.http_host, cfg.http_port, reuse_address=True, ssl_context=tls)
        await site.start()
        port = self._runner.addresses[0][1]
        self.http_url = f"{'https' if tls else 'http'}://{cfg.http_host}:{port}"
        if cfg.metrics_port:
            self.metrics = MetricsServer(app[METRICS], cfg.http_host, cfg.metrics_port)
            await self.metrics.start()
        # The controller link runs under a supervisor: if it crashes it is restarted and registers
        # again, while the data plane keeps serving on the last routing table.
        self._supervisor = Supervisor(name="gateway", max_restarts=10, within_s=60.0)
        self._supervisor.add("control", lambda: ControlLinkActor(
            cfg, self.dispatcher, ctx=self.ctx, http_url=self.http_url, events=self.events, policies=self.policies,
            keys=client_keys_, status=status, revoked=self._key_revoked))
        await self._supervisor.start()
        self._watch = asyncio.create_task(watch(self._supervisor, self.health), name="gateway-control-watch")
        log.info("gateway serving", extra={"http": self.http_url, "data": self.dispatcher.address})

    def _key_revoked(self, why: str) -> None:
        """The controller refuses (or, with "", takes again) this gateway's key: a gateway it will
        not hear from serves a routing table that no longer changes, so it leaves rotation."""
        self.health.control_link_failed = f"this gateway's key was revoked: {why}" if why else ""

    async def stop(self) -> None:
        cfg = self.config
        self.health.draining = True
        if self._runner is not None:
            if cfg.drain_announce_s > 0:
                await asyncio.sleep(cfg.drain_announce_s)  # readiness says 503 while requests are still taken
            if not await self.health.wait_idle(cfg.shutdown_timeout_s):
                log.warning("%d requests still in flight after %ss", self.health.in_flight, cfg.shutdown_timeout_s)
            await self._close_connections(cfg.drain_linger_s)
            await self._runner.cleanup()
        if self.metrics is not None:
            await self.metrics.stop()
        if self._supervisor is not None:
            await self._supervisor.stop()
        if self._watch is not None:
            await self._watch
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self.policies is not None:
            self.policies.close()
        if self.ctx is not None:
            self.ctx.term()

    async def _close_connections(self, linger_s: float) -> None:
        """Take no new connection, then leave the open ones up to ``linger_s`` to close on their own.

        aiohttp's cleanup closes each kept-alive connection idle at that instant, and a request its
        client sent just then goes with it: the client sees the connection drop and cannot know
        whether the request ran. Draining, every answer closes its connection (gateway.health),
        so a client that sends on one now gets its answer first.
        """
        assert self._runner is not None
        for site in list(self._runner.sites):
            await site.stop()  # a new connection is refused: the client knows at once, and retries
        server = self._runner.server
        give_up = time.monotonic() + linger_s
        while server is not None and server.connections and time.monotonic() < give_up:
            await asyncio.sleep(0.01)


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """HTTPS when both a certificate and its key are given; one without the other is a mistake."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise AccessError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise AccessError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return context


async def run_gateway(config: GatewayConfig, stop: asyncio.Event) -> None:
    service = GatewayService(config)
    try:
        await service.start()
        metrics = f"  metrics {service.metrics.url}" if service.metrics else ""
        print(f"letmesh gateway: HTTP {service.http_url}  data {service.dispatcher.address}{metrics}", flush=True)
        await stop.wait()
    finally:
        await service.stop()
