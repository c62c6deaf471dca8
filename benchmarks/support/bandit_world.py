"""The simulated world of the bandit benchmark: a digits-like family of four variants, apps whose
QoE weighs accuracy, speed against a budget and energy, and a change halfway through (a co-located
job slows the big variants on servers; battery-saver users come to value accuracy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mesh.bandit import Bounds, Candidate, NoCandidate, candidate_from_profile, filter_candidates
from mesh.slowdown import SlowdownTracker

# Shaped like the demo digits family: accuracy from the manifests, latency growing ~60x from the
# linear model to the CNN, energy proportional to latency.
VARIANTS = ("digits-linear", "digits-mlp", "digits-wide", "digits-cnn")
ACCURACY = np.array([0.974, 0.976, 0.981, 0.987])
SERVER_MS = np.array([0.4, 0.65, 6.0, 24.0])
DEVICES = {  # latency factor vs a server, watts while computing, queueing ms at full load
    "server": (1.0, 30.0, 2.0),
    "edge": (8.0, 5.0, 10.0),
}
APPS = ("accurate-reader", "fast-reader", "battery-saver")
BUDGETS_MS = (20.0, 80.0, 400.0)
SEGMENTS = ("s1", "s2", "s3")  # carries no signal: a learner must not be hurt by it
MIN_ACCURACY = {"accurate-reader": 0.975}  # the accurate reader also states a bound
JITTER_SIGMA = 0.25  # log-normal per-request latency jitter
NOISE_SD = 0.1  # users' reported QoE around its mean
LATE_KEEP = 0.1  # a late answer keeps a tenth of its value
BACKGROUND_RATE = 0.25  # chance per step that each (device, variant) tracker sees other traffic


def app_weights(app: str, device: str, phase: int) -> tuple[float, float, float]:
    """(accuracy, speed, energy) weights of an app's QoE; they sum to 1."""
    if app == "accurate-reader":
        return (0.8, 0.2, 0.0)
    if app == "fast-reader":
        return (0.25, 0.75, 0.0)
    if phase == 1:  # the battery-saver's users start to value accuracy over battery
        return (0.7, 0.1, 0.2)
    return (0.2, 0.1, 0.7) if device == "edge" else (0.5, 0.2, 0.3)


def true_slowdown(device: str, phase: int) -> np.ndarray:
    """The real ξ per variant: edge boards throttle a little; later a co-located job hits big models on servers."""
    if device == "edge":
        return np.full(len(VARIANTS), 1.3)
    if phase == 1:
        return np.array([1.0, 1.0, 4.0, 4.0])
    return np.ones(len(VARIANTS))


def profiled_ms(device: str) -> np.ndarray:
    return SERVER_MS * DEVICES[device][0]


def energy_j(device: str) -> np.ndarray:
    return DEVICES[device][1] * profiled_ms(device) / 1e3


def _clip_mean(q: np.ndarray, sd: float) -> np.ndarray:
    """E[clip(q + N(0, sd²), 0, 1)] in closed form."""
    from scipy.stats import norm

    def above(c: float) -> np.ndarray:  # E[max(X - c, 0)]
        z = (q - c) / sd
        return (q - c) * norm.cdf(z) + sd * norm.pdf(z)

    return above(0.0) - above(1.0)


def qoe(app: str, device: str, phase: int, budget_ms: float, latency_ms: np.ndarray) -> np.ndarray:
    """Mean QoE of each variant given its realised latency (before the users' noise)."""
    w_acc, w_speed, w_energy = app_weights(app, device, phase)
    acc = (ACCURACY - 0.97) / 0.02
    e = energy_j(device)
    energy = 1.0 - np.log10(e / e.min()) / np.log10(e.max() / e.min())
    speed = np.clip(1.0 - latency_ms / budget_ms, 0.0, 1.0)
    q = w_acc * acc + w_speed * speed + w_energy * energy
    return np.where(latency_ms > budget_ms, LATE_KEEP * q, q)


_QUANTILES = None


def expected_qoe(app: str, device: str, phase: int, budget_ms: float, queue_ms: float, binary: bool) -> np.ndarray:
    """True expected reward of each variant: over latency jitter (quantile grid) and reward noise (exact)."""
    global _QUANTILES
    if _QUANTILES is None:
        from scipy.stats import norm

        _QUANTILES = np.exp(JITTER_SIGMA * norm.ppf((np.arange(64) + 0.5) / 64))
    base = true_slowdown(device, phase) * profiled_ms(device)
    lat = queue_ms + base[:, None] * _QUANTILES[None, :]
    q = np.stack([qoe(app, device, phase, budget_ms, lat[:, k]) for k in range(lat.shape[1])], axis=1)
    return (q if binary else _clip_mean(q, NOISE_SD)).mean(axis=1)


@dataclass(frozen=True, slots=True)
class Step:
    """One request as every policy sees it, with the truth only the scorer and the oracle may read."""

    context: dict[str, str]
    budget_ms: float
    load: float
    candidates: tuple[Candidate, ...]
    index: tuple[int, ...]  # candidate position -> variant index
    expected: np.ndarray  # true expected reward per variant
    reward: np.ndarray  # realised reward per variant (common random numbers)


def world(seed: int, decisions: int, feedback: str = "graded") -> tuple[list[Step], int]:
    """The request stream of one seed, with trackers fed by background traffic.

    ``graded`` feedback is the QoE plus normal noise, clipped to [0, 1]; ``binary`` is a thumbs up
    with probability QoE (satisfied or not), far noisier.
    """
    binary = feedback == "binary"
    rng = np.random.default_rng(seed)
    trackers = {(d, v): SlowdownTracker() for d in DEVICES for v in range(len(VARIANTS))}
    cache: dict[tuple[str, str, int, float, float], np.ndarray] = {}
    steps: list[Step] = []
    rejected = 0
    while len(steps) < decisions:
        phase = 0 if len(steps) < decisions // 2 else 1
        for (d, v), tracker in trackers.items():
            if rng.random() < BACKGROUND_RATE:
                prof = profiled_ms(d)[v]
                observed = prof * true_slowdown(d, phase)[v] * math.exp(JITTER_SIGMA * rng.standard_normal())
                tracker.observe(observed / 1e3, prof / 1e3)
        app, device = APPS[rng.integers(len(APPS))], tuple(DEVICES)[rng.integers(len(DEVICES))]
        budget = BUDGETS_MS[rng.integers(len(BUDGETS_MS))]
        segment = SEGMENTS[rng.integers(len(SEGMENTS))]
        load = round(float(rng.random()), 2)
        queue_ms = load * DEVICES[device][2]
        options = [candidate_from_profile(variant=VARIANTS[v], accuracy=float(ACCURACY[v]),
                                          energy_j=float(energy_j(device)[v]),
                                          profiled_ms=float(profiled_ms(device)[v]),
                                          slowdown=trackers[(device, v)].estimate(), budget_ms=budget,
                                          queue_ms=queue_ms) for v in range(len(VARIANTS))]
        try:
            cands = filter_candidates(options, Bounds(budget_ms=budget, min_accuracy=MIN_ACCURACY.get(app)))
        except NoCandidate:  # the mesh answers this request with an error; no decision is made
            rejected += 1
            continue
        key = (app, device, phase, budget, load)
        if key not in cache:
            cache[key] = expected_qoe(app, device, phase, budget, queue_ms, binary)
        jitter = np.exp(JITTER_SIGMA * rng.standard_normal(len(VARIANTS)))
        latency = queue_ms + true_slowdown(device, phase) * profiled_ms(device) * jitter
        q = qoe(app, device, phase, budget, latency)
        noise = rng.random(len(VARIANTS)) if binary else rng.standard_normal(len(VARIANTS))
        reward = (noise < q).astype(float) if binary else np.clip(q + NOISE_SD * noise, 0.0, 1.0)
        steps.append(Step(context={"app": app, "device": device, "segment": segment}, budget_ms=budget, load=load,
                          candidates=tuple(cands), index=tuple(VARIANTS.index(c.variant) for c in cands),
                          expected=cache[key], reward=reward))
    return steps, rejected
