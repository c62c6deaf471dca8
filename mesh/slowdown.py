"""A worker's live slowdown factor: a scalar Kalman filter over observed / profiled latency (ALERT-style).

The slowdown ξ = observed compute time / profiled compute time captures interference, throttling and
load the profile did not see; its variance says how unsure we are and grows when the environment
turns volatile, so P(deadline met) becomes conservative exactly then. A pure, synchronous core:
imports only the standard library (no clock, no asyncio, no zmq, no torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

_MIN_RATIO = 1e-6  # an observed time of 0 (clock granularity) must not become log(0)
MIN_BATCHES = 5  # timed batches before the slowdown they show is believed (and reported)
CEILING = 4.0  # the most a batcher's prediction is raised over the curve
# An unobserved slowdown returns to the profile after this long (s) without an observation, with
# this time constant (s) (see SlowdownTracker._reverted).
REVERT_AFTER_S = 2.0
REVERT_S = 5.0


@dataclass(frozen=True, slots=True)
class SlowdownEstimate:
    """The filter's belief about ξ for the next request: a normal with this mean and variance."""

    mean: float
    variance: float

    @property
    def stddev(self) -> float:
        return math.sqrt(max(self.variance, 0.0))


class SlowdownTracker:
    """One scalar Kalman filter of ξ for one (worker, variant).

    The filter runs on ln ξ, a random walk observed with additive noise: latency jitter is
    multiplicative (a slowed worker also varies more), so in log space one set of variances fits a
    fast worker and a slowed one alike. All variances are in (ln ξ)² units; 0.05 is about 22 %
    per-request jitter.

    The process variance is matched to the innovations (ALERT's volatility detection, in a stable
    form): an exponentially weighted mean of ``y² - P - R`` (innovation squared minus what the
    filter already expects), never below ``process_variance``. A run of surprising observations
    raises it, which raises the gain (a step is tracked within a few observations) and the reported
    variance (the deadline estimate turns cautious); quiet stretches let it decay back. The
    statistic does not feed back through the gain, so it cannot run away. Unobserved, the belief
    returns toward the initial one (``revert_s``; a caller that passes no times keeps it as
    filtered). Not thread-safe: one owner calls :meth:`observe`.
    """

    __slots__ = ("_at", "_m", "_m0", "_observations", "_p", "_q", "_q_floor", "_r", "_revert_after_s",
                 "_revert_s", "_weight")

    def __init__(self, *, process_variance: float = 1e-3, measurement_variance: float = 0.05,
                 initial_mean: float = 1.0, initial_variance: float = 0.25, adapt_weight: float = 0.1,
                 revert_after_s: float = REVERT_AFTER_S, revert_s: float = REVERT_S) -> None:
        if process_variance <= 0 or measurement_variance <= 0 or initial_variance < 0:
            raise ValueError("variances must be positive (initial_variance may be 0)")
        if not (initial_mean > 0 and math.isfinite(initial_mean)):
            raise ValueError(f"initial_mean must be positive, got {initial_mean}")
        if not 0.0 <= adapt_weight < 1.0:
            raise ValueError(f"adapt_weight must be in [0, 1), got {adapt_weight}")
        if not (revert_s > 0 and revert_after_s >= 0):
            raise ValueError(f"revert_s must be positive and revert_after_s non-negative, got {revert_s}, "
                             f"{revert_after_s}")
        self._m = self._m0 = math.log(initial_mean)
        self._revert_after_s, self._revert_s = float(revert_after_s), float(revert_s)
        self._p = float(initial_variance)
        self._q_floor = float(process_variance)
        self._q = float(process_variance)
        self._r = float(measurement_variance)
        self._weight = float(adapt_weight)
        self._observations = 0
        self._at: float | None = None  # when the latest observation came (the caller's clock), if told

    @property
    def observations(self) -> int:
        return self._observations

    def observe(self, observed_s: float, profiled_s: float, now: float | None = None) -> SlowdownEstimate:
        """Fold in one request's compute time against its profiled time, timed at ``now`` (see
        :meth:`estimate`); return the new estimate."""
        if not (profiled_s > 0 and math.isfinite(profiled_s)):
            raise ValueError(f"profiled_s must be positive and finite, got {profiled_s}")
        if not (observed_s >= 0 and math.isfinite(observed_s)):
            raise ValueError(f"observed_s must be non-negative and finite, got {observed_s}")
        self._m, self._q = self._reverted(now)
        self._at = now if now is not None else self._at
        z = math.log(max(observed_s / profiled_s, _MIN_RATIO))
        innovation = z - self._m
        if self._observations:  # the first innovation mostly measures the initial guess, not volatility
            excess = innovation * innovation - self._p - self._r
            self._q = max(self._q_floor, (1.0 - self._weight) * self._q + self._weight * excess)
        prior = self._p + self._q
        gain = prior / (prior + self._r)
        self._m += gain * innovation
        self._p = (1.0 - gain) * prior
        self._observations += 1
        return self.estimate()

    def estimate(self, now: float | None = None) -> SlowdownEstimate:
        """The next request's ξ (filter uncertainty, process noise and jitter) as a normal, at ``now``
        (the clock of the observations' times; without one, as filtered).

        ``mean`` is the centre of the filter's log-normal belief (its median, exp of the filtered
        log), so a constant slowdown reads back exactly and P(ξ <= mean) = 0.5 in both
        distributions; ``variance`` is the log-normal's.
        """
        m, q = self._reverted(now)
        v = self._p + q + self._r
        centre = math.exp(m)
        return SlowdownEstimate(mean=centre, variance=math.expm1(v) * math.exp(v) * centre * centre)

    def _reverted(self, now: float | None) -> tuple[float, float]:
        """The filtered log slowdown and the volatility at ``now``, unobserved since ``_at``: past
        ``revert_after_s``, both return toward the initial belief's (the profile, the floor) with
        time constant ``revert_s``. A slowdown measured a while ago, a cold start's or a passing
        neighbour's, says less and less of the worker now; and a chooser that sends nothing to a
        worker measured slow would otherwise never measure it again. Within ``revert_after_s``
        nothing moves, so a worker observed every second or so is tracked as filtered alone (a
        pull toward the profile at each of a slow stream's replies would bias it low)."""
        idle_s = now - self._at if now is not None and self._at is not None else 0.0
        if idle_s <= self._revert_after_s:
            return self._m, self._q
        k = math.exp((self._revert_after_s - idle_s) / self._revert_s)
        return self._m0 + (self._m - self._m0) * k, self._q_floor + (self._q - self._q_floor) * k


def p_deadline_met(budget_s: float, profiled_s: float, est: SlowdownEstimate, queue_s: float = 0.0) -> float:
    """P(queue_s + ξ·profiled_s <= budget_s) for ξ ~ N(est.mean, est.variance); a number in [0, 1].

    With zero variance it is 1 or 0. A non-positive profiled time means the variant costs nothing
    beyond its queue. Monotone non-decreasing in ``budget_s``.
    """
    slack = budget_s - queue_s
    if not math.isfinite(slack):
        return 1.0 if slack > 0 else 0.0
    if profiled_s <= 0:
        return 1.0 if slack >= 0 else 0.0
    if slack < 0:
        return 0.0
    threshold = slack / profiled_s  # largest ξ that still meets the deadline
    sd = est.stddev
    if sd == 0.0:
        return 1.0 if est.mean <= threshold else 0.0
    p = 0.5 * math.erfc((est.mean - threshold) / (sd * math.sqrt(2.0)))
    return min(1.0, max(0.0, p)) if math.isfinite(p) else 0.0


def slowed(curve: Callable[[int], float], tracker: SlowdownTracker,
           clock: Callable[[], float] | None = None) -> Callable[[int], float]:
    """What a batcher predicts a batch of ``b`` rows takes: ``curve(b)`` (the model alone) times the
    slowdown ``tracker`` has seen once it has seen ``MIN_BATCHES`` (never below the curve, at most
    ``CEILING`` times it), so a worker does not start a batch that fits only on the curve and
    answer it late. ``clock`` is that of the times the tracker was told (none: as filtered). The
    worker and ``letmesh simulate`` predict with this."""

    def latency_s(batch: int) -> float:
        if tracker.observations < MIN_BATCHES:
            return curve(batch)
        return curve(batch) * min(CEILING, max(1.0, tracker.estimate(clock() if clock else None).mean))

    return latency_s
