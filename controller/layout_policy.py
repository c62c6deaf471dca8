"""The layout manager's settings and the record of each re-plan it began (for the status reply)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LayoutPolicy:
    policy: str = "gpulet"  # or "temporal", "whole"; "static" keeps the initial placement
    replan_period_s: float = 10.0
    drain_s: float = 2.0
    start_timeout_s: float = 120.0
    floor_rps: float = 1.0
    # Accuracy scaling: when the full-accuracy plan leaves demand unserved, solve the MILP.
    accuracy_scaling: bool = True
    scaling_time_limit_s: float = 2.0
    fast_replan_s: float = 1.0  # a demand rise re-plans this soon, whatever the period
    # The MILP's capacity headroom (the beta ladder starts here) and how far ahead it plans: a
    # new plan needs a solve, worker starts and a drain before it carries anything, and the
    # demand forecast over that time (its rise extrapolated) is what it must carry then.
    scaling_beta: float = 1.2
    scaling_horizon_s: float = 2.0
    # The headroom rises (up to this) while requests miss their deadlines, see controller.headroom;
    # equal to scaling_beta keeps it fixed.
    scaling_beta_max: float = 5.0
    # Plan with the slowdown the workers measure now (observed vs profiled compute time), held
    # this long after the last worker of a variant reported it; 0 plans with the profiles alone.
    # Off by default: the figure moves with the operating point (a variant measured while it
    # carried a small share looks faster than it will be carrying all), and plans chase it.
    live_slowdown_hold_s: float = 0.0
    # No layout change for a demand drift (a fall, or a rise the plan still carries) within this
    # long of the last one; a loss, an operator's re-plan and a rise past capacity are not held.
    min_layout_dwell_s: float = 30.0
    # After an agent (re)joins, a re-plan for workers of agents still away waits this long.
    rejoin_settle_s: float = 5.0
    # What a CPU worker is taken to hold beyond its variants' needs until workers have reported
    # (``controller.worker_memory``); 0: nothing.
    cpu_worker_memory_bytes: int = 0


# Re-plans remembered for the status reply (and the gateways' dashboards).
REPLAN_HISTORY = 20


@dataclass(slots=True)
class ReplanEntry:
    """A re-plan this manager made (``at`` on its monotonic clock); ``finished`` once the move is
    done (at once for one that kept every worker: only the routing split followed the plan)."""

    at: float
    reason: str
    policy: str
    kept: int
    started: int
    retired: int
    scaled: bool
    effective_accuracy: float
    shed: dict[str, float]
    finished: bool = False
