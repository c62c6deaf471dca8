"""``POST /v1/feedback``: applications report how satisfied they were with an answered request.

Body: ``{"event_id": "...", "reward": 0.8}`` with a reward in [0, 1], or a QoE form mapped onto
it: ``{"event_id": "...", "rating": 4, "scale": 5}`` (reward = rating / scale) or
``{"event_id": "...", "satisfied": true}``. 202 when taken (also for a repeat, which is ignored),
404 for an unknown or expired event, 400 for a malformed body.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from aiohttp import web

from gateway.event_log import EventLog, FeedbackResult

EVENTS = web.AppKey("events", EventLog)
MAX_FEEDBACK_BYTES = 16 * 1024


class BadFeedback(ValueError):
    pass


def _number(body: dict[str, Any], key: str) -> float:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadFeedback(f"{key!r} must be a finite number")
    return float(value)


def reward_of(body: Any) -> tuple[str, float]:
    """(event id, reward in [0, 1]) from a feedback body; BadFeedback says what is wrong."""
    if not isinstance(body, dict):
        raise BadFeedback("feedback must be a JSON object")
    event_id = body.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise BadFeedback("'event_id' must be a non-empty string")
    if "reward" in body:
        reward = _number(body, "reward")
    elif "rating" in body:
        rating = _number(body, "rating")
        scale = _number(body, "scale") if "scale" in body else 5.0
        if scale <= 0 or not 0 <= rating <= scale:
            raise BadFeedback("'rating' must lie in [0, scale] with a positive 'scale'")
        reward = rating / scale
    elif "satisfied" in body:
        if not isinstance(body["satisfied"], bool):
            raise BadFeedback("'satisfied' must be true or false")
        reward = 1.0 if body["satisfied"] else 0.0
    else:
        raise BadFeedback("give 'reward' in [0, 1], or 'rating' (and 'scale'), or 'satisfied'")
    if not 0.0 <= reward <= 1.0:
        raise BadFeedback("'reward' must lie in [0, 1]")
    return event_id, reward


def _reply(status: int, payload: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")


async def post_feedback(request: web.Request) -> web.Response:
    raw = await request.read()
    if len(raw) > MAX_FEEDBACK_BYTES:
        return _reply(413, {"error": f"feedback body is larger than {MAX_FEEDBACK_BYTES} bytes"})
    try:
        event_id, reward = reward_of(json.loads(raw, parse_constant=_reject))
    except BadFeedback as exc:
        return _reply(400, {"error": str(exc)})
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return _reply(400, {"error": f"feedback body is not valid JSON: {exc}"})
    result = request.app[EVENTS].feedback(event_id, reward, time.monotonic())
    match result:
        case FeedbackResult.ACCEPTED:
            return _reply(202, {"event_id": event_id, "status": "accepted"})
        case FeedbackResult.DUPLICATE:
            return _reply(202, {"event_id": event_id, "status": "duplicate, ignored"})
        case FeedbackResult.EXPIRED:
            return _reply(404, {"error": f"event {event_id} expired: it was closed with its implicit reward"})
    return _reply(404, {"error": f"unknown event {event_id}"})


def _reject(token: str) -> Any:
    raise BadFeedback(f"{token} is not a number JSON allows")
