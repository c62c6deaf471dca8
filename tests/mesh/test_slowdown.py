"""The slowdown tracker follows a worker's real speed, and P(deadline met) behaves as a probability."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.slowdown import SlowdownEstimate, SlowdownTracker, p_deadline_met, slowed

PROFILED_S = 0.004


def test_a_fresh_tracker_believes_the_profile_but_is_unsure():
    est = SlowdownTracker().estimate()
    assert est.mean == pytest.approx(1.0)
    assert est.variance > 0.1


def test_converges_to_a_constant_slowdown_and_grows_sure_of_it():
    tracker = SlowdownTracker()
    fresh = tracker.estimate()
    first = tracker.observe(2.0 * PROFILED_S, PROFILED_S)
    for _ in range(50):
        last = tracker.observe(2.0 * PROFILED_S, PROFILED_S)
    assert last.mean == pytest.approx(2.0, rel=1e-3)
    # Relative to the level: what remains is the assumed per-request jitter, not doubt about ξ.
    assert last.variance / last.mean**2 < first.variance / first.mean**2 < fresh.variance / fresh.mean**2
    assert last.variance / last.mean**2 < fresh.variance / fresh.mean**2 / 4
    assert tracker.observations == 51


def test_noisy_observations_average_out_around_the_true_slowdown():
    rng = random.Random(7)
    tracker = SlowdownTracker()
    means = []
    for _ in range(400):
        est = tracker.observe(1.5 * math.exp(rng.gauss(0.0, 0.2)) * PROFILED_S, PROFILED_S)
        means.append(est.mean)
    tail = means[200:]
    assert sum(tail) / len(tail) == pytest.approx(1.5, rel=0.08)


def test_tracks_a_step_change_within_a_few_observations():
    rng = random.Random(3)
    tracker = SlowdownTracker()
    for _ in range(100):
        settled = tracker.observe(math.exp(rng.gauss(0.0, 0.1)) * PROFILED_S, PROFILED_S)
    for _ in range(8):  # a co-located job makes the worker four times slower
        after = tracker.observe(4.0 * math.exp(rng.gauss(0.0, 0.1)) * PROFILED_S, PROFILED_S)
    assert after.mean == pytest.approx(4.0, rel=0.25)
    # The surprise shows as extra uncertainty, relative to the new level too.
    assert after.variance / after.mean**2 > settled.variance / settled.mean**2


def test_volatility_decays_once_the_worker_is_steady_again():
    tracker = SlowdownTracker()
    for _ in range(30):
        tracker.observe(PROFILED_S, PROFILED_S)
    jumped = tracker.observe(3.0 * PROFILED_S, PROFILED_S)
    for _ in range(60):
        calm = tracker.observe(3.0 * PROFILED_S, PROFILED_S)
    assert calm.variance < jumped.variance


def test_a_slowdown_left_unobserved_returns_to_the_profile_and_filtering_resumes_from_there():
    """A worker measured four times slow, then sent nothing (a chooser avoids it): the belief
    holds for the first seconds, then returns to the profile, unsure no more than the filter
    usually is; a reply after the silence moves it as a first surprise would."""
    tracker = SlowdownTracker(revert_after_s=2.0, revert_s=5.0)
    for t in range(20):
        tracker.observe(PROFILED_S, PROFILED_S, now=0.1 * t)
    for _ in range(3):
        slow = tracker.observe(4.0 * PROFILED_S, PROFILED_S, now=2.0)
    assert slow.mean > 2.5
    assert tracker.estimate() == tracker.estimate(3.0) == tracker.estimate(4.0) == slow  # 2 s change nothing
    means = [tracker.estimate(2.0 + idle).mean for idle in (5.0, 10.0, 20.0, 60.0)]
    assert means == sorted(means, reverse=True) and 1.0 < means[0] < slow.mean
    back = tracker.estimate(62.0)
    assert back.mean == pytest.approx(1.0, abs=1e-3)
    assert back.variance < slow.variance
    assert p_deadline_met(3 * PROFILED_S, PROFILED_S, back) > 0.99 > p_deadline_met(3 * PROFILED_S, PROFILED_S, slow)
    resumed = tracker.observe(PROFILED_S, PROFILED_S, now=62.0)  # it answers at its profile again
    assert resumed.mean == pytest.approx(1.0, abs=0.05)


def test_a_steady_stream_of_replies_a_second_apart_is_tracked_without_a_pull_to_the_profile():
    tracker = SlowdownTracker()
    for t in range(100):
        est = tracker.observe(2.0 * PROFILED_S, PROFILED_S, now=float(t))
    assert est.mean == pytest.approx(2.0, rel=1e-3)


def test_a_batcher_predicts_with_the_slowdown_as_it_stands_at_its_clock():
    """The worker's batcher: a variant timed four times slow is predicted so; left unserved for a
    minute (a gateway sent its requests elsewhere), on its curve again, so that it takes requests
    with deadlines the slow spell ruled out rather than dropping them unrun for good."""
    now = [0.0]
    tracker = SlowdownTracker()
    latency_s = slowed(lambda b: 0.01 * b, tracker, clock=lambda: now[0])
    for _ in range(10):
        tracker.observe(0.04, 0.01, now=now[0])
    assert latency_s(1) == pytest.approx(0.04, rel=0.1)
    now[0] = 60.0
    assert latency_s(1) == pytest.approx(0.01, rel=0.01)
    assert slowed(lambda b: 0.01 * b, tracker)(1) == pytest.approx(0.04, rel=0.1)  # no clock: as filtered


@pytest.mark.parametrize("observed, profiled", [(0.001, 0.0), (0.001, -1.0), (-0.001, 0.001),
                                                (math.nan, 0.001), (0.001, math.inf)])
def test_rejects_impossible_observations(observed, profiled):
    with pytest.raises(ValueError):
        SlowdownTracker().observe(observed, profiled)


def test_a_zero_observed_time_is_treated_as_very_fast_not_as_an_error():
    est = SlowdownTracker().observe(0.0, PROFILED_S)
    assert 0 < est.mean < 1.0


@pytest.mark.parametrize("budget_s, queue_s, expected", [
    (0.010, 0.0, 1.0),   # twice the profiled time with certainty
    (0.004, 0.0, 1.0),   # finishing exactly at the deadline meets it
    (0.002, 0.0, 0.0),
    (0.010, 0.007, 0.0),  # the queue eats the slack
    (0.010, 0.011, 0.0),
])
def test_p_deadline_met_with_zero_variance_is_a_step(budget_s, queue_s, expected):
    est = SlowdownEstimate(mean=1.0, variance=0.0)
    assert p_deadline_met(budget_s, PROFILED_S, est, queue_s) == expected


def test_p_deadline_met_is_a_half_at_the_mean_under_uncertainty():
    est = SlowdownEstimate(mean=2.0, variance=0.3)
    assert p_deadline_met(2.0 * PROFILED_S, PROFILED_S, est) == pytest.approx(0.5)


def test_a_variant_with_no_profiled_cost_meets_any_deadline_its_queue_allows():
    est = SlowdownEstimate(mean=3.0, variance=1.0)
    assert p_deadline_met(0.01, 0.0, est) == 1.0
    assert p_deadline_met(0.01, 0.0, est, queue_s=0.02) == 0.0


@given(mean=st.floats(0.1, 10.0), variance=st.floats(0.0, 5.0), queue=st.floats(0.0, 0.05),
       budgets=st.lists(st.floats(0.0, 0.2), min_size=2, max_size=10))
def test_p_deadline_met_is_a_probability_monotone_in_the_budget(mean, variance, queue, budgets):
    est = SlowdownEstimate(mean=mean, variance=variance)
    ps = [p_deadline_met(b, PROFILED_S, est, queue) for b in sorted(budgets)]
    assert all(0.0 <= p <= 1.0 for p in ps)
    assert all(a <= b for a, b in itertools.pairwise(ps))


def test_more_uncertainty_makes_a_comfortable_deadline_less_certain():
    sure = SlowdownEstimate(mean=1.0, variance=0.01)
    unsure = SlowdownEstimate(mean=1.0, variance=1.0)
    assert p_deadline_met(1.5 * PROFILED_S, PROFILED_S, unsure) < p_deadline_met(1.5 * PROFILED_S, PROFILED_S, sure)
