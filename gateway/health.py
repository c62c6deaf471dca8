"""What the gateway's health endpoints answer: whether its routing table can be served, draining,
a dead control link.

:func:`unready_reason` is the pure readiness rule over a routing table; :class:`Health` is a small
state object the service flips and the HTTP layer reads; :func:`health_middleware` answers
``/v2/health/ready`` and ``/v2/health/live`` with 503 while it says so, and counts the requests in
flight so a drain knows when they are done. Imports only ``mesh`` and ``gateway.routing`` of ours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from gateway.routing import RoutingView
from mesh.supervisor import Supervisor, SupervisorEscalated

log = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/v2/health/ready", "/v2/health/live"})
# On /v2/health/ready: how many variants of the routing table have no live worker, whatever the
# readiness mode, so a launcher can wait for a whole placement without a token (health is open).
UNSERVED_HEADER = "Letmesh-Unserved-Variants"
# Also on /v2/health/ready: the version of the routing table the gateway serves on, so a launcher can
# tell the table the controller last published has reached it.
ROUTING_VERSION_HEADER = "Letmesh-Routing-Version"
# Names listed in a reason before it says "and N more".
_NAMES_SHOWN = 5


def _names(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:_NAMES_SHOWN])
    return shown if len(names) <= _NAMES_SHOWN else f"{shown} and {len(names) - _NAMES_SHOWN} more"


def unready_reason(view: RoutingView, serving: Callable[[str], bool], *, strict: bool = False) -> str:
    """"" when the table can be served, else why not. ``serving(variant)``: a live worker has it.

    Ready means every family can be served (some variant of it has a live worker) and so can
    every variant the table routes to (a client may name it directly). Variants the plan left
    without a worker (accuracy scaling, one model per device) do not count: requests to their
    family are served. ``strict``: every variant of the repository must have a live worker, and
    none may be set aside as unloadable (Triton's ``--strict-readiness``).
    """
    if not view.received:
        return "no routing table from the controller yet"
    if not view.models:
        return "the routing table names no model"
    if strict:
        if view.unavailable:
            return f"variants that failed to load: {_names(list(view.unavailable))}"
        missing = [name for name in view.models if not serving(name)]
        return f"variants without a live worker: {_names(missing)}" if missing else ""
    families = [f for f, variants in view.families.items() if not any(serving(v.name) for v in variants)]
    if families:
        return f"families without a live worker: {_names(families)}"
    routed = [name for name in view.by_variant if not serving(name)]
    return f"routed variants without a live worker: {_names(routed)}" if routed else ""


class Health:
    """Flags read by the health endpoints. Use from the gateway's event loop only.

    Readiness fails while draining (SIGTERM received: load balancers stop sending; every answer
    then says ``Connection: close``) and once the controller link gave up; liveness fails only
    for the latter, which the gateway cannot heal on its own (it keeps answering on its last
    routing table, but no longer learns of re-plans), so a service manager that watches liveness
    restarts it.
    """

    def __init__(self) -> None:
        self.draining = False
        self.control_link_failed = ""  # why the controller link gave up; "" while it runs
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def live(self) -> bool:
        return not self.control_link_failed

    def not_ready_reason(self) -> str:
        """"" when ready as far as this object knows; else why not."""
        if self.control_link_failed:
            return f"controller link failed: {self.control_link_failed}"
        if self.draining:
            return "draining: the gateway is shutting down"
        return ""

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight, at most ``timeout_s``; True when idle."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


HEALTH = web.AppKey("health", Health)


@web.middleware
async def health_middleware(request: web.Request, handler) -> web.StreamResponse:
    health = request.app[HEALTH]
    path = request.path
    if path in HEALTH_PATHS:
        failing = not health.live if path.endswith("/live") else bool(health.not_ready_reason())
        if failing:
            response: web.StreamResponse = web.json_response({"error": health.not_ready_reason()}, status=503)
        else:
            response = await handler(request)
    else:
        health.enter()
        try:
            response = await handler(request)
        finally:
            health.leave()
    if health.draining:
        # Every answer of a draining gateway closes its connection: the client sends its next
        # request on a new one, never on a kept-alive one the shutdown is about to close.
        response.force_close()
    return response


def install(app: web.Application, health: Health) -> None:
    """Put ``health`` in front of ``app``'s handlers; before the app is started (frozen)."""
    app[HEALTH] = health
    app.middlewares.insert(0, health_middleware)


async def watch(supervisor: Supervisor, health: Health, what: str = "controller link") -> None:
    """Until ``supervisor`` stops: when it gives up, record why in ``health`` (503 from then on)."""
    try:
        await supervisor.wait()
    except SupervisorEscalated as exc:
        health.control_link_failed = str(exc)
        log.error("%s gave up; readiness and liveness now answer 503: %s", what, exc)
