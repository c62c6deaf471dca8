"""Edge checks on client-supplied numbers and headers."""

from __future__ import annotations

import pytest

from gateway.edge import bounded_number, header_length
from gateway.oip import InvalidParameter, MalformedBody


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**16, float("nan"), float("inf"), True, "1", None, [1]])
def test_a_number_outside_its_range_or_not_a_number_is_refused(value) -> None:
    with pytest.raises(InvalidParameter, match="'x'"):
        bounded_number(value, "x", low=0.0, high=1e15)


@pytest.mark.parametrize("value", [0, 1, 10**15, 0.0, 1e15, 2.5])
def test_a_number_in_range_is_a_float(value) -> None:
    out = bounded_number(value, "x", low=0.0, high=1e15)
    assert type(out) is float and out == value


@pytest.mark.parametrize("value, length", [(None, None), ("0", 0), ("128", 128)])
def test_header_length_reads_ascii_digits(value, length) -> None:
    assert header_length(value) == length


@pytest.mark.parametrize("value", ["", "-1", "1.5", "²", "١٢", "１２", "12 ", "9" * 21])
def test_header_length_refuses_anything_else(value) -> None:
    with pytest.raises(MalformedBody) as err:
        header_length(value)
    assert err.value.status == 400
