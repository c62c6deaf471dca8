"""Variant selection with a real Vowpal Wabbit learner: bounds, example format, learning, exploration, snapshots."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.bandit import (
    BadModel,
    BanditPolicy,
    Bounds,
    Candidate,
    NoCandidate,
    PolicyClosed,
    candidate_from_profile,
    confident,
    filter_candidates,
    save_atomic,
    shared_features,
    vw_example,
)
from mesh.slowdown import SlowdownEstimate

LINEAR = Candidate("digits-linear", 0.974, 0.5, 0.99, 0.0001)
MLP = Candidate("digits-mlp", 0.976, 0.8, 0.98, 0.0002)
WIDE = Candidate("digits-wide", 0.981, 8.0, 0.9, 0.0012)
CNN = Candidate("digits-cnn", 0.987, 30.0, 0.4, 0.003)
FAMILY = (LINEAR, MLP, WIDE, CNN)


# --- bounds -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bounds, expected", [
    (Bounds(budget_ms=100), ["digits-linear", "digits-mlp", "digits-wide"]),  # cnn: P(met) 0.4 < 0.5
    (Bounds(budget_ms=100, min_accuracy=0.976), ["digits-mlp", "digits-wide"]),
    (Bounds(budget_ms=100, max_energy_j=0.0002), ["digits-linear", "digits-mlp"]),
    (Bounds(budget_ms=100, min_accuracy=0.975, max_energy_j=0.0015), ["digits-mlp", "digits-wide"]),
])
def test_filter_keeps_exactly_the_variants_within_every_bound_in_order(bounds, expected):
    assert [c.variant for c in filter_candidates(FAMILY, bounds)] == expected


def test_a_lower_deadline_confidence_admits_the_risky_variant():
    kept = filter_candidates(FAMILY, Bounds(budget_ms=100), min_p_deadline=0.3)
    assert [c.variant for c in kept] == ["digits-linear", "digits-mlp", "digits-wide", "digits-cnn"]


def test_confident_keeps_the_candidates_sure_to_meet_the_deadline_or_all_when_none_is():
    assert [c.variant for c in confident(FAMILY, 0.98)] == ["digits-linear", "digits-mlp"]
    assert confident([WIDE, LINEAR], 0.99) == [LINEAR]
    assert confident([WIDE, CNN], 0.99) == [WIDE, CNN]  # no safer option: the caller's best bet stands


@pytest.mark.parametrize("bounds, bound, message", [
    (Bounds(budget_ms=100, min_accuracy=0.99), "accuracy",
     "no deployed variant of digits has accuracy >= 0.99 (best: 0.987)"),
    (Bounds(budget_ms=100, max_energy_j=0.00005), "energy",
     "no deployed variant of digits uses <= 5e-05 J per request (least: 0.0001 J)"),
    (Bounds(budget_ms=100, min_accuracy=0.985, max_energy_j=0.001), "energy",
     "no deployed variant of digits meeting the accuracy bound uses <= 0.001 J per request (least: 0.003 J)"),
    (Bounds(budget_ms=100, min_accuracy=0.985), "deadline",
     ("no deployed variant of digits is likely to meet the 100 ms deadline (best: digits-cnn, predicted 30 ms, "
      "P(deadline met) 0.40 < 0.5)")),
])
def test_no_candidate_names_the_bound_that_cannot_be_met(bounds, bound, message):
    with pytest.raises(NoCandidate) as info:
        filter_candidates(FAMILY, bounds, family="digits")
    assert info.value.bound == bound
    assert str(info.value) == message


def test_accuracy_is_reported_before_energy_and_deadline_when_all_fail():
    with pytest.raises(NoCandidate) as info:
        filter_candidates([CNN], Bounds(budget_ms=1, min_accuracy=0.999, max_energy_j=1e-9))
    assert info.value.bound == "accuracy"


def test_an_empty_family_is_its_own_error():
    with pytest.raises(NoCandidate) as info:
        filter_candidates([], Bounds(budget_ms=50), family="digits")
    assert info.value.bound == "deployed"
    assert "digits" in str(info.value)


def test_candidate_from_profile_uses_the_live_slowdown():
    steady = candidate_from_profile(variant="v", accuracy=0.9, energy_j=0.1, profiled_ms=10.0,
                                    slowdown=SlowdownEstimate(1.0, 0.01), budget_ms=20.0, queue_ms=2.0)
    slowed = candidate_from_profile(variant="v", accuracy=0.9, energy_j=0.1, profiled_ms=10.0,
                                    slowdown=SlowdownEstimate(3.0, 0.01), budget_ms=20.0, queue_ms=2.0)
    assert steady.predicted_latency_ms == pytest.approx(12.0)
    assert slowed.predicted_latency_ms == pytest.approx(32.0)
    assert steady.p_deadline > 0.99 and slowed.p_deadline < 0.01


# --- VW examples ------------------------------------------------------------------------------

def test_vw_example_format_is_stable():
    lines = vw_example({"device": "edge", "app": "fast reader|v2", "battery": 40, "charging": False},
                       budget_ms=50.0, load=0.25, candidates=(LINEAR, CNN), label=(1, 0.25, 0.8))
    assert lines == [
        ("shared |C app=fast_reader_v2 battery:3.71357 charging=false device=edge "
         "|B budget=b6 log_budget:1.69897 load:0.25"),
        "|V v=digits-linear |F err:2.6 gap:1.3 lat:0.01 miss:0.01 energy:0",
        "0:0.25:0.8 |V v=digits-cnn |F err:1.3 gap:0 lat:0.6 miss:0.6 energy:1.47712",
    ]


def test_shared_features_without_context_still_carry_budget_and_load():
    assert shared_features({}, 20.0, 0.0) == "shared |B budget=b4 log_budget:1.30103 load:0"


def test_vw_example_rejects_a_label_outside_the_candidates():
    with pytest.raises(ValueError):
        vw_example({}, 10.0, 0.0, (LINEAR,), label=(1, 0.0, 1.0))
    with pytest.raises(ValueError):
        vw_example({}, 10.0, 0.0, ())


# --- the policy -------------------------------------------------------------------------------

def _reward(app: str, variant: str) -> float:
    best = {"accurate-reader": "digits-cnn", "fast-reader": "digits-linear"}[app]
    return 0.9 if variant == best else 0.2


def test_learns_a_different_favourite_for_each_context():
    rng = random.Random(11)
    with BanditPolicy() as policy:
        for i in range(400):
            app = ("accurate-reader", "fast-reader")[i % 2]
            ctx = {"app": app, "device": "server"}
            d = policy.decide(ctx, 100.0, 0.2, FAMILY, rng=rng)
            reward = _reward(app, FAMILY[d.chosen].variant) + rng.uniform(-0.05, 0.05)
            policy.learn(ctx, 100.0, 0.2, FAMILY, d.chosen, reward, d.probability)
        assert policy.updates == 400
        for app, favourite in (("accurate-reader", "digits-cnn"), ("fast-reader", "digits-linear")):
            pmf = policy.pmf({"app": app, "device": "server"}, 100.0, 0.2, FAMILY)
            assert FAMILY[max(range(4), key=pmf.__getitem__)].variant == favourite
            assert max(pmf) > 0.9


def test_an_untrained_policy_explores_every_candidate():
    with BanditPolicy() as policy:
        pmf = policy.pmf({"app": "x"}, 50.0, 0.0, FAMILY)
    assert len(pmf) == 4 and all(p > 0 for p in pmf) and sum(pmf) == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(subset=st.lists(st.sampled_from(FAMILY), min_size=1, max_size=4, unique=True),
       seed=st.integers(0, 2**32 - 1), app=st.sampled_from(["a", "b"]))
def test_decisions_never_leave_the_candidates(trained_policy, subset, seed, app):
    rng = random.Random(seed)
    for _ in range(5):
        d = trained_policy.decide({"app": app}, 80.0, 0.5, subset, rng=rng)
        assert 0 <= d.chosen < len(subset)
        assert len(d.pmf) == len(subset) and sum(d.pmf) == pytest.approx(1.0)
        assert d.probability == d.pmf[d.chosen] > 0


@pytest.fixture(scope="module")
def trained_policy():
    rng = random.Random(5)
    with BanditPolicy() as policy:
        for i in range(200):
            cands = rng.sample(FAMILY, rng.randint(1, 4))
            ctx = {"app": rng.choice("ab")}
            d = policy.decide(ctx, 80.0, 0.5, cands, rng=rng)
            policy.learn(ctx, 80.0, 0.5, cands, d.chosen, rng.random(), d.probability)
        yield policy


def test_a_snapshot_decides_exactly_like_its_source(trained_policy):
    with BanditPolicy(model=trained_policy.snapshot()) as replica:
        a, b = random.Random(99), random.Random(99)
        for i in range(50):
            cands = FAMILY[: 1 + i % 4]
            ctx = {"app": "ab"[i % 2]}
            assert replica.decide(ctx, 80.0, 0.5, cands, rng=a) == trained_policy.decide(ctx, 80.0, 0.5, cands, rng=b)


def test_a_restored_learner_keeps_learning_where_it_stopped():
    ctx = {"app": "a"}
    with BanditPolicy() as original:
        for _ in range(20):
            original.learn(ctx, 50.0, 0.0, FAMILY, 2, 1.0, 0.25)
        with BanditPolicy(model=original.snapshot()) as restored:
            for p in (original, restored):
                for _ in range(20):
                    p.learn(ctx, 50.0, 0.0, FAMILY, 0, 0.9, 0.25)
            assert restored.pmf(ctx, 50.0, 0.0, FAMILY) == original.pmf(ctx, 50.0, 0.0, FAMILY)


def test_learn_rejects_rewards_and_probabilities_out_of_range():
    with BanditPolicy() as policy:
        for reward, probability in ((1.5, 0.5), (-0.1, 0.5), (0.5, 0.0), (0.5, 1.2)):
            with pytest.raises(ValueError):
                policy.learn({}, 10.0, 0.0, FAMILY, 0, reward, probability)
        assert policy.updates == 0


def test_bad_model_bytes_are_a_named_error():
    with pytest.raises(BadModel):
        BanditPolicy(model=b"not a vw model")


def test_a_closed_policy_refuses_work_and_closing_twice_is_harmless():
    policy = BanditPolicy()
    policy.close()
    policy.close()
    with pytest.raises(PolicyClosed):
        policy.pmf({}, 10.0, 0.0, FAMILY)
    with pytest.raises(PolicyClosed):
        policy.snapshot()


# --- persistence ------------------------------------------------------------------------------

def test_save_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "digits.vw"
    save_atomic(target, b"old")
    with BanditPolicy() as policy:
        data = policy.snapshot()
    save_atomic(target, data)
    assert target.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["digits.vw"]
    with BanditPolicy(model=target.read_bytes()) as restored:
        assert sum(restored.pmf({}, 10.0, 0.0, FAMILY)) == pytest.approx(1.0)


def test_save_atomic_into_a_missing_folder_fails_without_litter(tmp_path):
    with pytest.raises(FileNotFoundError):
        save_atomic(tmp_path / "missing" / "digits.vw", b"x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("budget_ms", [float("nan"), float("inf"), -1.0, 10**400])
def test_a_budget_out_of_range_still_makes_a_valid_example(budget_ms) -> None:
    line = shared_features({"n": 10**400, "x": float("nan"), "app": "a"}, budget_ms, 0.5)
    assert "nan" not in line and "inf" not in line
    assert "n:" not in line and "x:" not in line and "app=a" in line
