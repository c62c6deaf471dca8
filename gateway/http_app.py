"""The Open Inference Protocol (KServe V2) HTTP front end, with Triton's binary tensor extension.

Handlers only translate: HTTP in, a call of the data plane (``gateway.serving``), HTTP out. Every error leaves as a
deliberate status with ``{"error": ...}``; HTTP status codes live in this module and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway import metadata, oip
from gateway.access import AccessPolicy, access_middleware
from gateway.dashboard import build_view, page
from gateway.edge import header_length
from gateway.dispatch_error import (
    DeadlineExceeded,
    DispatchError,
    NoWorkerReady,
    Overloaded,
    WorkerFailed,
    WorkerLost,
    retry_after_header,
)
from gateway.dispatcher import Dispatcher
from gateway.event_log import EventLog
from gateway.exposition import gateway_registry
from gateway.feedback import EVENTS, post_feedback
from gateway.health import ROUTING_VERSION_HEADER, UNSERVED_HEADER, unready_reason
from gateway.mesh_status import StatusFeed
from gateway.oip_response import encode_infer_response, error_body
from gateway.policy_store import PolicyReplicas
from gateway.redact import public_reason
from gateway.request_body import BODY_TIMEOUT_S, BodyTimeout, BodyUnreadable, read_body
from gateway.serving import DataPlane, ModelNotFound, ModelUnavailable
from gateway.selection import SELECTION_MODES, Shed, parse_bounds
from gateway.telemetry import Outcome, Telemetry
from mesh.bandit import NoCandidate
from mesh.shares import ShareTracker
from mesh.transport_metrics import EndpointCollector
from protocol.types import ModelInfo

log = logging.getLogger(__name__)

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
POLICIES = web.AppKey("policies", PolicyReplicas)
SHARES = web.AppKey("shares", ShareTracker)
SELECTION = web.AppKey("selection", str)
PLANE = web.AppKey("plane", DataPlane)
STRICT_READINESS = web.AppKey("strict_readiness", bool)
STATUS_FEED = web.AppKey("status_feed", StatusFeed)
# Bodies above this size are parsed on a thread, so one large request cannot hold the event
# loop (and every other request's replies) for the whole parse.
PARSE_OFF_LOOP_BYTES = 256 * 1024
# Only what works: Triton's binary tensors, model configuration and statistics, and our request
# bounds (letmesh_slo_ms, letmesh_min_accuracy, letmesh_max_energy_j). Not Triton's
# model_repository (no load/unload) nor schedule_policy (``timeout`` is honoured, ``priority`` is not).
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "letmesh_bounds")
# The one version a family answers to; a variant answers to its manifest's version.
FAMILY_VERSION = "1"


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(message), content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own errors (404 route, 405, 413 body too large) get the OIP error body too,
    and so does anything a handler did not expect: never a plain-text 500."""
    try:
        return await handler(request)
    except (BodyTimeout, BodyUnreadable) as exc:
        # The rest of the body may still come: on this connection it would be read as the next
        # request. Close it once the answer is written (RFC 9110 15.5.9).
        resp = _json_error(408 if isinstance(exc, BodyTimeout) else 400, str(exc))
        resp.force_close()
        return resp
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.reason
        if exc.status == 413:
            message = f"request body is larger than {request.app._client_max_size} bytes"
        return _json_error(exc.status, message, headers={k: v for k, v in exc.headers.items() if k == "Retry-After"})
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return _json_error(500, "internal error; the gateway logged the cause")


def make_app(
    dispatcher: Dispatcher, *, max_body_bytes: int, events: EventLog | None = None,
    policies: PolicyReplicas | None = None, selection: str = "bandit", body_timeout_s: float = 10.0,
    access: AccessPolicy | None = None, status: StatusFeed | None = None,
    telemetry: Telemetry | None = None, strict_readiness: bool = False,
) -> web.Application:
    if selection not in SELECTION_MODES:
        raise ValueError(f"selection {selection!r} is not one of {', '.join(SELECTION_MODES)}")
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware])
    if access is not None:  # bearer tokens and per-client rates (gateway/access.py)
        app.middlewares.append(count_refusals)
        app.middlewares.append(access_middleware(access, error_body))
    app[DISPATCHER] = dispatcher
    app[EVENTS] = events if events is not None else EventLog()
    app[POLICIES] = policies if policies is not None else PolicyReplicas()
    app[SHARES] = ShareTracker()
    app[SELECTION] = selection
    app[BODY_TIMEOUT_S] = body_timeout_s
    app[STRICT_READINESS] = strict_readiness
    app[PLANE] = DataPlane(dispatcher, events=app[EVENTS], policies=app[POLICIES], shares=app[SHARES],
                           selection=selection, telemetry=telemetry)
    r = app.router
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_get("/v2", server_metadata)
    r.add_post("/v2/repository/index", repository_index)
    r.add_post("/v1/feedback", post_feedback)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(prefix, model_metadata)
        r.add_get(prefix + "/ready", model_ready)
        r.add_get(prefix + "/config", model_config)
        r.add_post(prefix + "/infer", infer)
    # The live dashboard: the page and the JSON it polls (gateway/dashboard.py); ``status`` is
    # filled by the controller link while the page is watched.
    app[STATUS_FEED] = status if status is not None else StatusFeed()
    r.add_get("/dashboard", dashboard_page)
    r.add_get("/dashboard/data", dashboard_data)
    # Metrics (Prometheus text) and Triton's statistics extension, from the same counters.
    app[METRICS] = metrics_registry(app[PLANE])
    r.add_get("/metrics", make_aiohttp_handler(app[METRICS]))
    r.add_get("/v2/models/stats", model_stats)
    r.add_get("/v2/models/{model}/stats", model_stats)
    r.add_get("/v2/models/{model}/versions/{version}/stats", model_stats)
    return app


async def dashboard_page(request: web.Request) -> web.Response:
    return web.Response(body=page(), content_type="text/html", charset="utf-8")


async def dashboard_data(request: web.Request) -> web.Response:
    d, feed, plane = request.app[DISPATCHER], request.app[STATUS_FEED], request.app[PLANE]
    now = time.monotonic()
    feed.watched(now)
    view = build_view(
        routing=d.view, reachable={w for v in d.view.by_variant for w in d.ready_workers(v)}, status=feed.latest,
        status_age_s=feed.age_s(now),
        recent=plane.telemetry.recent(),  # the traffic window of the same counters /metrics reads
        preferences=plane.preferences.view(), policy_versions=request.app[POLICIES].versions, now_s=time.time(),
    )
    return web.json_response(view, headers={"Cache-Control": "no-store"})


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    d = request.app[DISPATCHER]
    served = {name for name in (*d.models, *d.view.by_variant) if d.ready_workers(name)}
    reason = unready_reason(d.view, served.__contains__, strict=request.app[STRICT_READINESS])
    # Variants the table routes to without a live worker; those the plan leaves unplaced are not
    # routed, and do not count.
    headers = {UNSERVED_HEADER: str(sum(name not in served for name in d.view.by_variant)),
               ROUTING_VERSION_HEADER: str(d.routing_version)} if d.view.received else {}
    return _json_error(503, reason, headers) if reason else web.Response(status=200, headers=headers)


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response(metadata.server_metadata(EXTENSIONS))


async def repository_index(request: web.Request) -> web.Response:
    d = request.app[DISPATCHER]
    raw = await read_body(request) if request.can_read_body else b""
    try:
        options = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        return _json_error(400, f"the index request body is not JSON: {exc}")
    if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
        return _json_error(400, 'the index request body is an object whose "ready", when given, is true or false')
    ready_only = options.get("ready", False)
    if not d.view.received:  # an empty list would read as "no models"
        return _dispatch_error(NoWorkerReady("the gateway has no routing table from the controller yet"))
    index = []
    for family, variants in sorted(d.families.items()):
        family_ready = any(d.ready_workers(v.name) for v in variants)
        index.append({"name": family, "version": FAMILY_VERSION, "state": "READY" if family_ready else "UNAVAILABLE",
                      "reason": "" if family_ready else "no variant has a ready worker",
                      "kind": "family", "variants": [v.name for v in variants]})
        for v in variants:
            workers = d.ready_workers(v.name)
            index.append({"name": v.name, "version": v.version, "state": "READY" if workers else "UNAVAILABLE",
                          "reason": "" if workers else "no ready worker", "kind": "variant", "family": family,
                          "accuracy": v.accuracy, "workers": len(workers)})
    for name, reason in sorted(d.view.unavailable.items()):  # set aside: listed with why, never served
        index.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": public_reason(reason),
                      "kind": "variant"})
    if ready_only:  # {"ready": true}: only the models ready now, as Triton answers
        index = [entry for entry in index if entry["state"] == "READY"]
    return web.json_response(index)


def versions_of(variants: list[ModelInfo], is_family: bool) -> list[str]:
    return [FAMILY_VERSION] if is_family else [variants[0].version]


def _resolve(request: web.Request) -> tuple[list[ModelInfo], bool] | web.Response:
    """The variants the path's model (and version, if given) names, or the error to answer:
    404 for an unknown model or version, 503 before the first routing table or for a model set
    aside (with the reason)."""
    name = request.match_info["model"]
    try:
        variants, is_family = request.app[PLANE].resolve(name)
    except ModelNotFound:
        return _json_error(404, f"unknown model {name!r}")
    except ModelUnavailable as exc:
        return _json_error(503, str(exc))
    except NoWorkerReady as exc:
        return _dispatch_error(exc)
    return _unknown_version(request, variants, is_family) or (variants, is_family)


def _unknown_version(request: web.Request, variants: list[ModelInfo], is_family: bool) -> web.Response | None:
    """The 404 for a path naming a version the model does not have; None when it names none or a known one."""
    version = request.match_info.get("version")
    known = versions_of(variants, is_family)
    if version is None or version in known:
        return None
    name = request.match_info["model"]
    return _json_error(404, f"model {name!r} has no version {version!r}; versions: {', '.join(known)}")


async def model_metadata(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    resolved = _resolve(request)
    if isinstance(resolved, web.Response):
        return resolved
    variants, is_family = resolved
    head = variants[0]
    body = metadata.model_metadata(name, versions_of(variants, is_family), head.platform, head.inputs, head.outputs)
    body["parameters"] = {
        "letmesh_family": head.family,
        "letmesh_variants": [{"name": v.name, "accuracy": v.accuracy, "max_batch": v.max_batch,
                              "default_slo_ms": v.default_slo_ms} for v in variants],
    }
    return web.json_response(body)


async def model_config(request: web.Request) -> web.Response:
    resolved = _resolve(request)
    if isinstance(resolved, web.Response):
        return resolved
    variants, is_family = resolved
    name = request.match_info["model"]
    return web.json_response(metadata.model_config(name, variants[0], variants if is_family else ()))


async def model_ready(request: web.Request) -> web.Response:
    d = request.app[DISPATCHER]
    resolved = _resolve(request)
    if isinstance(resolved, web.Response):
        return resolved
    variants, _ = resolved
    # 400 when known but not ready, as Triton answers (KServe: any 4xx).
    return web.Response(status=200 if any(d.ready_workers(v.name) for v in variants) else 400)


async def infer(request: web.Request) -> web.Response:
    received = time.monotonic()
    plane = request.app[PLANE]
    name = request.match_info["model"]
    try:
        variants, is_family = plane.resolve(name)
    except ModelNotFound:
        plane.refused(name, Outcome.INVALID, "not_found", received)
        return _json_error(404, f"unknown model {name!r}")
    except ModelUnavailable as exc:
        plane.refused(name, Outcome.ERROR, "unavailable", received)
        return _json_error(503, str(exc))
    except NoWorkerReady as exc:
        plane.refused(name, Outcome.SHED, "no_routing_table", received)
        return _dispatch_error(exc)
    unknown = _unknown_version(request, variants, is_family)
    if unknown is not None:
        plane.refused(name, Outcome.INVALID, "not_found", received)
        return unknown
    head = variants[0]
    try:
        body = await read_body(request)
    except (BodyTimeout, BodyUnreadable, web.HTTPRequestEntityTooLarge):
        plane.refused(name, Outcome.INVALID, "invalid", received)
        raise
    try:
        length = header_length(request.headers.get(oip.HEADER_LENGTH))
        if len(body) > PARSE_OFF_LOOP_BYTES:
            parsed = await asyncio.to_thread(oip.parse_infer_request, body, length, head.inputs, head.outputs,
                                             max_batch=head.max_batch)
        else:
            parsed = oip.parse_infer_request(body, length, head.inputs, head.outputs, max_batch=head.max_batch)
        bounds = parse_bounds(parsed.parameters, head.default_slo_ms)
    except oip.OipError as exc:
        plane.refused(name, Outcome.INVALID, "invalid", received)
        return _json_error(exc.status, str(exc))

    try:
        served = await plane.infer(name, variants, is_family, parsed.inputs, bounds, received)
    except NoCandidate as exc:
        return _no_candidate(exc)
    except Shed as exc:
        return _json_error(503, str(exc), {"Retry-After": "1"})
    except DispatchError as exc:
        return _dispatch_error(exc)

    reply = served.result.reply
    parameters = {
        "letmesh_variant": served.result.variant,
        "letmesh_slo_status": "met" if served.met else "late",
        "letmesh_queue_us": reply.queue_us,
        "letmesh_compute_us": reply.compute_us,
        "letmesh_batch_size": reply.batch_size,
        "letmesh_latency_us": int(served.elapsed_s * 1e6),
    }
    if served.event_id:
        parameters["letmesh_event_id"] = served.event_id
    try:
        payload, headers = encode_infer_response(
            model_name=name,
            model_version=FAMILY_VERSION if is_family else served.model.version,
            request_id=parsed.id,
            outputs=list(served.result.outputs.items()),
            parsed=parsed,
            parameters=parameters,
        )
    except oip.OipError as exc:
        return _json_error(exc.status, str(exc))
    content_type = headers.pop("Content-Type")
    return web.Response(body=payload, headers=headers, content_type=content_type)


METRICS = web.AppKey("metrics", CollectorRegistry)


def metrics_registry(plane: DataPlane) -> CollectorRegistry:
    """This gateway's registry: the data plane's telemetry, the dispatcher's gauges and its data
    socket's transport counters."""
    d = plane.dispatcher
    registry = gateway_registry(plane.telemetry, lambda: {
        "letmesh_gateway_inflight_requests": ("Requests sent to workers and not answered yet.", d.outstanding()),
        "letmesh_gateway_routing_version": ("Version of the routing table in use.", d.routing_version),
        "letmesh_gateway_event_loop_lag_seconds": ("Worst lateness of the gateway's event loop waking from a timer "
                                                   "over its last 20 heartbeats: about how long a request may wait "
                                                   "for its handler.", d.loop_lag_s()),
        "letmesh_gateway_decision_records_dropped": ("Bandit decision records dropped unsent since the gateway "
                                                     "started (the oldest, while the controller link was down "
                                                     "and the backlog was full).", plane.events.dropped),
    })
    registry.register(EndpointCollector(lambda: {"data": d.endpoint}))
    return registry


async def model_stats(request: web.Request) -> web.Response:
    """Triton's statistics extension: ``GET /v2/models[/{model}[/versions/{version}]]/stats``."""
    plane = request.app[PLANE]
    name = request.match_info.get("model")
    if name is None:
        d = plane.dispatcher
        names = [(n, m.version) for n, m in sorted(d.models.items())] + [(f, FAMILY_VERSION) for f in sorted(d.families)]
        return web.json_response({"model_stats": [plane.telemetry.stats(n, v) for n, v in names]})
    resolved = _resolve(request)
    if isinstance(resolved, web.Response):
        return resolved
    variants, is_family = resolved
    return web.json_response({"model_stats": [plane.telemetry.stats(name, versions_of(variants, is_family)[0])]})


@web.middleware
async def count_refusals(request: web.Request, handler) -> web.StreamResponse:
    """Inference requests the access middleware (inside this one) turns away are counted too."""
    response = await handler(request)
    if response.status in (401, 403, 429) and request.path.endswith("/infer") and "model" in request.match_info:
        outcome, reason = (Outcome.SHED, "rate_limited") if response.status == 429 else (Outcome.INVALID, "unauthorized")
        request.app[PLANE].refused(request.match_info["model"], outcome, reason, time.monotonic())
    return response


def _no_candidate(exc: NoCandidate) -> web.Response:
    # Accuracy and energy bounds are the caller's ask against what is deployed: retrying will not
    # help. A deadline no variant is likely to meet now is about load: come back shortly.
    if exc.bound == "deadline":
        return _json_error(503, f"bound cannot be met: {exc}", {"Retry-After": "1"})
    return _json_error(400, f"bound cannot be met: {exc}")


def _dispatch_error(exc: DispatchError) -> web.Response:
    headers = None
    if exc.retry_after_s is not None:
        headers = {"Retry-After": retry_after_header(exc.retry_after_s)}
    match exc:
        case DeadlineExceeded():
            return _json_error(504, f"deadline exceeded: {exc}")
        case NoWorkerReady() | Overloaded() | WorkerLost():
            return _json_error(503, str(exc), headers)
        case WorkerFailed():
            return _json_error(500, str(exc))
    return _json_error(500, str(exc))
