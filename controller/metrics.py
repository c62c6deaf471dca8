"""The controller's Prometheus metrics: what its registry and plan know, read at scrape time.

gpu-let sizes and each device's allocated share, workers per state, agents alive, demand, the
accuracy-scaling headroom, the planned effective accuracy and the memory reserved per variant are
read from the live objects when scraped; re-plans are counted by the layout manager and their
duration observed by the actor. One ``CollectorRegistry`` per controller (never the process-global
one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.demand import DemandTracker
from controller.layout_manager import HOLDING, LayoutManager
from controller.registry import Registry
from protocol.types import WorkerState

# Planning runs take from milliseconds (gpu-let packing) to the MILP's time limit and beyond.
PLAN_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class ControllerMetrics(Collector):
    """Collector over one controller's state; call from the controller's event loop only."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.plan_duration = Histogram("letmesh_plan_duration_seconds",
                                       "Time a re-plan took to compute (planner, and the accuracy-scaling MILP when it "
                                       "ran).", buckets=PLAN_BUCKETS_S, registry=self.registry)
        self._source: tuple[Registry, LayoutManager, DemandTracker, Callable[[], float]] | None = None
        self.registry.register(self)

    def bind(self, registry: Registry, layout: LayoutManager, demand: DemandTracker,
             monotonic: Callable[[], float]) -> None:
        self._source = (registry, layout, demand, monotonic)

    def collect(self) -> Iterator[Metric]:
        if self._source is None:
            return
        reg, layout, demand, monotonic = self._source
        now = monotonic()

        agents = GaugeMetricFamily("letmesh_agents", "Agents by state: alive, suspect (a worker fell silent), lost.",
                                   labels=["state"])
        states = {"alive": 0, "suspect": 0, "lost": 0}
        for agent_id, record in reg.agents.items():
            if not reg.agent_alive(agent_id, now):
                states["lost"] += 1
            else:
                states["suspect" if record.suspect else "alive"] += 1
        for state, n in states.items():
            agents.add_metric([state], n)
        yield agents
        yield GaugeMetricFamily("letmesh_gateways", "Gateways registered.", value=len(reg.gateways))

        workers = GaugeMetricFamily("letmesh_workers", "Workers by state.", labels=["state"])
        counts = dict.fromkeys(WorkerState, 0)
        for w in reg.workers.values():
            counts[w.state] += 1
        for state, n in counts.items():
            workers.add_metric([state.value], n)
        yield workers

        capacity = GaugeMetricFamily("letmesh_device_capacity",
                                     "What a device offers: CPU cores, or 100 (MPS percent) for a GPU.",
                                     labels=["agent", "device", "kind"])
        allocated = GaugeMetricFamily("letmesh_device_allocated_ratio",
                                      "Share of a device held by gpu-lets of starting, ready or restarting workers "
                                      "(above 1 while a re-plan's new workers start beside the old).",
                                      labels=["agent", "device"])
        size = GaugeMetricFamily("letmesh_gpulet_size", "A worker's gpu-let: cores, or MPS percent on a GPU.",
                                 labels=["agent", "device", "worker", "kind"])
        planned = GaugeMetricFamily("letmesh_gpulet_planned_rps", "The request rate the plan routes to a worker.",
                                    labels=["worker", "variant"])
        slowdown = GaugeMetricFamily("letmesh_worker_slowdown",
                                     "Compute time a worker observes over its warm-up measurement (1 = as profiled).",
                                     labels=["worker", "variant"])
        held: dict[tuple[str, str], int] = {}
        for w in sorted(reg.workers.values(), key=lambda w: w.plan.worker_id):
            p, worker_id = w.plan.partition, w.plan.worker_id
            if w.in_plan and w.state in HOLDING:
                share = p.mps_percent if p.kind == "cuda" else len(p.cores)
                size.add_metric([w.plan.agent_id, p.device_id, worker_id, p.kind], share)
                held[(w.plan.agent_id, p.device_id)] = held.get((w.plan.agent_id, p.device_id), 0) + share
                # A worker leaving, lost or crashed is routed nothing, whatever rate a move last gave it.
                for variant, rate in sorted(reg.route_rates.get(worker_id, {}).items()):
                    planned.add_metric([worker_id, variant], rate)
            for variant, ratio in sorted(w.slowdown.items()):
                slowdown.add_metric([worker_id, variant], ratio)
        for agent_id, record in sorted(reg.agents.items()):
            if not reg.agent_alive(agent_id, now):
                continue
            for d in record.devices:
                total = 100 if d.kind == "cuda" else d.cores
                capacity.add_metric([agent_id, d.device_id, d.kind], total)
                allocated.add_metric([agent_id, d.device_id], held.get((agent_id, d.device_id), 0) / max(total, 1))
        yield from (capacity, allocated, size, planned, slowdown, self._planned_busy(layout, reg, now))

        yield CounterMetricFamily("letmesh_replans", "Re-plans that changed the layout (a move began).",
                                  value=layout.replans)
        yield GaugeMetricFamily("letmesh_accuracy_scaling_active",
                                "1 while the plan serves cheaper variants because demand exceeds capacity.",
                                value=1.0 if layout.scaled is not None else 0.0)
        yield GaugeMetricFamily("letmesh_accuracy_scaling_headroom",
                                "Capacity headroom (beta) the accuracy-scaling MILP plans with; it rises while "
                                "deadlines are missed.", value=layout.headroom.beta)
        effective = GaugeMetricFamily("letmesh_planned_effective_accuracy",
                                      "Accuracy of a family's requests as planned: the share of each variant times its "
                                      "accuracy (the most accurate variant's when not scaling).", labels=["family"])
        share = GaugeMetricFamily("letmesh_planned_variant_share", "Share of a family's requests the plan gives a "
                                  "variant while scaling accuracy.", labels=["family", "variant"])
        shed = GaugeMetricFamily("letmesh_planned_shed_ratio", "Share of a family's demand the plan turns away.",
                                 labels=["family"])
        families: dict[str, dict[str, float]] = {}
        for v in reg.variants.values():
            families.setdefault(v.family, {})[v.name] = v.accuracy
        for family, accuracy in sorted(families.items()):
            fractions = reg.family_fractions.get(family)
            if fractions:
                effective.add_metric([family], sum(f * accuracy.get(v, 0.0) for v, f in fractions.items()))
                for variant, f in sorted(fractions.items()):
                    share.add_metric([family, variant], f)
            else:
                effective.add_metric([family], max(accuracy.values()))
            shed.add_metric([family], reg.shed.get(family, 0.0))
        yield from (effective, share, shed)

        rates = GaugeMetricFamily("letmesh_demand_rps", "Request rate per variant the gateways report.",
                                  labels=["variant"])
        for variant, rate in demand.rates().items():
            rates.add_metric([variant], rate)
        yield rates
        yield GaugeMetricFamily("letmesh_unavailable_variants", "Repository variants set aside (failed to load).",
                                value=len(reg.unavailable))
        reserved = GaugeMetricFamily("letmesh_variant_memory_reserved_bytes",
                                     "Memory the planner reserves on a device for each worker serving a variant: the "
                                     "manifest's memory_mb, else its weights and one batch of inputs and outputs (a "
                                     "floor: compare the agents' letmesh_agent_worker_peak_resident_bytes).",
                                     labels=["variant"])
        for name, v in sorted(reg.variants.items()):
            reserved.add_metric([name], v.memory_need())
        yield reserved
        overhead = GaugeMetricFamily("letmesh_worker_memory_overhead_bytes",
                                     "Memory the planner counts for each worker on a device beyond its variants' "
                                     "needs: the most memory of its own a ready worker there held above them at its "
                                     "peak (workers on CPU devices report it).", labels=["agent", "device"])
        for place, n in sorted(layout.worker_memory.known().items()):
            if "/" in place:  # the per-kind figures stand in for devices not reported yet
                overhead.add_metric(place.split("/", 1), n)
        yield overhead

    @staticmethod
    def _planned_busy(layout: LayoutManager, reg: Registry, now: float) -> GaugeMetricFamily:
        """How busy the gpu-let planner expects each device: every gpu-let's share of the device
        times the part of its duty cycle its round of batches takes. Absent while the plan scales
        accuracy (the MILP sizes by rates, not duty cycles) or before the first plan."""
        busy = GaugeMetricFamily("letmesh_device_planned_busy_ratio",
                                 "Share of a device the gpu-let plan expects busy (gpu-let size x round / duty cycle).",
                                 labels=["agent", "device"])
        if layout.current is None or layout.scaled is not None:
            return busy
        totals: dict[str, float] = {}
        for g in layout.current.plan.gpulets:
            if g.duty_cycle_ms > 0:
                totals[g.device_id] = totals.get(g.device_id, 0.0) + g.size * min(1.0, g.round_ms / g.duty_cycle_ms)
        for agent_id, record in sorted(reg.agents.items()):
            if not reg.agent_alive(agent_id, now):
                continue
            for d in record.devices:
                slot = f"{agent_id}/{d.device_id}"  # how controller.replanner names a device to the planner
                if slot in totals:
                    busy.add_metric([agent_id, d.device_id], totals[slot] / max(100 if d.kind == "cuda" else d.cores, 1))
        return busy
