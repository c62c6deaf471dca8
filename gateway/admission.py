"""Admission: whether a request can still be answered within its deadline, decided before it is sent.

Pure functions over what the dispatcher knows: a worker's measured latency curve, how many
requests are already in flight there, the time the request has left, and how far behind the
gateway's own event loop is running.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection

from mesh.latency import LatencyCurve

# Warm-up curves measured beside serving workers ran up to twice too slow: a prediction never
# assumes a worker faster than half its curve.
SPEED_FLOOR = 0.5


def speed_factor(slowdown: float | None) -> float:
    """How much of the curve's time a worker takes, as far as admission trusts it: in [0.5, 1].

    ``slowdown`` is the worker's measured compute time over its curve (the gateway's filter of its
    replies), None before there are enough. Below 1 the curve was measured slow and the worker's
    own speed is used, down to SPEED_FLOOR; above 1 (a host busier than at profiling) the curve is
    kept: on a busy host a sub-millisecond model's slowdown swings by tens of times, and scaling a
    whole queue by it turned away requests that then would have been served in time. Unknown: the
    floor, so a cold worker is not turned away on a curve it has not yet been measured against.
    """
    if slowdown is None or not math.isfinite(slowdown):
        return SPEED_FLOOR
    return min(1.0, max(SPEED_FLOOR, slowdown))


def predicted_finish_s(curve: LatencyCurve | None, ahead: int, slowdown: float | None = None) -> float | None:
    """Seconds until a new request finishes behind ``ahead`` others on a worker; None if unknown.

    The requests ahead and this one are served in batches along the worker's measured curve
    (per-item linear past its largest batch), at the worker's measured speed (:func:`speed_factor`).
    Taking them as one batch, and a slowdown above 1 as none, keeps the prediction optimistic: a
    request turned away could not have made it.
    """
    if curve is None:
        return None
    return curve(ahead + 1) / 1e3 * speed_factor(slowdown)


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
    if finish_s is None or ahead == 0 or finish_s <= left_s:
        return None
    return finish_s - left_s
