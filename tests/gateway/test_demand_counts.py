"""The demand a gateway reports: each tally taken once, then started afresh."""

from gateway.demand_counts import DemandCounts


def test_each_report_carries_the_requests_since_the_last_one_and_no_more() -> None:
    d = DemandCounts()
    for variant in ("a", "a", "b"):
        d.request(variant)
    d.miss("a")
    d.naming("b")
    assert d.take() == ({"a": 2, "b": 1}, {"a": 1}, {"b": 1})
    assert d.take() == ({}, {}, {}), "a report is never counted twice"
