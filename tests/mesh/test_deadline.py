"""A deadline fixed once and sent as the budget left."""

from __future__ import annotations

import pytest

from mesh.deadline import Deadline


def test_deadline_travels_as_the_budget_left():
    d = Deadline.after(0.2, now=10.0)
    assert d.remaining(10.05) == pytest.approx(0.15)
    assert d.wire_budget_us(10.05, keep_s=0.002) == 148_000
    assert d.wire_budget_us(10.3) == 0 and d.passed(10.3)
    assert Deadline.from_wire(148_000, now=500.0).at == pytest.approx(500.148)
