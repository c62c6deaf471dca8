"""Off-policy estimates recover a target policy's known value from logs written by another policy."""

from __future__ import annotations

import math
import random

import pytest

from controller.offpolicy import LoggedDecision, evaluate, policy_target, preferences
from mesh.bandit import BanditPolicy, Candidate

VARIANTS = (
    Candidate("small", 0.95, 1.0, 0.99, 0.001),
    Candidate("medium", 0.97, 5.0, 0.95, 0.005),
    Candidate("large", 0.99, 20.0, 0.8, 0.02),
)
# True mean reward of each variant per app: each app has a different favourite.
MEANS = {"reader": (0.3, 0.5, 0.8), "sprinter": (0.7, 0.4, 0.1)}


def logged(n: int, seed: int, logging_pmf=(0.5, 0.3, 0.2)) -> list[LoggedDecision]:
    """Decisions of a context-blind logging policy, with Bernoulli rewards around MEANS."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        app = rng.choice(sorted(MEANS))
        chosen = rng.choices(range(3), weights=logging_pmf)[0]
        reward = 1.0 if rng.random() < MEANS[app][chosen] else 0.0
        out.append(LoggedDecision(context={"app": app}, budget_ms=50.0, load=0.1, candidates=VARIANTS,
                                  chosen=chosen, probability=logging_pmf[chosen], reward=reward))
    return out


def best_per_app(r: LoggedDecision) -> list[float]:
    return [0.0, 0.0, 1.0] if r.context["app"] == "reader" else [1.0, 0.0, 0.0]


TRUE_BEST = (0.8 + 0.7) / 2  # both apps equally likely


def test_ips_and_dr_recover_a_better_policys_value():
    records = logged(6000, seed=1)
    value = evaluate(records, best_per_app)
    logging_value = sum(0.5 * m[0] + 0.3 * m[1] + 0.2 * m[2] for m in MEANS.values()) / 2
    assert value.n == 6000
    assert value.logged == pytest.approx(logging_value, abs=0.02)
    assert value.ips == pytest.approx(TRUE_BEST, abs=max(3 * value.ips_stderr, 0.01))
    assert value.dr == pytest.approx(TRUE_BEST, abs=max(3 * value.dr_stderr, 0.01))
    assert value.snips == pytest.approx(TRUE_BEST, abs=0.03)
    assert value.dr_stderr < value.ips_stderr  # the reward model takes variance out
    assert value.ips > value.logged + 0.15


def test_evaluating_the_logging_policy_itself_gives_the_logged_value():
    records = logged(3000, seed=2)
    value = evaluate(records, lambda r: (0.5, 0.3, 0.2))
    assert value.ips == pytest.approx(value.logged, abs=0.03)
    assert value.dr == pytest.approx(value.logged, abs=0.02)


def test_an_empty_log_gives_no_estimate():
    value = evaluate([], best_per_app)
    assert value.n == 0 and math.isnan(value.ips) and math.isnan(value.dr) and math.isnan(value.logged)


@pytest.mark.parametrize("pmf", [(1.0, 0.0), (0.5, -0.1, 0.6), (0.0, 0.0, 0.0), (math.nan, 0.5, 0.5)])
def test_a_malformed_target_pmf_is_rejected(pmf):
    with pytest.raises(ValueError):
        evaluate(logged(10, seed=3), lambda r: pmf)


def test_a_record_with_zero_logged_probability_is_rejected():
    bad = LoggedDecision(context={}, budget_ms=10.0, load=0.0, candidates=VARIANTS, chosen=0, probability=0.0,
                         reward=1.0)
    with pytest.raises(ValueError):
        evaluate([bad], best_per_app)


@pytest.fixture(scope="module")
def learned() -> BanditPolicy:
    """A VW policy trained online on the same world (its own exploration, its own logs)."""
    rng = random.Random(4)
    with BanditPolicy() as policy:
        for _ in range(600):
            app = rng.choice(sorted(MEANS))
            d = policy.decide({"app": app}, 50.0, 0.1, VARIANTS, rng=rng)
            reward = 1.0 if rng.random() < MEANS[app][d.chosen] else 0.0
            policy.learn({"app": app}, 50.0, 0.1, VARIANTS, d.chosen, reward, d.probability)
        yield policy


def test_preferences_show_each_contexts_favourite(learned):
    prefs = preferences(logged(400, seed=5), learned)
    assert [(ctx, variant) for ctx, variant, _ in prefs] == [({"app": "reader"}, "large"),
                                                             ({"app": "sprinter"}, "small")]
    assert all(0.9 < p <= 1.0 for _, _, p in prefs)


def test_a_learned_policy_is_estimated_well_above_the_logging_policy(learned):
    value = evaluate(logged(4000, seed=6), policy_target(learned, greedy=True))
    assert value.dr == pytest.approx(TRUE_BEST, abs=0.03)
    assert value.dr > value.logged + 0.15
