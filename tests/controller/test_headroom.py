"""The MILP's headroom follows the deadlines the mesh meets: up fast on misses, back slowly."""

from __future__ import annotations

import pytest

from controller.headroom import AdaptiveHeadroom


def test_misses_raise_the_headroom_by_their_share_up_to_the_ceiling() -> None:
    h = AdaptiveHeadroom(base=1.2, ceiling=3.0, miss_target=0.01, min_step=1.1)
    assert h.beta == 1.2
    assert h.update(1000, 300) == pytest.approx(1.2 * 1.3)  # 30 % missed: +30 %
    assert h.update(1000, 20) == pytest.approx(1.2 * 1.3 * 1.1)  # 2 %: at least the minimum step
    for _ in range(20):
        h.update(1000, 900)
    assert h.beta == 3.0


def test_it_eases_back_to_base_only_while_misses_are_rare() -> None:
    h = AdaptiveHeadroom(base=1.2, ceiling=3.0, miss_target=0.01, ease=0.98)
    h.update(1000, 500)
    raised = h.beta
    assert h.update(1000, 5) == raised  # 0.5 %: under target, but not quiet enough to ease
    assert h.update(1000, 0) == pytest.approx(raised * 0.98)
    for _ in range(100):
        h.update(1000, 0)
    assert h.beta == 1.2  # never below the configured headroom


def test_a_window_with_few_requests_says_nothing() -> None:
    h = AdaptiveHeadroom(min_requests=50)
    assert h.update(10, 10) == h.base
    h.update(1000, 500)
    raised = h.beta
    assert h.update(0, 0) == raised


@pytest.mark.parametrize("kwargs", [{"base": 0.9}, {"base": 2.0, "ceiling": 1.5}, {"miss_target": 0.0},
                                    {"min_step": 0.9}, {"ease": 1.5}])
def test_nonsense_settings_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        AdaptiveHeadroom(**kwargs)
