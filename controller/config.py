"""The controller's one frozen config object (defaults < TOML [controller] < LETMESH_CONTROLLER_* < flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from controller.retention import DecisionRetention
from mesh.config import (Address, NonNegativeFloat, NonNegativeInt, OptionalAddress, Port, PositiveFloat, PositiveInt,
                         Range)

# A capacity headroom factor: 1 keeps none.
AtLeastOne = Annotated[float, Range(ge=1.0)]


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    bind: Address = "tcp://127.0.0.1:5555"
    # The address workers dial for artifacts, when it differs from bind.
    advertise: OptionalAddress = ""
    state_dir: str = ".letmesh"
    repository: str = ""
    heartbeat_interval_s: PositiveFloat = 0.5
    missed_heartbeats: PositiveInt = 4
    cpu_cores_per_partition: PositiveInt = 1
    max_partitions_per_device: PositiveInt = 8
    stop_drain_s: NonNegativeFloat = 2.0
    # Online re-planning: "gpulet" (elastic partitioning), "temporal", "whole", or "static" (keep
    # the initial placement). A re-plan waits for profiles and runs at most once a period.
    # The workers' batching policy unless a manifest names one: edf (work-conserving, lowest
    # latency at light load), proteus, aimd or nexus.
    batching: Literal["edf", "proteus", "aimd", "nexus"] = "edf"
    planner: Literal["gpulet", "temporal", "whole", "static"] = "gpulet"
    replan_period_s: PositiveFloat = 10.0
    # Accuracy scaling (Proteus): cheaper variants when the fleet cannot carry demand at full accuracy.
    accuracy_scaling: bool = True
    scaling_time_limit_s: PositiveFloat = 2.0
    fast_replan_s: NonNegativeFloat = 1.0
    scaling_beta: AtLeastOne = 1.2  # capacity headroom the MILP keeps (Proteus: 1.05)
    scaling_horizon_s: NonNegativeFloat = 2.0  # plan for the demand forecast this far ahead
    scaling_beta_max: AtLeastOne = 5.0  # the headroom rises to at most this while deadlines are missed
    # Plan with the compute slowdown the workers observe (vs the profiles), held this long after
    # a variant's last report; 0 (the default) plans with the profiles alone.
    live_slowdown_hold_s: NonNegativeFloat = 0.0
    demand_half_life_s: PositiveFloat = 5.0
    demand_history_s: PositiveFloat = 60.0
    worker_start_timeout_s: PositiveFloat = 120.0
    # A healing control plane: no layout change for a demand drift within min_layout_dwell_s of
    # the last one (a loss, an operator's re-plan or a rise past capacity is not held back); a
    # re-plan for agents still away waits rejoin_settle_s after another agent (re)joins, so a
    # healed partition does not move everything onto the first agent back; a lost agent and its
    # workers are shown as LOST and forgotten after lost_agent_forget_s.
    min_layout_dwell_s: NonNegativeFloat = 30.0
    rejoin_settle_s: NonNegativeFloat = 5.0
    lost_agent_forget_s: NonNegativeFloat = 300.0
    policy_publish_interval_s: PositiveFloat = 1.0
    # Prometheus /metrics on this HTTP port (0: off) and address.
    metrics_port: Port = 0
    metrics_host: str = "127.0.0.1"
    # Measure (variant, partition, batch) latencies when a device or variant has no profile yet.
    auto_profile: bool = True
    profile_repeats: PositiveInt = 20
    profile_colocation: bool = True
    # What a CPU worker process is taken to hold beyond its variants' needs (its runtime: torch and
    # ONNX Runtime took 150-165 MiB of a worker's own here) until the workers report their peaks.
    # The start-up placement and the planner count it against a device's memory; 0: nothing.
    cpu_worker_memory_mb: NonNegativeInt = 200
    # Keys (letmesh keys): a directory makes every link CURVE-encrypted and authenticated.
    keys_dir: str = ""
    # Allow plaintext on a non-loopback address when no keys are given.
    insecure: bool = False
    # Socket-level liveness of links: ZMTP heartbeat, the silence after which a link is closed,
    # and the longest wait between redials.
    link_heartbeat_s: PositiveFloat = 1.0
    link_timeout_s: PositiveFloat = 3.0
    link_reconnect_max_s: PositiveFloat = 2.0
    # Decision-log retention in the SQLite state (state_dir/controller.sqlite3): decisions older
    # than decision_log_max_age_s are deleted, and the oldest go whenever the file's data would
    # pass decision_log_max_bytes (one logged request to a family takes ~800 bytes) or the log
    # passes decision_log_max_records. Checked every decision_log_check_s and after every few
    # thousand new records.
    decision_log_max_age_s: float = 7 * 86400.0
    decision_log_max_bytes: int = 256 * 2**20
    decision_log_max_records: int = 500_000
    decision_log_check_s: float = 60.0

    def __post_init__(self) -> None:
        self.decision_retention()  # a retention that keeps nothing is refused at load, by name

    def profiling_processes(self) -> int:
        """Processes a device's profiling run keeps beside its workers at start: the one measuring,
        and for co-locations a co-runner; none when profiling waits for an operator."""
        return (2 if self.profile_colocation else 1) if self.auto_profile else 0

    def decision_retention(self) -> DecisionRetention:
        return DecisionRetention(max_age_s=self.decision_log_max_age_s, max_bytes=self.decision_log_max_bytes,
                                 max_records=self.decision_log_max_records,
                                 check_interval_s=self.decision_log_check_s)
