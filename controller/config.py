"""The controller's one frozen config object (defaults < TOML [controller] < LETMESH_CONTROLLER_* < flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    # The address workers dial for artifacts, when it differs from bind.
    advertise: str = ""
    state_dir: str = ".letmesh"
    repository: str = ""
    heartbeat_interval_s: float = 0.5
    missed_heartbeats: int = 4
    cpu_cores_per_partition: int = 1
    max_partitions_per_device: int = 8
    stop_drain_s: float = 2.0
    # Online re-planning: "gpulet" (elastic partitioning), "temporal", "whole", or "static" (keep
    # the initial placement). A re-plan waits for profiles and runs at most once a period.
    # The workers' batching policy unless a manifest names one: edf (work-conserving, lowest
    # latency at light load), proteus, aimd or nexus.
    batching: str = "edf"
    planner: str = "gpulet"
    replan_period_s: float = 10.0
    # Accuracy scaling (Proteus): cheaper variants when the fleet cannot carry demand at full accuracy.
    accuracy_scaling: bool = True
    scaling_time_limit_s: float = 2.0
    fast_replan_s: float = 1.0
    scaling_beta: float = 1.2  # capacity headroom the MILP keeps (Proteus: 1.05)
    scaling_horizon_s: float = 2.0  # plan for the demand forecast this far ahead
    scaling_beta_max: float = 5.0  # the headroom rises to at most this while deadlines are missed
    # Plan with the compute slowdown the workers observe (vs the profiles), held this long after
    # a variant's last report; 0 (the default) plans with the profiles alone.
    live_slowdown_hold_s: float = 0.0
    demand_half_life_s: float = 5.0
    demand_history_s: float = 60.0
    worker_start_timeout_s: float = 120.0
    policy_publish_interval_s: float = 1.0
    # Measure (variant, partition, batch) latencies when a device or variant has no profile yet.
    auto_profile: bool = True
    profile_repeats: int = 20
    profile_colocation: bool = True
