"""A worker's answers, grouped by the link each request came on (one bundle per gateway).

Each queued request's payload is ``(link, input arrays)``. A computed batch gives every request
its own rows of every output; a failed one gives each the error; a request the batcher judged
hopeless is answered "late" unrun. Pure: no socket, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mesh.batching import Queued
from protocol.codec import tensor_meta
from protocol.message import InferReply
from protocol.types import ReplyStatus

Replies = dict[Any, list[tuple[InferReply, Sequence[np.ndarray]]]]
# An error reply's message is cut to this: a model's exception text can be any length, and a
# reply past the link's string limit would be dropped by the gateway with the whole bundle.
MAX_ERROR_CHARS = 2000


_CUT = " ... (cut short)"


def brief(error: str) -> str:
    return error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS - len(_CUT)] + _CUT


def batch_rows(batch: Sequence[Queued]) -> list[int]:
    """Rows each request brings to its batch, as it was queued with them."""
    return [item.rows for item in batch]


def computed(name: str, batch: Sequence[Queued], outputs: Sequence[np.ndarray], output_names: Sequence[str], *,
             compute_us: int, started: float) -> Replies:
    """OK replies for a batch whose ``outputs`` stack its requests' rows in batch order (a request
    alone gets the outputs whole). ValueError when an output of several requests' batch does not
    have their rows."""
    rows = batch_rows(batch)
    if len(batch) == 1:
        item = batch[0]
        reply = InferReply(request_id=item.request_id, variant=name, status=ReplyStatus.OK,
                           queue_us=int((started - item.arrived) * 1e6), compute_us=compute_us,
                           batch_size=rows[0], outputs=tuple(tensor_meta(o, p) for o, p in zip(output_names, outputs)))
        return {item.payload[0]: [(reply, list(outputs))]}
    total = sum(rows)
    for out_name, out in zip(output_names, outputs):
        if np.ndim(out) == 0 or out.shape[0] != total:
            raise ValueError(f"output {out_name!r} has shape {list(np.shape(out))}, not the batch's {total} rows first")
    replies: Replies = {}
    offset = 0
    for item, n in zip(batch, rows):
        parts = [out[offset:offset + n] for out in outputs]
        offset += n
        reply = InferReply(request_id=item.request_id, variant=name, status=ReplyStatus.OK,
                           queue_us=int((started - item.arrived) * 1e6), compute_us=compute_us,
                           batch_size=sum(rows), outputs=tuple(tensor_meta(o, p) for o, p in zip(output_names, parts)))
        replies.setdefault(item.payload[0], []).append((reply, parts))
    return replies


def failed(name: str, batch: Sequence[Queued], error: str) -> Replies:
    replies: Replies = {}
    for item in batch:
        reply = InferReply(request_id=item.request_id, variant=name, status=ReplyStatus.ERROR, error=brief(error))
        replies.setdefault(item.payload[0], []).append((reply, ()))
    return replies


def late(items: Iterable[tuple[str, Queued]], now: float) -> Replies:
    """"late" replies, unrun, for (variant, request) pairs the batcher dropped at ``now``."""
    replies: Replies = {}
    for name, item in items:
        reply = InferReply(request_id=item.request_id, variant=name, status=ReplyStatus.LATE,
                           queue_us=int((now - item.arrived) * 1e6))
        replies.setdefault(item.payload[0], []).append((reply, ()))
    return replies
