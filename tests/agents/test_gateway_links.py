"""A worker's gateway links follow the controller's latest list, within a bound."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agents.gateway_links import MAX_ADDRESS_LEN, gateway_changes


def test_new_gateways_are_connected_and_departed_ones_closed() -> None:
    connect, close = gateway_changes({"tcp://a:1", "tcp://b:1"}, ["tcp://b:1", "tcp://c:1"])
    assert (connect, close) == (["tcp://c:1"], ["tcp://a:1"])


def test_a_flood_of_announced_addresses_is_cut_to_the_bound() -> None:
    flood = [f"tcp://g{i}:1" for i in range(10_000)] + ["", "x" * (MAX_ADDRESS_LEN + 1), "tcp://g0:1"]
    connect, close = gateway_changes(set(), flood, max_gateways=64)
    assert connect == flood[:64] and close == []


@given(connected=st.sets(st.text(max_size=5), max_size=10), announced=st.lists(st.text(max_size=5), max_size=100))
def test_applying_the_changes_leaves_exactly_the_kept_announced_addresses(connected, announced) -> None:
    connect, close = gateway_changes(connected, announced, max_gateways=8)
    after = (set(connected) - set(close)) | set(connect)
    assert len(after) <= 8 and after <= set(announced)
    assert not set(connect) & set(connected) and set(close) <= set(connected)
