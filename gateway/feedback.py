"""``POST /v1/feedback``: applications report how satisfied they were with an answered request.

Body: ``{"event_id": "...", "reward": 0.8}`` with a reward in [0, 1], or a QoE form mapped onto
it: ``{"event_id": "...", "rating": 4, "scale": 5}`` (reward = rating / scale; the scale is 5
unless given) or ``{"event_id": "...", "satisfied": true}``; exactly one of the three forms, and no
other key (a misspelt ``scale`` would otherwise leave the default in force, unseen). 202 when taken
(also for a repeat, which is ignored), 404 for an unknown or expired event, 400 for a malformed body.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from gateway.edge import bounded_number
from gateway.event_log import EventLog, FeedbackResult
from gateway.request_body import read_body

EVENTS = web.AppKey("events", EventLog)
MAX_FEEDBACK_BYTES = 16 * 1024
MAX_EVENT_ID_LEN = 128


class BadFeedback(ValueError):
    """The feedback body is malformed or out of range; answered 400 naming the field."""


_MAX_SCALE = 1e9
KEYS = ("event_id", "reward", "rating", "scale", "satisfied")


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float:
    return bounded_number(body[key], key, low=low, high=high, error=BadFeedback)


def reward_of(body: Any) -> tuple[str, float]:
    """(event id, reward in [0, 1]) from a feedback body; BadFeedback says what is wrong."""
    if not isinstance(body, dict):
        raise BadFeedback("feedback must be a JSON object")
    event_id = body.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise BadFeedback("'event_id' must be a non-empty string")
    if len(event_id) > MAX_EVENT_ID_LEN:
        raise BadFeedback(f"'event_id' is longer than {MAX_EVENT_ID_LEN} characters")
    if unknown := [key for key in body if key not in KEYS]:
        shown = ", ".join(repr(k[:40]) for k in sorted(unknown)[:5])
        raise BadFeedback(f"unknown key{'s' if len(unknown) > 1 else ''} {shown}; feedback takes {', '.join(KEYS)}")
    forms = [key for key in ("reward", "rating", "satisfied") if key in body]
    if len(forms) > 1:  # which one would count is a guess: say so rather than pick
        raise BadFeedback(f"give one of 'reward', 'rating' or 'satisfied', not {' and '.join(map(repr, forms))}")
    if "scale" in body and "rating" not in body:
        raise BadFeedback("'scale' goes with 'rating'")
    if "reward" in body:
        reward = _number(body, "reward", 0.0, 1.0)
    elif "rating" in body:
        scale = _number(body, "scale", 0.0, _MAX_SCALE) if "scale" in body else 5.0
        if scale <= 0:
            raise BadFeedback("'scale' must be a positive number")
        rating = _number(body, "rating", 0.0, scale)
        reward = rating / scale
    elif "satisfied" in body:
        if not isinstance(body["satisfied"], bool):
            raise BadFeedback("'satisfied' must be true or false")
        reward = 1.0 if body["satisfied"] else 0.0
    else:
        raise BadFeedback("give 'reward' in [0, 1], or 'rating' (and 'scale'), or 'satisfied'")
    return event_id, reward


def _reply(status: int, payload: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")


async def post_feedback(request: web.Request) -> web.Response:
    raw = await read_body(request)
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
