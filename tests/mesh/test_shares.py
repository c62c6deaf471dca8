"""Holding a family's requests to the plan's variant fractions: the tracker and the weighted draw."""

from __future__ import annotations

import random
import tracemalloc
from collections import Counter
from dataclasses import dataclass

import pytest

from mesh.shares import ShareTracker, weighted_choice


@dataclass(frozen=True)
class Opt:
    variant: str
    accuracy: float


HI, MID, LO = Opt("hi", 90.0), Opt("mid", 80.0), Opt("lo", 70.0)


def test_shares_are_the_split_of_the_last_window() -> None:
    t = ShareTracker(window_s=2.0)
    for i in range(30):
        t.record("f", "hi" if i % 3 else "lo", now=i * 0.01)
    assert t.shares("f", 0.3) == pytest.approx({"hi": 20 / 30, "lo": 10 / 30})
    t.record("f", "lo", now=5.0)  # everything before 3.0 has left the window
    assert t.shares("f", 5.0) == {"lo": 1.0}
    assert t.shares("f", 10.0) == {}
    assert t.shares("other", 10.0) == {}


def test_allowed_keeps_the_variants_under_their_fraction() -> None:
    t = ShareTracker(window_s=2.0, tolerance=0.05)
    fractions = {"hi": 0.5, "lo": 0.5}
    for i in range(10):
        t.record("f", "hi", now=i * 0.01)
    assert t.allowed("f", fractions, [HI, LO], 0.1) == [LO]  # hi has had all of them
    for i in range(10):
        t.record("f", "lo", now=0.2 + i * 0.01)
    assert t.allowed("f", fractions, [HI, LO], 0.3) == [HI, LO]  # 50/50: both under 0.55
    # a variant the plan gives no share is never allowed while another has one
    assert t.allowed("f", fractions, [HI, MID, LO], 0.3) == [HI, LO]
    # nothing planned for any option (e.g. the plan's variants are all loading): all of them
    assert t.allowed("f", fractions, [MID], 0.3) == [MID]
    assert t.allowed("f", {}, [HI, MID], 0.3) == [HI, MID]


def test_when_every_variant_is_over_its_share_the_one_furthest_below_is_allowed() -> None:
    t = ShareTracker(window_s=2.0, tolerance=0.0)
    for v in ("hi", "hi", "lo"):
        t.record("f", v, now=0.0)
    # hi 2/3 vs 0.6 (+0.07), lo 1/3 vs 0.3 (+0.03): lo is the closer to its share
    assert t.allowed("f", {"hi": 0.6, "lo": 0.3}, [HI, LO], 0.0) == [LO]


def test_split_converges_to_the_fractions() -> None:
    t = ShareTracker(window_s=2.0, seed=1)
    fractions = {"hi": 0.2, "mid": 0.3, "lo": 0.5}
    got: Counter[str] = Counter()
    for i in range(5000):
        now = i * 0.001
        allowed = t.allowed("f", fractions, [HI, MID, LO], now)
        chosen, _ = weighted_choice(allowed, fractions, t.rng.random())
        t.record("f", allowed[chosen].variant, now)
        got[allowed[chosen].variant] += 1
    for v, f in fractions.items():
        assert got[v] / 5000 == pytest.approx(f, abs=0.03)


def test_weighted_choice() -> None:
    fractions = {"hi": 0.25, "lo": 0.75}
    assert weighted_choice([HI, LO], fractions, 0.0)[0] == 0
    assert weighted_choice([HI, LO], fractions, 0.2499)[0] == 0
    assert weighted_choice([HI, LO], fractions, 0.25)[0] == 1
    assert weighted_choice([HI, LO], fractions, 0.9999)[1] == (0.25, 0.75)
    # no fractions: the most accurate, whatever the draw
    assert weighted_choice([LO, HI, MID], {}, 0.1) == (1, (0.0, 1.0, 0.0))
    # an option without a fraction is never drawn
    rng = random.Random(3)
    assert all(weighted_choice([MID, LO], {"lo": 1.0}, rng.random())[0] == 1 for _ in range(200))


def test_shed_draws_the_share() -> None:
    t = ShareTracker(seed=4)
    assert not any(t.shed(0.0) for _ in range(100))
    assert sum(t.shed(0.3) for _ in range(10_000)) / 10_000 == pytest.approx(0.3, abs=0.02)


def test_memory_stays_bounded_by_the_window_when_no_fractions_are_asked_for() -> None:
    # The gateway records every family request; with no scaled plan nothing asks for shares, and
    # a day of traffic must not pile up in the tracker.
    tracker = ShareTracker(window_s=2.0)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):  # 100,000 s at one request a second
            tracker.record("f", "v1" if i % 2 else "v2", float(i))
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert held < 64 * 1024, f"{held} bytes held for a 2 s window"
    assert tracker.shares("f", 100_000.0) == {"v2": 0.5, "v1": 0.5}  # the last 2 s: requests 99,998 and 99,999
