"""Prometheus families for a role's ROUTER endpoints: what their peers sent that was not handed on.

An operator's view of the transport's own decisions: messages dropped because they did not
decode, messages dropped because a second connection claimed a name a live peer holds (two
hosts configured with one id, or a process started twice), and names a newcomer took over
from a holder that was gone (a restarted peer). Read at scrape time on the endpoint's event
loop. Of ours, imports only ``mesh``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.transport import Endpoint


class EndpointCollector(Collector):
    """Counters of the endpoints ``endpoints()`` names (label ``socket``), read when scraped."""

    def __init__(self, endpoints: Callable[[], Mapping[str, Endpoint | None]]) -> None:
        self._endpoints = endpoints

    def collect(self) -> Iterator[Metric]:
        invalid = CounterMetricFamily("letmesh_transport_invalid_messages",
                                      "Messages dropped because they did not decode (malformed frames, "
                                      "sizes past the limits).", labels=["socket"])
        dropped = CounterMetricFamily("letmesh_peer_claims_dropped",
                                      "Messages dropped because their connection claimed a peer name that another, "
                                      "live connection holds: two peers configured with one id, or one started "
                                      "twice.", labels=["socket"])
        taken = CounterMetricFamily("letmesh_peer_takeovers",
                                    "Peer names a new connection took over once the connection holding them was "
                                    "gone (a restarted peer), or from a holder under another peer's key.",
                                    labels=["socket"])
        names = GaugeMetricFamily("letmesh_peer_names", "Peer names this socket routes to.", labels=["socket"])
        for label, endpoint in sorted(self._endpoints().items()):
            if endpoint is None:
                continue
            invalid.add_metric([label], endpoint.protocol_errors)
            if endpoint.routes is not None:
                dropped.add_metric([label], endpoint.routes.dropped)
                taken.add_metric([label], endpoint.routes.taken_over)
                names.add_metric([label], len(endpoint.routes))
        yield from (invalid, dropped, taken, names)
