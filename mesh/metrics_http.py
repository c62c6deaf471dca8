"""Serving one Prometheus registry's ``/metrics`` on a port of its own, for any role.

A tiny aiohttp app on the role's own event loop rather than ``prometheus_client``'s
``start_http_server`` thread: collectors read actor state at scrape time, and on the loop that
owns the state they never see it half-changed (no locks), and the server starts and stops with
the actor's lifecycle, leaving no thread behind. Imports no role package.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler


class MetricsServer:
    """``start`` then ``stop``, once each, from one event loop. ``port`` 0 takes a free port."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Bind and serve; returns the URL of ``/metrics``. Raises OSError when the port is taken."""
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = port
        self.url = f"http://{self.host}:{port}/metrics"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
