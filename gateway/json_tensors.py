"""A request body's flat numeric tensor data read straight into numpy, without a Python number each.

The common JSON inference body carries each input's data as one flat array of numbers. Parsed
the general way, every number becomes a Python object, then a list, then a type check, then a
numpy array: about 0.6 ms for a 3x64x64 image. simdjson (pysimdjson) reads such an array into a
buffer of doubles or 64-bit integers in C, rejecting any element that is not a number of that
kind; on the same body the whole request parses in about 0.27 ms. A simdjson parser sizes its
buffers to the document: a fresh one per body touches new memory each time (0.75-0.93 ms a
3x64x64 body here), so each thread keeps one parser for bodies of up to ``REUSE_MAX_BYTES``.

:func:`load_fast` is only a fast path. It answers None, and the caller parses with orjson,
whenever the body is not the plain case: a parse error of any kind (so every error keeps the
general parser's wording and rules), a byte-order mark (which orjson refuses and simdjson would
accept), nested or mixed data, datatypes JSON cannot carry as plain numbers, numbers out of the
buffer's range. Accepted data is exactly what the general path accepts: a flat array of
integers and floats for a float datatype, of integers for an integer one. A pure function:
imports nothing of ours.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import simdjson

_BOM = b"\xef\xbb\xbf"
# Bodies up to this size are read by the thread's kept parser; a larger one gets a parser of its
# own. A parser keeps buffers of about 3x the largest body it read resident, for good: bounded
# here, since bodies past 256 KiB are parsed on the executor's threads (up to 32 of them).
REUSE_MAX_BYTES = 1 << 20
_local = threading.local()
# The buffer a flat array of an input's data is read into, per datatype: doubles for floats
# (ints among them are converted, as numpy does), signed 64-bit for integers, unsigned for UINT64.
_BUFFER = {
    "FP32": ("d", np.float64), "FP64": ("d", np.float64),
    "INT8": ("i", np.int64), "INT16": ("i", np.int64), "INT32": ("i", np.int64), "INT64": ("i", np.int64),
    "UINT8": ("i", np.int64), "UINT16": ("i", np.int64), "UINT32": ("i", np.int64), "UINT64": ("u", np.uint64),
}


@dataclass(frozen=True, slots=True)
class Numbers:
    """An input's flat JSON data, read as a 1-D float64, int64 or uint64 array."""

    values: np.ndarray


def load_fast(body: bytes) -> dict[str, Any] | None:
    """The request object with each input's ``data`` as :class:`Numbers`, or None (see the module)."""
    if body[:3] == _BOM:
        return None
    try:
        doc = _parse(bytes(body))
        if not isinstance(doc, simdjson.Object):
            return None
        keys = list(doc.keys())
        if len(set(keys)) != len(keys):
            return None  # which duplicate wins is the general parser's rule
        request: dict[str, Any] = {}
        arrays = 0  # JSON arrays in the body, counted from what was read
        for key in keys:
            value = doc[key]
            if key == "inputs" and isinstance(value, simdjson.Array):
                inputs = [_input(item) for item in value]
                if any(item is None for item in inputs):
                    return None
                request[key] = inputs
                arrays += 1 + sum(_arrays(item) for item in inputs)
            else:
                request[key] = _plain(value)
                arrays += _arrays(request[key])
    except (ValueError, TypeError, RuntimeError, KeyError, UnicodeError, OverflowError):
        return None
    # A data array read as a buffer is flattened whatever it holds: nested arrays inside it would
    # go unseen. Each "[" in the body is one array read above unless one sits inside a string,
    # and then the general path takes over; so equal counts mean every such data array was flat.
    # (Counted as what a removal takes away: bytes.replace finds a byte with memchr, about 8x
    # faster than bytes.count on a 60 KB body.)
    if len(body) - len(body.replace(b"[", b"")) != arrays:
        return None
    return request


def _parse(body: bytes) -> Any:
    if len(body) > REUSE_MAX_BYTES:
        return simdjson.Parser().parse(body)
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        return parser.parse(body)
    except RuntimeError:
        # pysimdjson refuses to reuse a parser while an object read by it is still referenced;
        # nothing of ours keeps one past load_fast, but a fresh parser never strands the fast path.
        parser = _local.parser = simdjson.Parser()
        return parser.parse(body)


def _input(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, simdjson.Object):
        return None
    keys = list(item.keys())
    if len(set(keys)) != len(keys):
        return None
    out: dict[str, Any] = {}
    for key in keys:
        value = item[key]
        if key != "data":
            out[key] = _plain(value)
            continue
        buffer = _BUFFER.get(item.get("datatype"))  # type: ignore[arg-type]
        if buffer is None or not isinstance(value, simdjson.Array):
            return None
        of_type, dtype = buffer
        out[key] = Numbers(np.frombuffer(value.as_buffer(of_type=of_type), dtype=dtype))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _arrays(value: Any) -> int:
    """JSON arrays in a converted value; a Numbers is one array."""
    if isinstance(value, Numbers):
        return 1
    if isinstance(value, list):
        return 1 + sum(_arrays(v) for v in value)
    if isinstance(value, dict):
        return sum(_arrays(v) for v in value.values())
    return 0
