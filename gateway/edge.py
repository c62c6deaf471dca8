"""Validation of what clients send at the gateway's edge: numbers, context features, headers.

Pure functions that either return a checked value or raise an ``oip`` 400-class error naming the
field. A Python int of any size is compared before it is converted, so no client number reaches
``float()`` (or a msgpack encoder further on) unchecked. Imports nothing of the gateway's I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import oip
from protocol import bounds

ContextValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """Bounds on per-request parameters. A deadline outside [min, max] is refused, not clamped.

    The shortest deadline is Triton's unit, 1 µs: one too short to meet is a valid request that
    gets a deliberate 504, not a malformed one."""

    min_deadline_ms: float = 0.001
    max_deadline_ms: float = 600_000.0  # 10 min
    context_max_keys: int = bounds.CONTEXT_MAX_KEYS
    context_max_key_len: int = bounds.CONTEXT_MAX_KEY_LEN
    context_max_str_len: int = bounds.CONTEXT_MAX_STR_LEN
    context_max_abs: float = bounds.CONTEXT_MAX_ABS


DEFAULT_LIMITS = EdgeLimits()


def bounded_number(value: Any, name: str, *, low: float, high: float, error: type[Exception] = oip.InvalidParameter,
                   ) -> float:
    """``value`` as a float in [low, high]; a bool, a non-number, NaN, ±inf or any out-of-range
    number (an int of any size included) raises ``error`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name!r} must be a number, got {_kind(value)}")
    if isinstance(value, int):
        # Compared as ints: float(10**400) would raise, and 10**30 would lose its meaning.
        if not math.ceil(low) <= value <= math.floor(high):
            raise error(f"{name!r} must lie in [{low:g}, {high:g}]")
        return float(value)
    if not math.isfinite(value):
        raise error(f"{name!r} must be a finite number")
    if not low <= value <= high:
        raise error(f"{name!r} must lie in [{low:g}, {high:g}]")
    return value


def bounded_context(value: Any, limits: EdgeLimits = DEFAULT_LIMITS) -> dict[str, ContextValue]:
    """``letmesh_context``: a flat object (or ``"k=v,..."`` string) of at most ``context_max_keys``
    features whose values are strings, finite numbers within ±``context_max_abs``, or booleans."""
    field = "letmesh_context"
    if isinstance(value, str):  # "app=reader,device=phone" for clients that send only scalars
        if len(value) > limits.context_max_keys * (limits.context_max_key_len + limits.context_max_str_len + 2):
            raise oip.InvalidParameter(f"parameter {field!r} is too long")
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        if any(not sep or not k.strip() for k, sep, _ in pairs):
            raise oip.InvalidParameter(f"parameter {field!r} must be an object or 'key=value,...'")
        value = {k.strip(): v.strip() for k, _, v in pairs}
    elif not isinstance(value, Mapping):
        raise oip.InvalidParameter(f"parameter {field!r} must be an object or 'key=value,...'")
    if len(value) > limits.context_max_keys:
        raise oip.InvalidParameter(f"parameter {field!r} has {len(value)} keys, at most {limits.context_max_keys}")
    out: dict[str, ContextValue] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or len(key) > limits.context_max_key_len:
            raise oip.InvalidParameter(
                f"parameter {field!r}: keys must be non-empty strings of at most {limits.context_max_key_len} characters")
        where = f"{field}.{key}"
        if isinstance(item, bool):
            out[key] = item
        elif isinstance(item, (int, float)):
            number = bounded_number(item, where, low=-limits.context_max_abs, high=limits.context_max_abs)
            out[key] = int(item) if isinstance(item, int) else number
        elif isinstance(item, str):
            if len(item) > limits.context_max_str_len:
                raise oip.InvalidParameter(f"{where!r} is longer than {limits.context_max_str_len} characters")
            out[key] = item
        else:
            raise oip.InvalidParameter(f"{where!r} must be a string, number or bool, got {_kind(item)}")
    return out


_MAX_LENGTH_DIGITS = 20


def header_length(value: str | None) -> int | None:
    """``Inference-Header-Content-Length``: ASCII digits only (``str.isdigit`` also accepts '²' and
    '٣', which ``int`` then refuses or reads), and not absurdly long; None when the header is absent."""
    if value is None:
        return None
    if not value or len(value) > _MAX_LENGTH_DIGITS or not (value.isascii() and value.isdigit()):
        raise oip.MalformedBody(f"{oip.HEADER_LENGTH} must be a non-negative integer")
    return int(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__
