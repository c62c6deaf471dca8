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
# A worker measured slower than its curve is believed only for a model whose batch of one takes
# at least this long (ms): a sub-millisecond model's measured slowdown on a busy host swings by
# tens of times with each descheduling, while a multi-millisecond batch slowed two-fold is the
# worker's real pace (the host is busier than when it was profiled).
TRUST_SLOW_MS = 2.0
# The most a slowdown scales a prediction: beyond it the worker is as good as stalled, and the
# deadline timer and heartbeats, not admission, deal with it.
SPEED_CEILING = 4.0


def speed_factor(slowdown: float | None, single_ms: float = 0.0) -> float:
    """How much of the curve's time a worker takes, as far as admission trusts it.

    ``slowdown`` is the worker's measured compute time over its curve (the gateway's filter of its
    replies), None before there are enough; ``single_ms`` the curve's batch of one. Below 1 the
    curve was measured slow and the worker's own speed is used, down to SPEED_FLOOR. Above 1 (a
    host busier than at profiling) it is used, up to SPEED_CEILING, only when a batch of one takes
    TRUST_SLOW_MS or more; for a faster model the curve is kept: scaling a whole queue by a swing
    turned away requests that then would have been served in time. Unknown: the floor, so a cold
    worker is not turned away on a curve it has not yet been measured against.
    """
    if slowdown is None or not math.isfinite(slowdown):
        return SPEED_FLOOR
    ceiling = SPEED_CEILING if single_ms >= TRUST_SLOW_MS else 1.0
    return min(ceiling, max(SPEED_FLOOR, slowdown))


def predicted_finish_s(curve: LatencyCurve | None, ahead: int, slowdown: float | None = None,
                       busy_s: float = 0.0, rows: int = 1, s_per_row: float | None = None) -> float | None:
    """Seconds until a new request of ``rows`` rows finishes behind ``ahead`` rows of others on a
    worker; None if unknown.

    The rows ahead and this request's are served in batches along the worker's measured curve
    (per-row linear past its largest batch), at the worker's measured speed (:func:`speed_factor`).
    ``busy_s`` is how long the worker has been at the work ahead (since its last answer): the
    batch it is computing is that far along, up to that batch's whole time, and what is done of
    it is not waited for again. Taking the rows as one batch, and crediting a worker that was
    idle with a batch already under way, keep the prediction optimistic: a request turned away
    could not have made it.

    ``s_per_row`` is the pace the worker has answered rows at lately while work waited for it
    (the gateway's measure, :meth:`~gateway.worker_speeds.WorkerSpeeds.s_per_row`). Where it is
    slower than the curve, the queue drains at it: the curve times the model alone, while on a
    core it shares (with this gateway, on a small host) the rows ahead also wait for the others'
    turns. It is a mean over many batches, so the rule above holds: what is under way is credited.
    """
    if curve is None:
        return None
    factor = speed_factor(slowdown, curve(1))
    finish_s = curve(ahead + max(rows, 1)) / 1e3 * factor
    running = min(ahead, curve.batches[-1] if curve.batches else 1)
    if ahead > 0 and busy_s > 0:
        finish_s -= min(busy_s, curve(running) / 1e3 * factor)
    if ahead > 0 and s_per_row is not None:
        paced_s = (ahead + max(rows, 1)) * s_per_row - min(busy_s, running * s_per_row)
        finish_s = max(finish_s, paced_s)
    return finish_s


def running_behind_s(lags_s: Collection[float]) -> float:
    """How late the event loop typically wakes (s): the median of its latest wake-ups' lateness.

    On a saturated gateway every request waits about this long before its handler runs, and its
    answer about as long again before it is written. The median, not the worst: one slow turn
    (a large body, a collection) says nothing about the next request.
    """
    return statistics.median(lags_s) if lags_s else 0.0


def timed_against(now: float, finish_s: float | None, remaining_s: float, ahead: int) -> float:
    """When a request sent now is predicted answered, to time its answer against for the margin
    admission keeps (:meth:`~gateway.worker_speeds.WorkerSpeeds.margin_s`); 0 not to time it.

    Only requests the prediction decided on count: sent behind others with less than twice the
    predicted time to spare. Below capacity most are sent with far more, and their overruns
    differ: a short prediction misses the constant costs around a batch (the wait for the batch
    under way, the reply's way back), which a long one has to spare. Counted with those, near
    capacity the margin turned away requests that would have made it."""
    if ahead == 0 or finish_s is None or finish_s < 0.5 * remaining_s:
        return 0.0
    return now + finish_s


def admit(finish_s: float | None, remaining_s: float, ahead: int, behind_s: float = 0.0,
          margin_s: float = 0.0) -> float | None:
    """None to send the request; else the seconds after which a retry could be served.

    A request is turned away at once when the gateway's loop runs so far behind (``behind_s``)
    that its answer could not be written before the deadline, or when requests are already
    waiting on its worker and the prediction says it cannot finish in the time left: queueing it
    would only turn it into a late answer, and the work spent on it would delay the requests that
    can still make it. ``margin_s`` is how much later than predicted the worker's answers have
    come lately (:meth:`~gateway.worker_speeds.WorkerSpeeds.margin_s`): the prediction is kept
    that much inside the time left.
    """
    left_s = remaining_s - behind_s
    if left_s <= 0:
        return max(behind_s, 0.001)
    if finish_s is None or ahead == 0 or finish_s + margin_s <= left_s:
        return None
    return finish_s + margin_s - left_s
