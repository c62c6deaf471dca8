"""Discrete-event simulation of a plan: ``letmesh simulate`` replays arrivals through the gpu-lets
a plan lays out, with the workers' own batching code, and reports SLO attainment and utilisation.
Arrivals (Poisson streams or a trace file) come from :mod:`letmesh.arrivals`.

The core (:func:`simulate`) is pure: a heap of events on a simulated clock, seeded randomness, no
asyncio and no sleeping. Each gpu-let is a server holding one ``Batcher`` per assigned
variant and serving them earliest-head-deadline first, exactly as ``agents.worker`` does. A CLI
module: may import every package of ours.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import random
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.planning import Demand, LatencyModel, Plan
from letmesh.capacity import (
    Setup,
    coverage_warnings,
    headroom_note,
    layout_picture,
    load_setup,
    needed_summary,
    plan_json,
    write_json,
)
from letmesh.arrivals import poisson_arrivals, read_trace
from letmesh.capacity_inputs import CapacityError, fleet
from mesh.batching import Batcher, Queued, make_batcher, serving_options
from mesh.scheduler import GpuletScheduler
from mesh.slowdown import SlowdownTracker, slowed

DEADLINE_SLACK_S = 1e-9  # a batch the batcher scheduled to end on its deadline counts as on time
LISTED_GPULETS = 24  # the report lists every gpu-let up to this many, else the busiest and idlest


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VariantStats:
    """Per variant. Every request ends in exactly one of: within SLO, served late, dropped (the
    batcher answered it "late" as hopeless), rejected (queue full) or unrouted (no gpu-let)."""

    variant: str
    slo_ms: float
    requests: int
    within_slo: int
    served_late: int
    dropped: int
    rejected: int
    unrouted: int
    p50_ms: float | None  # latency of served requests (None when none was served)
    p99_ms: float | None

    @property
    def served(self) -> int:
        return self.within_slo + self.served_late

    @property
    def attainment(self) -> float | None:
        """Requests answered within the SLO over requests; None when there was none."""
        return self.within_slo / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class GpuLetStats:
    index: int  # into Plan.gpulets
    device_id: str
    size: int
    variants: tuple[str, ...]
    batches: int
    served: int
    busy_s: float  # within the window
    utilisation: float  # busy_s / window
    planned_utilisation: float  # the plan's round time / duty cycle
    service_factor: float  # actual service time / the batcher's prediction

    @property
    def mean_batch(self) -> float:
        return self.served / self.batches if self.batches else 0.0


@dataclass(frozen=True, slots=True)
class SimulationResult:
    window_s: float
    variants: tuple[VariantStats, ...]
    gpulets: tuple[GpuLetStats, ...]
    p50_ms: float | None
    p99_ms: float | None
    interference_actual: float
    end_s: float  # when the last request left (the queues drain after the window)

    @property
    def requests(self) -> int:
        return sum(v.requests for v in self.variants)

    @property
    def within_slo(self) -> int:
        return sum(v.within_slo for v in self.variants)

    @property
    def attainment(self) -> float | None:
        """Requests answered within their SLO over all requests; None when there was none."""
        return self.within_slo / self.requests if self.requests else None

    @property
    def goodput_rps(self) -> float:
        return self.within_slo / self.window_s

    @property
    def throughput_rps(self) -> float:
        return sum(v.served for v in self.variants) / self.window_s

    @property
    def drop_fraction(self) -> float:
        lost = sum(v.dropped + v.rejected + v.unrouted for v in self.variants)
        return lost / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s, "end_s": self.end_s, "requests": self.requests, "within_slo": self.within_slo,
            "attainment": self.attainment, "goodput_rps": self.goodput_rps, "throughput_rps": self.throughput_rps,
            "drop_fraction": self.drop_fraction, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "interference_actual": self.interference_actual,
            "variants": [{"variant": v.variant, "slo_ms": v.slo_ms, "requests": v.requests, "within_slo": v.within_slo,
                          "served_late": v.served_late, "dropped": v.dropped, "rejected": v.rejected, "unrouted": v.unrouted,
                          "attainment": v.attainment, "goodput_rps": v.within_slo / self.window_s,
                          "p50_ms": v.p50_ms, "p99_ms": v.p99_ms} for v in self.variants],
            "gpulets": [{"index": g.index, "device_id": g.device_id, "size": g.size, "variants": list(g.variants),
                         "batches": g.batches, "served": g.served, "mean_batch": g.mean_batch, "busy_s": g.busy_s,
                         "utilisation": g.utilisation, "planned_utilisation": g.planned_utilisation,
                         "service_factor": g.service_factor} for g in self.gpulets],
        }


# --- the simulation ------------------------------------------------------------------------------


MAX_INTERFERENCE = 100.0  # --interference-actual: slower than this is no co-location but a broken device


class _Server:
    """One gpu-let: the worker's scheduler (variants added in name order) and its clock state."""

    __slots__ = ("scheduler", "busy", "busy_s", "batches", "served", "running", "service_s", "curve_s", "slowdown",
                 "started", "token")

    def __init__(self, batchers: list[tuple[int, Batcher]], service_s: dict[int, list[float]],
                 curve_s: dict[int, list[float]], slowdown: dict[int, SlowdownTracker]) -> None:
        self.scheduler: GpuletScheduler[int] = GpuletScheduler(dict(batchers))
        self.service_s = service_s  # variant index -> actual seconds of a batch, indexed by size
        self.curve_s = curve_s  # variant index -> the curve the batcher starts from, indexed by size
        self.slowdown = slowdown  # variant index -> what served batches show against that curve
        self.busy = False
        self.running: tuple[int, tuple[Queued, ...]] | None = None
        self.started = 0.0
        self.token = 0  # bumps invalidate pending wake-ups
        self.busy_s = 0.0
        self.batches = 0
        self.served = 0


def _shares_device(result: Plan) -> list[bool]:
    count: dict[str, int] = {}
    for g in result.gpulets:
        count[g.device_id] = count.get(g.device_id, 0) + 1
    return [count[g.device_id] > 1 for g in result.gpulets]


def simulate(
    result: Plan,
    demands: Sequence[Demand],
    latency: LatencyModel,
    arrivals: Iterable[tuple[float, int]],
    *,
    window_s: float,
    seed: int = 0,
    interference_actual: float = 1.0,
    max_wait_s: float = 0.0,
    max_queue: int = 10_000,
    batching: str = "edf",
) -> SimulationResult:
    """Replay ``arrivals`` ((time_s, index into ``demands``), in time order) through ``result``.

    A request goes to one of its variant's gpu-lets, drawn by the plan's routing weights with a
    generator seeded by ``seed``; its deadline is arrival + SLO. A gpu-let's batchers predict a
    batch of b as the profiled latency on its partition (margin in) × the plan's predicted
    slowdown; the batch then takes that × ``interference_actual`` on gpu-lets that share their
    device (the slowdown the planner did not foresee), the prediction elsewhere. Rates divide by
    ``window_s``; utilisation counts busy time inside it.
    """
    if not window_s > 0:
        raise ValueError("window_s must be positive")
    if not (math.isfinite(interference_actual) and interference_actual > 0):
        raise ValueError("interference_actual must be a positive finite number")
    names = [d.variant for d in demands]
    index = {v: i for i, v in enumerate(names)}
    slo_s = [d.slo_ms / 1000.0 for d in demands]
    shared = _shares_device(result)
    servers: list[_Server] = []
    for gi, g in enumerate(result.gpulets):
        factor = interference_actual if shared[gi] else 1.0
        batchers, service, curves, trackers = [], {}, {}, {}
        for a in sorted(g.assignments, key=lambda a: a.variant):
            vi = index.get(a.variant)
            if vi is None:
                continue
            curve = latency.curve(a.variant, g.kind, g.size, a.batch)
            predicted = curves[vi] = [0.0] + [ms * g.predicted_slowdown / 1000.0 for ms in curve]
            service[vi] = [s * factor for s in predicted]
            trackers[vi] = SlowdownTracker()
            options = {"max_wait_s": max_wait_s} if batching == "edf" else {}
            # As the worker does: the curve, raised by the slowdown its served batches show.
            batchers.append((vi, make_batcher(batching, max_batch=a.batch, latency_s=slowed(predicted.__getitem__, trackers[vi]),
                                              max_queue=max_queue, **options, **serving_options(batching))))
        servers.append(_Server(batchers, service, curves, trackers))
    # routing: variant index -> (cumulative weights, server indices)
    routes: list[tuple[list[float], list[int]] | None] = [None] * len(names)
    for variant, weights in result.routing_weights().items():
        vi = index.get(variant)
        if vi is None or not weights:
            continue
        cum, acc, targets = [], 0.0, []
        for gi, w in weights.items():
            acc += w
            cum.append(acc)
            targets.append(gi)
        cum[-1] = float("inf")  # rounding never routes past the last gpu-let
        routes[vi] = (cum, targets)

    n = len(names)
    requests, within, late_served, dropped, rejected, unrouted = ([0] * n for _ in range(6))
    latencies = [array("d") for _ in range(n)]
    heap: list[tuple[float, int, int, int]] = []  # (time, seq, server, token); token -1: a batch completes
    seq = 0
    route_rng = random.Random(f"{seed}/routing")
    uniform = route_rng.random
    push, pop = heapq.heappush, heapq.heappop

    def step(si: int, s: _Server, now: float) -> None:
        """The worker's scheduling step (mesh.scheduler), on the simulated clock."""
        nonlocal seq
        decided = s.scheduler.step(now)
        for vi, _ in decided.late:
            dropped[vi] += 1
        if decided.batch:
            vi, batch = decided.key, decided.batch
            s.busy = True
            s.running = (vi, batch)
            s.started = now
            seq += 1
            push(heap, (now + s.service_s[vi][len(batch)], seq, si, -1))
            return
        s.busy = False
        if decided.wake_at is not None:
            s.token += 1
            seq += 1
            push(heap, (decided.wake_at, seq, si, s.token))

    def finish(s: _Server, now: float) -> None:
        vi, batch = s.running
        s.running = None
        s.busy_s += max(0.0, min(now, window_s) - min(s.started, window_s))
        s.batches += 1
        s.served += len(batch)
        record = latencies[vi].append
        ok = 0
        for item in batch:
            record(now - item.arrived)
            if now <= item.deadline + DEADLINE_SLACK_S:
                ok += 1
        within[vi] += ok
        late_served[vi] += len(batch) - ok
        s.slowdown[vi].observe(s.service_s[vi][len(batch)], s.curve_s[vi][len(batch)])
        s.scheduler.finished(vi, len(batch), ok < len(batch))

    rid = 0
    stream = iter(arrivals)
    upcoming = next(stream, None)
    last_t = -math.inf
    now = end = 0.0  # ``end``: the last arrival or completion (a wake-up no batch followed is neither)
    while upcoming is not None or heap:
        if upcoming is not None and (not heap or upcoming[0] <= heap[0][0]):
            now, vi = upcoming
            upcoming = next(stream, None)
            if now < last_t:
                raise ValueError(f"arrivals must come in time order ({now} after {last_t})")
            last_t = end = now
            requests[vi] += 1
            route = routes[vi]
            if route is None:
                unrouted[vi] += 1
                continue
            cum, targets = route
            si = targets[0] if len(targets) == 1 else targets[bisect.bisect_right(cum, uniform())]
            s = servers[si]
            rid += 1
            if not s.scheduler.push(vi, Queued(rid, now + slo_s[vi], now)):
                rejected[vi] += 1
                continue
            if not s.busy:
                step(si, s, now)
        else:
            now, _, si, token = pop(heap)
            s = servers[si]
            if token < 0:
                end = now
                finish(s, now)
                step(si, s, now)
            elif token == s.token and not s.busy:
                step(si, s, now)

    def quantiles(values: np.ndarray) -> tuple[float | None, float | None]:
        if len(values) == 0:
            return None, None
        p50, p99 = np.percentile(values, [50, 99])
        return float(p50) * 1000.0, float(p99) * 1000.0

    per_variant = []
    for vi, d in enumerate(demands):
        p50, p99 = quantiles(np.frombuffer(latencies[vi], dtype=np.float64))
        per_variant.append(VariantStats(d.variant, d.slo_ms, requests[vi], within[vi], late_served[vi], dropped[vi],
                                        rejected[vi], unrouted[vi], p50, p99))
    everything = np.concatenate([np.frombuffer(a, dtype=np.float64) for a in latencies]) if latencies else np.empty(0)
    p50, p99 = quantiles(everything)
    per_gpulet = []
    for gi, (g, s) in enumerate(zip(result.gpulets, servers, strict=True)):
        planned = g.round_ms / g.duty_cycle_ms if g.duty_cycle_ms > 0 else 0.0
        per_gpulet.append(GpuLetStats(gi, g.device_id, g.size, g.variants, s.batches, s.served, s.busy_s, s.busy_s / window_s,
                                      planned, interference_actual if shared[gi] else 1.0))
    return SimulationResult(window_s, tuple(per_variant), tuple(per_gpulet), p50, p99, interference_actual, end)


# --- the report ----------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _percent(x: float | None) -> str:
    return "- (no request)" if x is None else f"{100 * x:.2f} %"


def format_report(sim: SimulationResult, *, all_gpulets: bool = False) -> str:
    lines = [
        f"simulated {sim.requests:,} requests over {sim.window_s:g} s (queues drained at {sim.end_s:.3f} s)"
        + (f"; co-located gpu-lets ran {sim.interference_actual:g}× slower than predicted" if sim.interference_actual != 1 else ""),
        f"SLO attainment {_percent(sim.attainment)}   goodput {sim.goodput_rps:,.1f} rps   throughput {sim.throughput_rps:,.1f} rps   "
        f"not served {100 * sim.drop_fraction:.2f} % (dropped, rejected or unrouted)   "
        f"latency p50 {_ms(sim.p50_ms)} ms  p99 {_ms(sim.p99_ms)} ms",
        "",
        f"{'variant':<20} {'slo ms':>7} {'requests':>10} {'in SLO %':>9} {'goodput':>10} {'late':>7} {'dropped':>8} "
        f"{'rejected':>8} {'unrouted':>8} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for v in sim.variants:
        slo = f"{100 * v.attainment:>9.2f}" if v.requests else f"{'-':>9}"  # no request: nothing met or missed
        lines.append(f"{v.variant:<20} {v.slo_ms:>7g} {v.requests:>10,} {slo} {v.within_slo / sim.window_s:>10,.1f} "
                     f"{v.served_late:>7,} {v.dropped:>8,} {v.rejected:>8,} {v.unrouted:>8,} {_ms(v.p50_ms):>8} {_ms(v.p99_ms):>8}")
    unrouted = [v.variant for v in sim.variants if v.unrouted]
    if unrouted:
        lines.append(f"unrouted: the plan gives {', '.join(unrouted)} no gpu-let (demand it could not carry)")
    lines += ["", f"{'gpu-let':<28} {'variants':<30} {'util %':>7} {'planned %':>9} {'batches':>9} {'mean b':>7}"]
    shown = list(sim.gpulets)
    hidden = 0
    if not all_gpulets and len(shown) > LISTED_GPULETS:
        ranked = sorted(shown, key=lambda g: (-g.utilisation, g.index))
        shown = ranked[: LISTED_GPULETS - 6] + ranked[-6:]
        hidden = len(sim.gpulets) - len(shown)
    for i, g in enumerate(shown):
        if hidden and i == LISTED_GPULETS - 6:
            lines.append(f"  … {hidden} more (the busiest are above, the idlest below; --all-gpulets or --json for all)")
        name = f"{g.device_id}/{g.size}" + (f" ×{g.service_factor:g}" if g.service_factor != 1 else "")
        lines.append(f"{name:<28} {'+'.join(g.variants)[:30]:<30} {100 * g.utilisation:>7.1f} {100 * g.planned_utilisation:>9.1f} "
                     f"{g.batches:>9,} {g.mean_batch:>7.1f}")
    if sim.gpulets:
        util = np.array([g.utilisation for g in sim.gpulets])
        lines.append(f"utilisation over {len(util)} gpu-lets: min {100 * util.min():.1f} %  median {100 * np.median(util):.1f} %  "
                     f"max {100 * util.max():.1f} %")
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------


def _plan_for(setup: Setup, minimal: bool) -> tuple[Plan, list, str]:
    if not minimal:
        devices = fleet(setup.groups)
        return setup.plan(devices), devices, ""
    needed = setup.devices_needed()
    if needed.total is None or needed.total == 0:  # no fleet to simulate: past the search, or nothing to place
        raise CapacityError(needed_summary(needed, setup.groups, setup.policy))
    devices = fleet(setup.groups, [needed.counts[g.name] for g in setup.groups])
    return setup.plan(devices), devices, needed_summary(needed, setup.groups, setup.policy)


def run_simulate(args: argparse.Namespace) -> int:
    """``letmesh simulate``: 0 after a report, 2 on bad input."""
    try:
        setup = load_setup(args)
        if args.duration_s is not None and not args.duration_s > 0:
            raise CapacityError("--duration-s must be positive")
        if not 0 < args.interference_actual <= MAX_INTERFERENCE or args.max_wait_ms < 0:  # (NaN and inf too)
            raise CapacityError(f"--interference-actual must be above 0 and at most {MAX_INTERFERENCE:g}, "
                                "and --max-wait-ms not negative")
        if args.max_wait_ms > 0 and args.batching != "edf":
            raise CapacityError(f"--max-wait-ms applies to --batching edf; {args.batching} decides its own waits")
        result, devices, note = _plan_for(setup, args.minimal_fleet)
        demands = list(setup.demands)
        trace_note = ""
        if args.trace:
            trace = read_trace(args.trace, [d.variant for d in demands], until_s=args.duration_s)
            arrivals: Iterable[tuple[float, int]] = trace
            trace_note = trace.note()
            window = args.duration_s or trace.end_s or 1.0
        else:
            window = args.duration_s or 60.0
            arrivals = poisson_arrivals([d.rate_rps for d in demands], window, args.seed)
        sim = simulate(result, demands, setup.profiles.latency, arrivals, window_s=window, seed=args.seed,
                       interference_actual=args.interference_actual, max_wait_s=args.max_wait_ms / 1000.0,
                       batching=args.batching)
    except CapacityError as exc:
        print(f"letmesh simulate: {exc}", file=sys.stderr)
        return 2
    used = result.devices_used()
    head = [f"profiles: {setup.profiles.description}", *coverage_warnings(setup)]
    head += [line for line in (note, trace_note) if line]
    head.append(f"headroom: {headroom_note(setup.headroom)}; the simulation replays the workload's own rates")
    head.append(f"plan: {result.policy} (packing {result.strategy or result.policy}), {len(result.gpulets)} gpu-lets on {used} of "
                f"{len(devices)} devices" + ("; UNSERVED by the plan: " + ", ".join(
                    f"{v} {r:,.1f} rps" for v, r in sorted(result.unserved.items())) if result.unserved else "; all demand planned"))
    if args.show_layout:
        head += ["", layout_picture(result, devices)]
    print("\n".join([*head, "", format_report(sim, all_gpulets=args.all_gpulets)]))
    if args.json:
        write_json(args.json, {"plan": plan_json(result, demands, setup.planned, devices), "simulation": sim.to_json(),
                               "profiles": setup.profiles.description,
                               "arrivals": {"trace": args.trace} if args.trace else {"poisson": True, "seed": args.seed}})
    return 0
