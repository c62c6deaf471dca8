"""``letmesh plan`` and ``letmesh simulate``: their flags, and dispatch to ``letmesh.capacity`` and
``letmesh.simulator``.

The flags live here, apart from the planning code, so that building the parser (every command,
``--help``) never imports the planner, numpy or scipy; they are imported when a command runs.
"""

from __future__ import annotations

import argparse

from letmesh.arg_types import SECONDS, number, whole
from mesh.batching import POLICIES as BATCHING_POLICIES

# controller.planning.POLICIES, spelled out so the parser does not import the planner (a test
# keeps the two equal).
PLANNER_POLICIES = ("gpulet", "temporal", "whole")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", required=True, metavar="FILE",
                        help="TOML or JSON: [[models]] variant, rate_rps, slo_ms (optional memory_mb); may hold [[devices]]")
    parser.add_argument("--devices", metavar="FILE", help="TOML or JSON: [[devices]] kind, count, capacity (overrides the workload's)")
    parser.add_argument("--profiles", metavar="FILE", help="profile CSV: variant,device_kind,partition,batch,p50_ms,p99_ms")
    parser.add_argument("--colocations", metavar="FILE", help="co-location CSV for the interference model (with --profiles)")
    parser.add_argument("--state-dir", metavar="DIR", help="read measured profiles from the controller's store in DIR")
    parser.add_argument("--interference", choices=("off", "fit"), default=None,
                        help="off, or fit from co-location samples (default: fit when there are enough samples)")
    parser.add_argument("--policy", choices=PLANNER_POLICIES, default="gpulet", help="planning policy (default gpulet)")
    parser.add_argument("--max-batch", type=whole(1), default=32, help="largest batch the planner may choose (default 32)")
    parser.add_argument("--headroom", default="controller",
                        help="plan for more than the workload's rates: controller (default: x1.5 below 125 rps, x1.2 above, "
                             "as the controller does), none, or a factor such as 1.3")
    parser.add_argument("--margin", type=number(0.0, above=True), default=None, help="safety factor on profiled p99 latency (default 1.1)")
    parser.add_argument("--json", metavar="FILE", help="also write every number as JSON to FILE")


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``letmesh plan``."""
    add_common_arguments(parser)
    parser.add_argument("--width", type=whole(1), default=None, help="width of a device bar in characters (default 60)")
    parser.add_argument("--expand", action="store_true", help="one line per device (default: identical devices share a line)")
    parser.add_argument("--no-search", action="store_true", help="skip the devices-needed search")
    parser.add_argument("--compare-policies", action="store_true", help="also report devices needed under every policy")


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``letmesh simulate``."""
    add_common_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--poisson", action="store_true", help="Poisson arrivals at the workload's rates")
    source.add_argument("--trace", metavar="FILE", help="CSV of arrivals with a header: time_s,variant")
    parser.add_argument("--duration-s", type=SECONDS, default=None,
                        help="arrival window: Poisson length (default 60), or where to cut a trace (default: its last arrival)")
    parser.add_argument("--seed", type=int, default=0, help="seed of arrivals and routing (default 0)")
    parser.add_argument("--interference-actual", type=float, default=1.0, metavar="X",
                        help="co-located gpu-lets run X times slower than the plan predicts (default 1, at most 100)")
    parser.add_argument("--max-wait-ms", type=number(0.0), default=0.0,
                        help="the edf batcher's wait for a fuller batch (workers use 0; the other policies decide their own)")
    parser.add_argument("--batching", choices=BATCHING_POLICIES, default="edf",
                        help="the worker's batching policy: edf (default), proteus, aimd or nexus")
    parser.add_argument("--minimal-fleet", action="store_true", help="plan on the devices-needed fleet instead of the given one")
    parser.add_argument("--all-gpulets", action="store_true", help="list every gpu-let in the report")
    parser.add_argument("--show-layout", action="store_true", help="print the layout picture before the results")


def cmd_plan(args: argparse.Namespace) -> int:
    from letmesh.capacity import run_plan

    return run_plan(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from letmesh.simulator import run_simulate

    return run_simulate(args)
