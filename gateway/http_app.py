"""The Open Inference Protocol (KServe V2) HTTP front end, with Triton's binary tensor extension.

Handlers only translate: HTTP in, a dispatcher call, HTTP out. Every error leaves as a
deliberate status with ``{"error": ...}``; HTTP status codes live in this module and nowhere else.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

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
from protocol.types import ModelInfo

log = logging.getLogger(__name__)

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
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


def make_app(dispatcher: Dispatcher, *, max_body_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware])
    app[DISPATCHER] = dispatcher
    r = app.router
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_get("/v2", server_metadata)
    r.add_post("/v2/repository/index", repository_index)
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


def _budget_s(parameters: dict[str, Any], default_ms: float) -> float:
    if "timeout" in parameters:
        value = parameters["timeout"]
        scale = 1e-6  # Triton: microseconds
        key = "timeout"
    elif "letmesh_slo_ms" in parameters:
        value = parameters["letmesh_slo_ms"]
        scale = 1e-3
        key = "letmesh_slo_ms"
    else:
        return default_ms / 1000.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise oip.InvalidParameter(f"parameter {key!r} must be a positive number")
    return float(value) * scale


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
        budget_s = _budget_s(parsed.parameters, head.default_slo_ms)
    except oip.OipError as exc:
        return _json_error(exc.status, str(exc))

    # A family lets the mesh choose: for now the most accurate variant with a reachable worker.
    if is_family:
        chosen = next((v for v in variants if d.ready_workers(v.name)), head)
    else:
        chosen = head
    remaining = budget_s - (time.monotonic() - received)
    try:
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed before the request could be sent")
        result = await d.infer(chosen.name, parsed.inputs, remaining)
    except DispatchError as exc:
        return _dispatch_error(exc)

    elapsed = time.monotonic() - received
    parameters = {
        "letmesh_variant": result.variant,
        "letmesh_slo_status": "met" if elapsed <= budget_s else "late",
        "letmesh_queue_us": result.reply.queue_us,
        "letmesh_compute_us": result.reply.compute_us,
        "letmesh_batch_size": result.reply.batch_size,
        "letmesh_latency_us": int(elapsed * 1e6),
    }
    try:
        payload, headers = oip.encode_infer_response(
            model_name=name,
            model_version=chosen.version,
            request_id=parsed.id,
            outputs=list(result.outputs.items()),
            parsed=parsed,
            parameters=parameters,
        )
    except oip.OipError as exc:
        return _json_error(exc.status, str(exc))
    content_type = headers.pop("Content-Type")
    return web.Response(body=payload, headers=headers, content_type=content_type)


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
