"""The gateway's Prometheus metrics: :class:`~gateway.telemetry.Telemetry`'s counters, read at scrape time.

Names follow Triton's ``nv_inference_*`` with ``letmesh_`` in place of ``nv_`` (counters carry
``_total`` on the wire, as every Prometheus client writes them), labelled ``model`` (the name
the client asked for: a family or a variant) and ``variant`` (the one that ran). Then what only
letmesh has: SLO outcomes, goodput, chosen variants, bandit exploration and effective accuracy
per family. Each gateway has its own ``CollectorRegistry`` (never the process-global one), so
several gateways in one process (tests) stay apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.telemetry import RATE_WINDOW_S, Telemetry

MV = ["model", "variant"]


class TelemetryCollector(Collector):
    """Turns a Telemetry's counters into metric families; runs on the event loop that records."""

    def __init__(self, telemetry: Telemetry, gauges: Callable[[], dict[str, tuple[str, float]]] | None = None) -> None:
        self.telemetry = telemetry
        self.gauges = gauges  # the gateway's own state (requests in flight, ...), read at scrape

    def collect(self) -> Iterator[Metric]:
        t = self.telemetry
        success = CounterMetricFamily("letmesh_inference_request_success", "Requests answered 200 (met or late).",
                                      labels=MV)
        failure = CounterMetricFamily("letmesh_inference_request_failure", "Requests answered with an error, by reason.",
                                      labels=[*MV, "reason"])
        count = CounterMetricFamily("letmesh_inference_count", "Inferences performed (a request of n rows counts n).",
                                    labels=MV)
        execs = CounterMetricFamily("letmesh_inference_exec_count",
                                    "Model executions (batches); each request adds rows/batch, so gateways sum to the "
                                    "workers' batch count.", labels=MV)
        request_us = CounterMetricFamily("letmesh_inference_request_duration_us",
                                         "Cumulative end-to-end time of successful requests at the gateway (us).",
                                         labels=MV)
        queue_us = CounterMetricFamily("letmesh_inference_queue_duration_us",
                                       "Cumulative time successful requests waited in worker queues (us).", labels=MV)
        infer_us = CounterMetricFamily("letmesh_inference_compute_infer_duration_us",
                                       "Cumulative model compute time of the batches successful requests ran in (us).",
                                       labels=MV)
        latency = HistogramMetricFamily("letmesh_inference_request_latency_seconds",
                                        "End-to-end latency of successful requests at the gateway.", labels=MV)
        batch = HistogramMetricFamily("letmesh_inference_batch_size",
                                      "Size (rows) of the batch each successful request ran in.", labels=MV)
        for (model, variant), s in sorted(t.series.items()):
            labels = [model, variant]
            for reason, n in sorted(s.failure.items()):
                failure.add_metric([*labels, reason], n)
            if not variant:
                # A family request turned away before a variant was chosen: nothing ran, so only its
                # failures are counted (under variant=""); the other series would be zeros.
                continue
            success.add_metric(labels, s.success)
            count.add_metric(labels, s.inferences)
            execs.add_metric(labels, s.executions)
            request_us.add_metric(labels, s.success_us)
            queue_us.add_metric(labels, s.queue_us)
            infer_us.add_metric(labels, s.compute_infer_us)
            latency.add_metric(labels, s.latency.cumulative(), s.latency.total)
            batch.add_metric(labels, s.batch.cumulative(), s.batch.total)
        yield from (success, failure, count, execs, request_us, queue_us, infer_us, latency, batch)

        slo = CounterMetricFamily("letmesh_slo_requests",
                                  "Requests per family by outcome: met, late (200 after the deadline), deadline_missed "
                                  "(504), shed (503/429), error.", labels=["family", "outcome"])
        chosen = CounterMetricFamily("letmesh_variant_chosen", "Variants the mesh chose for family requests.",
                                     labels=["family", "variant"])
        decisions = CounterMetricFamily("letmesh_bandit_decisions", "Bandit choices per family.", labels=["family"])
        explored = CounterMetricFamily("letmesh_bandit_explorations",
                                       "Bandit choices that were not the policy's most likely variant.",
                                       labels=["family"])
        accuracy = CounterMetricFamily("letmesh_answer_accuracy_sum",
                                       "Sum of the accuracy of the variants that answered (200s); divided by the met "
                                       "and late counts it is the effective accuracy.", labels=["family"])
        for family, f in sorted(t.families.items()):
            for outcome, n in f.outcomes.items():
                slo.add_metric([family, outcome.value], n)
            for variant, n in sorted(f.chosen.items()):
                chosen.add_metric([family, variant], n)
            decisions.add_metric([family], f.decisions)
            explored.add_metric([family], f.explored)
            accuracy.add_metric([family], f.accuracy_sum)
        yield from (slo, chosen, decisions, explored, accuracy)

        goodput = GaugeMetricFamily("letmesh_goodput_rps",
                                    f"Requests per second answered within their deadline, over the last "
                                    f"{RATE_WINDOW_S} s.", labels=["family"])
        effective = GaugeMetricFamily("letmesh_effective_accuracy",
                                      f"Mean accuracy of the variants that answered, over the last {RATE_WINDOW_S} s.",
                                      labels=["family"])
        exploration = GaugeMetricFamily("letmesh_bandit_exploration_rate",
                                        f"Share of bandit choices that explored, over the last {RATE_WINDOW_S} s.",
                                        labels=["family"])
        for family, r in sorted(t.rates().items()):
            goodput.add_metric([family], r["goodput_rps"])
            if not math.isnan(r["effective_accuracy"]):
                effective.add_metric([family], r["effective_accuracy"])
            if not math.isnan(r["exploration"]):
                exploration.add_metric([family], r["exploration"])
        yield from (goodput, effective, exploration)

        yield CounterMetricFamily("letmesh_telemetry_dropped_labels",
                                  "Recordings past the cap on label sets (counted in the window only).",
                                  value=t.dropped_labels)
        if self.gauges is not None:
            for name, (doc, value) in sorted(self.gauges().items()):
                yield GaugeMetricFamily(name, doc, value=value)


def gateway_registry(telemetry: Telemetry,
                     gauges: Callable[[], dict[str, tuple[str, float]]] | None = None) -> CollectorRegistry:
    """A registry of its own holding ``telemetry``'s metrics (and ``gauges``, name -> (help, value))."""
    registry = CollectorRegistry()
    registry.register(TelemetryCollector(telemetry, gauges))
    return registry
