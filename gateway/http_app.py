"""The Open Inference Protocol (KServe V2) HTTP front end, with Triton's binary tensor extension.

Handlers only translate: HTTP in, a dispatcher call, HTTP out. Every error leaves as a
deliberate status with ``{"error": ...}``; HTTP status codes live in this module and nowhere else.
"""

from __future__ import annotations

import logging
import math
import time
import uuid

from aiohttp import web

from gateway import oip
from gateway.dispatcher import (
    DeadlineExceeded,
    DispatchError,
    Dispatcher,
    NoWorkerReady,
    Overloaded,
    WorkerFailed,
    WorkerLost,
)
from gateway.event_log import Event, EventLog
from gateway.feedback import EVENTS, post_feedback
from gateway.policy_store import PolicyReplicas
from gateway.selection import (
    SELECTION_MODES,
    RequestBounds,
    Selection,
    Shed,
    check_variant,
    parse_bounds,
    select,
)
from mesh.bandit import NoCandidate
from mesh.shares import ShareTracker
from protocol.types import CandidateInfo, ModelInfo

log = logging.getLogger(__name__)

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
POLICIES = web.AppKey("policies", PolicyReplicas)
SHARES = web.AppKey("shares", ShareTracker)
SELECTION = web.AppKey("selection", str)
EXTENSIONS = ("binary_tensor_data", "model_repository", "schedule_policy", "letmesh_bounds")


class ModelNotFound(Exception):
    pass


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=oip.error_body(message), content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own errors (404 route, 405, 413 body too large) get the OIP error body too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.reason
        if exc.status == 413:
            message = f"request body is larger than {request.app._client_max_size} bytes"
        return _json_error(exc.status, message, headers={k: v for k, v in exc.headers.items() if k == "Retry-After"})


def make_app(
    dispatcher: Dispatcher, *, max_body_bytes: int, events: EventLog | None = None,
    policies: PolicyReplicas | None = None, selection: str = "bandit",
) -> web.Application:
    if selection not in SELECTION_MODES:
        raise ValueError(f"selection {selection!r} is not one of {', '.join(SELECTION_MODES)}")
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware])
    app[DISPATCHER] = dispatcher
    app[EVENTS] = events if events is not None else EventLog()
    app[POLICIES] = policies if policies is not None else PolicyReplicas()
    app[SHARES] = ShareTracker()
    app[SELECTION] = selection
    r = app.router
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_get("/v2", server_metadata)
    r.add_post("/v2/repository/index", repository_index)
    r.add_post("/v1/feedback", post_feedback)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(prefix, model_metadata)
        r.add_get(prefix + "/ready", model_ready)
        r.add_post(prefix + "/infer", infer)
    return app


def _resolve(dispatcher: Dispatcher, name: str) -> tuple[list[ModelInfo], bool]:
    """(variants the name may run on, whether it names a family)."""
    if name in dispatcher.models:
        return [dispatcher.models[name]], False
    if name in dispatcher.families:
        return dispatcher.families[name], True
    raise ModelNotFound(name)


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    d = request.app[DISPATCHER]
    ok = bool(d.models) and all(d.ready_workers(name) for name in d.models)
    return web.Response(status=200 if ok else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response(oip.server_metadata(EXTENSIONS))


async def repository_index(request: web.Request) -> web.Response:
    d = request.app[DISPATCHER]
    index = []
    for family, variants in sorted(d.families.items()):
        family_ready = any(d.ready_workers(v.name) for v in variants)
        index.append({"name": family, "version": "", "state": "READY" if family_ready else "UNAVAILABLE",
                      "reason": "" if family_ready else "no variant has a ready worker",
                      "kind": "family", "variants": [v.name for v in variants]})
        for v in variants:
            workers = d.ready_workers(v.name)
            index.append({"name": v.name, "version": v.version, "state": "READY" if workers else "UNAVAILABLE",
                          "reason": "" if workers else "no ready worker", "kind": "variant", "family": family,
                          "accuracy": v.accuracy, "workers": len(workers)})
    return web.json_response(index)


async def model_metadata(request: web.Request) -> web.Response:
    d = request.app[DISPATCHER]
    name = request.match_info["model"]
    try:
        variants, is_family = _resolve(d, name)
    except ModelNotFound:
        return _json_error(404, f"unknown model {name!r}")
    head = variants[0]
    body = oip.model_metadata(name, [head.version] if not is_family else ["1"], head.platform, head.inputs, head.outputs)
    body["parameters"] = {
        "letmesh_family": head.family,
        "letmesh_variants": [{"name": v.name, "accuracy": v.accuracy, "max_batch": v.max_batch,
                              "default_slo_ms": v.default_slo_ms} for v in variants],
    }
    return web.json_response(body)


async def model_ready(request: web.Request) -> web.Response:
    d = request.app[DISPATCHER]
    name = request.match_info["model"]
    try:
        variants, _ = _resolve(d, name)
    except ModelNotFound:
        return _json_error(404, f"unknown model {name!r}")
    return web.Response(status=200 if any(d.ready_workers(v.name) for v in variants) else 400)


async def infer(request: web.Request) -> web.Response:
    received = time.monotonic()
    d = request.app[DISPATCHER]
    name = request.match_info["model"]
    try:
        variants, is_family = _resolve(d, name)
    except ModelNotFound:
        return _json_error(404, f"unknown model {name!r}")
    head = variants[0]
    body = await request.read()
    header_length = request.headers.get(oip.HEADER_LENGTH)
    try:
        length = None
        if header_length is not None:
            if not header_length.isdigit():
                raise oip.MalformedBody(f"{oip.HEADER_LENGTH} must be a non-negative integer")
            length = int(header_length)
        parsed = oip.parse_infer_request(body, length, head.inputs, head.outputs, max_batch=head.max_batch)
        bounds = parse_bounds(parsed.parameters, head.default_slo_ms)
    except oip.OipError as exc:
        return _json_error(exc.status, str(exc))

    event_id = ""
    try:
        if is_family:
            chosen = select(name, variants, bounds, d, request.app[POLICIES], request.app[SHARES], received,
                            mode=request.app[SELECTION])
            if chosen is None:
                d.record_demand(head.name)
                return _dispatch_error(NoWorkerReady(f"no variant of {name} has a reachable worker"))
            model = chosen.model
            event_id = _log_decision(request.app[EVENTS], name, bounds, chosen, received)
        else:
            model = head
            check_variant(model, bounds)
    except NoCandidate as exc:
        d.record_demand(head.name)  # turned away, but still demand the plan must see
        if exc.bound == "deadline":
            d.record_miss(head.name)  # and a sign the plan carries less than it thinks
        return _no_candidate(exc)
    except Shed as exc:
        d.record_demand(head.name)
        return _json_error(503, str(exc), {"Retry-After": "1"})

    remaining = bounds.budget_s - (time.monotonic() - received)
    events = request.app[EVENTS]
    try:
        if remaining <= 0:
            d.record_demand(model.name)
            raise DeadlineExceeded("the deadline passed before the request could be sent")
        result = await d.infer(model.name, parsed.inputs, remaining)
    except DispatchError as exc:
        if isinstance(exc, (DeadlineExceeded, Overloaded)):
            d.record_miss(model.name)
        if event_id:
            events.outcome(event_id, met=False if isinstance(exc, DeadlineExceeded) else None)
        return _dispatch_error(exc)

    elapsed = time.monotonic() - received
    met = elapsed <= bounds.budget_s
    if not met:
        d.record_miss(model.name)
    parameters = {
        "letmesh_variant": result.variant,
        "letmesh_slo_status": "met" if met else "late",
        "letmesh_queue_us": result.reply.queue_us,
        "letmesh_compute_us": result.reply.compute_us,
        "letmesh_batch_size": result.reply.batch_size,
        "letmesh_latency_us": int(elapsed * 1e6),
    }
    if event_id:
        events.outcome(event_id, met=met)
        parameters["letmesh_event_id"] = event_id
    try:
        payload, headers = oip.encode_infer_response(
            model_name=name,
            model_version=model.version,
            request_id=parsed.id,
            outputs=list(result.outputs.items()),
            parsed=parsed,
            parameters=parameters,
        )
    except oip.OipError as exc:
        return _json_error(exc.status, str(exc))
    content_type = headers.pop("Content-Type")
    return web.Response(body=payload, headers=headers, content_type=content_type)


def _log_decision(events: EventLog, family: str, bounds: RequestBounds, chosen: Selection, now: float) -> str:
    event_id = uuid.uuid4().hex
    events.record(
        Event(
            event_id=event_id,
            family=family,
            context=bounds.context,
            budget_ms=bounds.budget_s * 1e3,
            load=chosen.load,
            candidates=tuple(
                CandidateInfo(variant=c.variant, accuracy=c.accuracy, predicted_latency_ms=c.predicted_latency_ms,
                              p_deadline=c.p_deadline, energy_j=c.energy_j)
                for c in chosen.candidates
            ),
            chosen=chosen.decision.chosen,
            probability=chosen.decision.probability,
            created=now,
        )
    )
    return event_id


def _no_candidate(exc: NoCandidate) -> web.Response:
    # Accuracy and energy bounds are the caller's ask against what is deployed: retrying will not
    # help. A deadline no variant is likely to meet now is about load: come back shortly.
    if exc.bound == "deadline":
        return _json_error(503, f"bound cannot be met: {exc}", {"Retry-After": "1"})
    return _json_error(400, f"bound cannot be met: {exc}")


def _dispatch_error(exc: DispatchError) -> web.Response:
    headers = None
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    match exc:
        case DeadlineExceeded():
            return _json_error(504, f"deadline exceeded: {exc}")
        case NoWorkerReady() | Overloaded() | WorkerLost():
            return _json_error(503, str(exc), headers)
        case WorkerFailed():
            return _json_error(500, str(exc))
    return _json_error(500, str(exc))
