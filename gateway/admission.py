"""Admission: whether a request can still be answered within its deadline, decided before it is sent.

Pure functions over what the dispatcher knows: a worker's measured latency curve, how many
requests are already in flight there, the time the request has left, and how far behind the
gateway's own event loop is running.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection

from mesh.latency import LatencyCurve

ADMISSION_OPTIMISM = 0.5


def predicted_finish_s(curve: LatencyCurve | None, ahead: int) -> float | None:
    """Seconds until a new request finishes behind ``ahead`` others on a worker; None if unknown.

    The requests ahead and this one are served in batches along the worker's measured curve
    (per-item linear past its largest batch). Deliberately not scaled by the live slowdown: on a
    busy host a sub-millisecond model's slowdown swings by tens of times, and multiplying a whole
    queue by it turned away requests that then would have been served in time. Unscaled, the
    prediction is optimistic, so a request turned away could not have made it.
    """
    if curve is None:
        return None
    return curve(ahead + 1) / 1e3


def running_behind_s(lags_s: Collection[float]) -> float:
    """How late the event loop typically wakes (s): the median of its latest wake-ups' lateness.

    On a saturated gateway every request waits about this long before its handler runs, and its
    answer about as long again before it is written. The median, not the worst: one slow turn
    (a large body, a collection) says nothing about the next request.
    """
    return statistics.median(lags_s) if lags_s else 0.0


def admit(finish_s: float | None, remaining_s: float, ahead: int, behind_s: float = 0.0) -> float | None:
    """None to send the request; else the seconds after which a retry could be served.

    A request is turned away at once when the gateway's loop runs so far behind (``behind_s``)
    that its answer could not be written before the deadline, or when requests are already
    waiting on its worker and the prediction says it cannot finish in the time left: queueing it
    would only turn it into a late answer, and the work spent on it would delay the requests that
    can still make it.
    """
    left_s = remaining_s - behind_s
    if left_s <= 0:
        return max(behind_s, 0.001)
    # Warm-up curves measured beside serving workers run up to twice too slow: a request is turned
    # away only when even half the predicted time would miss its deadline.
    if finish_s is None or ahead == 0 or finish_s * ADMISSION_OPTIMISM <= left_s:
        return None
    return finish_s * ADMISSION_OPTIMISM - left_s
