"""The device agent's Prometheus metrics: its workers and devices, read at scrape time.

Everything comes from the agent actor's own state (cheap to read: a few dicts) and, for each
running worker, two small /proc files (its memory and CPU time), on the actor's event loop. One
``CollectorRegistry`` per agent (never the process-global one).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agents import artifact_cache
from agents.proc_usage import process_usage

if TYPE_CHECKING:
    from agents.agent_actor import AgentActor


class AgentMetrics(Collector):
    """Collector over one agent actor; call from the actor's event loop only."""

    def __init__(self, agent: AgentActor) -> None:
        self.agent = agent
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        states = {"running": 0, "stopping": 0, "down": 0}
        size = GaugeMetricFamily("letmesh_agent_gpulet_size", "A worker's gpu-let: cores, or MPS percent on a GPU.",
                                 labels=["worker", "device", "kind"])
        resident = GaugeMetricFamily("letmesh_agent_worker_resident_bytes", "Host memory a worker process holds now "
                                     "(resident set; GPU memory not included).", labels=["worker"])
        peak = GaugeMetricFamily("letmesh_agent_worker_peak_resident_bytes", "The most host memory a worker process "
                                 "has held since it started (peak resident set).", labels=["worker"])
        cpu = CounterMetricFamily("letmesh_agent_worker_cpu_seconds", "CPU time a worker process has used, all its "
                                  "threads (user and system); restarts with the process.", labels=["worker"])
        for worker_id, w in sorted(a.managed().items()):
            alive = w.proc is not None and w.proc.returncode is None
            states["stopping" if w.stopping else "running" if alive else "down"] += 1
            p = w.cmd.partition
            size.add_metric([worker_id, p.device_id, p.kind], p.mps_percent if p.kind == "cuda" else len(p.cores))
            usage = process_usage(w.proc.pid) if alive and w.proc is not None else None
            if usage is not None:
                resident.add_metric([worker_id], usage.resident_bytes)
                peak.add_metric([worker_id], usage.peak_resident_bytes)
                cpu.add_metric([worker_id], usage.cpu_seconds)
        workers = GaugeMetricFamily("letmesh_agent_workers", "Worker processes by state: running, stopping (asked to "
                                    "stop, draining), down (exited, to be restarted).", labels=["state"])
        for state, n in states.items():
            workers.add_metric([state], n)
        yield workers
        yield from (size, resident, peak, cpu)
        yield CounterMetricFamily("letmesh_agent_worker_crashes", "Worker processes that exited without being asked.",
                                  value=a.worker_crashes)
        yield CounterMetricFamily("letmesh_agent_worker_restarts", "Crashed workers started again.",
                                  value=a.worker_restarts)
        yield GaugeMetricFamily("letmesh_agent_registered", "1 while the controller has answered this agent's "
                                "registration and not been lost since.", value=1.0 if a.is_registered else 0.0)
        yield CounterMetricFamily("letmesh_agent_registrations", "Registrations sent to the controller.",
                                  value=a.registrations_sent)
        yield GaugeMetricFamily("letmesh_agent_artifact_cache_bytes", "Bytes the artifact cache holds: artifacts and "
                                "their ONNX conversions.", value=artifact_cache.size(a.cache_dir))
        yield CounterMetricFamily("letmesh_agent_artifact_cache_removed", "Cache entries (an artifact, or one ONNX "
                                  "conversion) removed to keep the cache within its bound.", value=a.cache_removed)
        yield GaugeMetricFamily("letmesh_agent_profiling", "1 while a profiling run is in progress.",
                                value=1.0 if a.profiling else 0.0)
        cores = GaugeMetricFamily("letmesh_agent_device_cores", "Cores a device offers (CPU) or its SM count (GPU).",
                                  labels=["device", "kind", "name"])
        memory = GaugeMetricFamily("letmesh_agent_device_memory_bytes", "Memory of a device.",
                                   labels=["device", "kind"])
        for d in a.devices:
            cores.add_metric([d.device_id, d.kind, d.name], d.cores if d.kind != "cuda" else d.sm_count)
            memory.add_metric([d.device_id, d.kind], d.memory_bytes)
        yield from (cores, memory)
