"""Accuracy-scaling benchmark: letmesh's accuracy scaling (the controller's Proteus-style MILP
and demand forecast, with its defaults; the gateway's routing; the workers' default EDF
batching) against static high- and low-accuracy deployments with AIMD batching (Clipper-HA /
Clipper-LA) and a per-request greedy selector with reactive variant up/down-scaling
(INFaaS-like), in one discrete-event simulator (``benchmarks/scaling``) on the same arrivals.
Ablation rows show Proteus' published settings on the same solver, and ours with one part
changed at a time.

The workload is generated: F model families with Zipf-skewed popularity, Poisson arrivals whose
rate is a baseline plus raised-cosine bursts, sized in units of the fleet's capacity at full
accuracy, so that at the peaks demand exceeds what the fleet carries with the best variants while
the average fits. The fleet is N identical GPUs, one slot (the whole device) each, one variant
per slot, for every scheme. Profiles come from ``benchmarks/data/accuracy_profile.csv`` and
``accuracy_variants.csv``, a synthetic multi-family set this module writes with
``--write-profile`` (see ``benchmarks/data/README.md``).

Reports, per scheme (median and range over seeds): effective accuracy (mean normalised accuracy
of the requests answered within their SLO; the best variant of each family is 100), the accuracy
drop (100 minus that), the SLO-violation rate (late + dropped + shed + unrouted over all
requests), goodput and throughput; for the planner the solve times. Prints a table, writes JSON
to ``benchmarks/results/accuracy_scaling.json``, ends with one ``RESULT`` line. Asserts nothing.

Run: ``python benchmarks/accuracy_scaling.py [--quick]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.scaling.schemes import Greedy, Proteus, Scheme, Static
from benchmarks.scaling.sim import SWITCH_MODES, Simulator
from benchmarks.scaling.workload import (
    DATA,
    FAMILIES,
    KIND,
    PROFILE_FILE,
    STEP_S,
    VARIANTS_FILE,
    Fleet,
    Shape,
    Trace,
    load_catalog,
    make_fleet,
    make_trace,
    popularity,
    write_profile,
)
from benchmarks.support.report import write_json
from controller.accuracy import ResolvePolicy
from controller.config import ControllerConfig
from controller.layout_policy import LayoutPolicy

HERE = Path(__file__).resolve().parent
CONTROLLER = ControllerConfig()  # "ours" runs with the controller's defaults unless told otherwise
SCALING = LayoutPolicy()
DEFAULT_OUT = HERE / "results" / "accuracy_scaling.json"
SCHEMES = ("ours", "clipper_ha", "clipper_la", "infaas")
# ours with one thing changed, to show what each costs (not baselines; not in the RESULT line)
ABLATIONS = ("ours_as_proteus", "ours_no_forecast", "ours_proteus_batching", "ours_break_before_make")

# --- one run --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    quick: bool
    tiny: bool
    shape: Shape
    devices: int
    seeds: tuple[int, ...]
    load_s: float
    switch_mode: str
    interference: float
    time_limit_s: float
    beta: float
    horizon_s: float
    half_life_s: float
    period_s: float
    fast_period_s: float
    infaas_period_s: float
    infaas_slack: float
    infaas_down_slack: float
    ablations: bool
    out: Path


PROTEUS_HALF_LIFE_S = 1.0 / math.log2(1.7 / 0.7)  # pandas ewm(com=0.7) over 1-s windows, as a half-life


def make_scheme(name: str, opts: Options) -> Scheme:
    if name == "ours_as_proteus":  # Proteus' published settings, on our solver and data path
        return Proteus(policy=ResolvePolicy(period_s=10.0, fast_period_s=2.0, rises_only=False),
                       half_life_s=PROTEUS_HALF_LIFE_S, horizon_s=0.0, time_limit_s=opts.time_limit_s, beta=1.05,
                       name=name, batching="proteus")
    if name.startswith("ours"):
        return Proteus(policy=ResolvePolicy(period_s=opts.period_s, fast_period_s=opts.fast_period_s),
                       half_life_s=opts.half_life_s, horizon_s=0.0 if name == "ours_no_forecast" else opts.horizon_s,
                       time_limit_s=opts.time_limit_s, beta=opts.beta, name=name,
                       batching="proteus" if name == "ours_proteus_batching" else "edf")
    if name == "clipper_ha":
        return Static("clipper_ha", high=True)
    if name == "clipper_la":
        return Static("clipper_la", high=False)
    if name == "infaas":
        return Greedy(period_s=opts.infaas_period_s, slack=opts.infaas_slack, down_slack=opts.infaas_down_slack)
    raise ValueError(f"unknown scheme {name!r}")


def run_one(name: str, fleet: Fleet, trace: Trace, opts: Options, seed: int) -> dict[str, Any]:
    scheme = make_scheme(name, opts)
    scheme.rng = random.Random(f"{seed}/{name}")  # routing draws: seeded, separate per scheme
    mode = SWITCH_MODES[1] if name == "ours_break_before_make" else opts.switch_mode
    sim = Simulator(fleet, scheme.batching, opts.load_s, switch_mode=mode, interference=opts.interference)
    t0 = time.perf_counter()
    scheme.start(sim, trace)
    sim.run(trace, scheme, opts.shape.duration_s)
    wall = time.perf_counter() - t0
    c = sim.counts
    requests = max(c.requests, 1)
    window = opts.shape.duration_s
    acc = c.accuracy_sum / c.on_time if c.on_time else 0.0
    violations = c.requests - c.on_time
    # requests that arrived in a second whose mean load exceeds the fleet's full-accuracy capacity, and the rest
    seconds = len(sim.on_time_at)
    arrived = np.bincount(np.asarray(trace.times, dtype=float).astype(int), minlength=seconds)[:seconds]
    per_s = max(1, round(1.0 / STEP_S))
    load = np.pad(trace.load, (0, seconds * per_s - len(trace.load)), constant_values=0.0).reshape(seconds, per_s).mean(axis=1)
    over = load > 1.0
    ok = np.asarray(sim.on_time_at)
    acc_sum = np.asarray(sim.accuracy_at)
    phase = {}
    for key, mask in (("overload", over), ("normal", ~over)):
        n, served = int(arrived[mask].sum()), int(ok[mask].sum())
        phase[f"violation_rate_{key}"] = (n - served) / n if n else 0.0
        phase[f"accuracy_drop_{key}"] = 100.0 - float(acc_sum[mask].sum()) / served if served else 0.0
    row = {
        "scheme": name, "seed": seed, "requests": c.requests, "on_time": c.on_time,
        "effective_accuracy": acc, "accuracy_drop": 100.0 - acc,
        "violation_rate": violations / requests,
        "late_rate": c.late / requests, "dropped_rate": c.dropped / requests,
        "shed_rate": c.shed / requests, "unrouted_rate": c.unrouted / requests,
        "goodput_rps": c.on_time / window, "throughput_rps": (c.on_time + c.late) / window,
        "switches": c.switches, "load_slot_s": c.load_s, "sim_wall_s": wall,
        **phase, "overload_request_share": float(arrived[over].sum() / max(arrived.sum(), 1)),
        "per_family_violation_rate": {f: (fc.requests - fc.on_time) / max(fc.requests, 1)
                                      for f, fc in zip(fleet.families, sim.per_family, strict=True)},
        "served_by_variant": dict(sorted(sim.served_by_variant.items())),
        "batching": scheme.batching,
        **scheme.report(),
    }
    return row


# --- summaries ------------------------------------------------------------------------------------

METRICS = ("effective_accuracy", "accuracy_drop", "violation_rate", "late_rate", "dropped_rate", "shed_rate",
           "unrouted_rate", "violation_rate_overload", "violation_rate_normal", "accuracy_drop_overload",
           "accuracy_drop_normal", "goodput_rps", "throughput_rps", "switches")


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(baseline: float, ours: float, eps: float = 0.0) -> float:
    """baseline / ours; inf when ours is 0 and the baseline is not, 1 when both are 0."""
    if ours + eps > 0:
        return (baseline + eps) / (ours + eps)
    return math.inf if baseline > 0 else 1.0


def summarise(rows: list[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    by = {(r["scheme"], r["seed"]): r for r in rows}
    names = [s for s in (*SCHEMES, *ABLATIONS) if (s, seeds[0]) in by]
    schemes = {s: {m: spread([by[(s, seed)][m] for seed in seeds]) for m in METRICS} for s in names}
    per_seed = {"acc_drop_vs_clipper_la": [], "violations_vs_clipper_ha": [], "violations_vs_infaas": [],
                "acc_drop_vs_infaas": []}
    for seed in seeds:
        ours = by[("ours", seed)]
        per_seed["acc_drop_vs_clipper_la"].append(ratio(by[("clipper_la", seed)]["accuracy_drop"], ours["accuracy_drop"]))
        per_seed["acc_drop_vs_infaas"].append(ratio(by[("infaas", seed)]["accuracy_drop"], ours["accuracy_drop"]))
        per_seed["violations_vs_clipper_ha"].append(ratio(by[("clipper_ha", seed)]["violation_rate"], ours["violation_rate"]))
        per_seed["violations_vs_infaas"].append(ratio(by[("infaas", seed)]["violation_rate"], ours["violation_rate"]))
    ratios = {k: {**spread(v), "per_seed": v} for k, v in per_seed.items()}
    solve_s = [t for seed in seeds for t in by[("ours", seed)]["solve_s"]]
    statuses: dict[str, int] = {}
    for seed in seeds:
        for k, v in by[("ours", seed)]["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    q = np.percentile(solve_s, [50, 99]).tolist() if solve_s else [0.0, 0.0]
    solves = {"count": len(solve_s), "p50_s": q[0], "p99_s": q[1], "max_s": max(solve_s, default=0.0),
              "statuses": statuses, "time_limit_hits": statuses.get("time_limit", 0),
              "slots_changed_per_run": spread([by[("ours", seed)]["changed_slots"] for seed in seeds]),
              "family_moves_per_run": spread([by[("ours", seed)]["family_moves"] for seed in seeds])}
    return {"schemes": schemes, "ratios": ratios, "solves": solves}


# --- driver ---------------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller run (about a minute), same code path")
    p.add_argument("--tiny", action="store_true", help="smoke-test size (a few seconds)")
    p.add_argument("--families", type=int, help="model families (default 9, quick 6, at most 9)")
    p.add_argument("--devices", type=int, help="GPUs, one slot each (default 20, quick 12)")
    p.add_argument("--duration-s", type=float, help="trace length (default 300, quick 60)")
    p.add_argument("--seeds", type=int, help="seeds (default 5, quick 3)")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of family popularity (default 1.0)")
    p.add_argument("--base-load", type=float, default=0.6, help="baseline load, x full-accuracy capacity (default 0.6)")
    p.add_argument("--burst-factor", type=float, default=2.5, help="load at a burst's peak, x full-accuracy capacity (default 2.5)")
    p.add_argument("--burst-share", type=float, default=0.25, help="share of the trace inside bursts (default 0.25)")
    p.add_argument("--bursts", type=int, help="number of bursts (default: one per 100 s, at least 1)")
    p.add_argument("--burst-focus", type=float, default=0.3, help="share of a burst's extra load on one random family (default 0.3)")
    p.add_argument("--load-s", type=float, default=1.0, help="time a slot needs to load another variant (default 1.0)")
    p.add_argument("--switch-mode", choices=SWITCH_MODES, default=SWITCH_MODES[0],
                   help="how a slot changes variant, for every scheme (default make-before-break, as letmesh does)")
    p.add_argument("--interference", type=float, default=1.1,
                   help="make-before-break: a slot's batches take this much longer while its next variant loads (default 1.1)")
    p.add_argument("--time-limit-s", type=float, default=1.0, help="MILP time limit per solve (default 1.0)")
    p.add_argument("--beta", type=float, default=SCALING.scaling_beta,
                   help=f"capacity headroom the beta ladder starts from (default {SCALING.scaling_beta:g}, the controller's; Proteus 1.05)")
    p.add_argument("--horizon-s", type=float, default=SCALING.scaling_horizon_s,
                   help=f"plan for the demand forecast this far ahead (default {SCALING.scaling_horizon_s:g}, the controller's)")
    p.add_argument("--half-life-s", type=float, default=CONTROLLER.demand_half_life_s,
                   help=f"half-life of the smoothed demand (default {CONTROLLER.demand_half_life_s:g}, the controller's)")
    p.add_argument("--period-s", type=float, default=SCALING.replan_period_s, help="re-solve period (default 10, Proteus)")
    p.add_argument("--fast-period-s", type=float, default=SCALING.fast_replan_s,
                   help=f"re-solve this soon when demand rises (default {SCALING.fast_replan_s:g}, the controller's; Proteus 2)")
    p.add_argument("--infaas-period-s", type=float, default=2.0, help="INFaaS-like rescaling period (default 2)")
    p.add_argument("--infaas-slack", type=float, default=0.05, help="INFaaS-like: overloaded above 1 - slack of capacity (default 0.05)")
    p.add_argument("--infaas-down-slack", type=float, default=0.6, help="INFaaS-like: upgrade below this share of capacity (default 0.6)")
    p.add_argument("--write-profile", action="store_true", help=f"(re)write {PROFILE_FILE} and {VARIANTS_FILE} in benchmarks/data and exit")
    p.add_argument("--no-ablations", action="store_true", help=f"skip the rows {', '.join(ABLATIONS)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    a = p.parse_args(argv)
    if a.write_profile:
        for path in write_profile(DATA):
            print(f"wrote {path}")
        raise SystemExit(0)
    size = "tiny" if a.tiny else "quick" if a.quick else "full"
    defaults = {"tiny": (3, 4, 8.0, 1), "quick": (6, 12, 60.0, 3), "full": (9, 20, 300.0, 5)}[size]
    families = a.families or defaults[0]
    devices = a.devices or defaults[1]
    duration = a.duration_s or defaults[2]
    seeds = a.seeds or defaults[3]
    if not 1 <= families <= len(FAMILIES):
        p.error(f"--families must be 1..{len(FAMILIES)}")
    if devices < families:
        p.error("--devices must be at least --families (the static baselines give each family a device)")
    if duration <= 2 or seeds < 1:
        p.error("--duration-s must exceed 2 and --seeds be at least 1")
    if not (0 <= a.burst_share <= 1 and 0 <= a.burst_focus <= 1 and a.base_load > 0 and a.burst_factor > 0):
        p.error("burst share and focus must be in [0, 1], loads positive")
    bursts = a.bursts if a.bursts is not None else max(1, round(duration / 100))
    shape = Shape(families, a.zipf, a.base_load, a.burst_factor, a.burst_share, bursts, a.burst_focus, duration)
    return Options(quick=a.quick or a.tiny, tiny=a.tiny, shape=shape, devices=devices, seeds=tuple(range(seeds)),
                   load_s=a.load_s, switch_mode=a.switch_mode, interference=a.interference, time_limit_s=a.time_limit_s, beta=a.beta, horizon_s=a.horizon_s, half_life_s=a.half_life_s, period_s=a.period_s,
                   fast_period_s=a.fast_period_s,
                   infaas_period_s=a.infaas_period_s, infaas_slack=a.infaas_slack,
                   infaas_down_slack=a.infaas_down_slack, ablations=not a.no_ablations, out=a.out)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0))}


SIMPLIFICATIONS = (
    "one GPU kind, one slot per device, one variant per slot, for every scheme (so the MILP sees one slot class: "
    "its solves are small)",
    "a batch takes exactly the planning latency (profile p99 x 1.1 margin), which every batcher also predicts",
    "a slot that changes variant loads the new one for --load-s while the old one serves on (batches x --interference "
    "slower), then drains the old queue and switches (make-before-break, as letmesh's reconciler does; "
    "--switch-mode break-before-make serves nothing while loading); the initial deployment at t=0 is free for every scheme",
    "the static baselines and the planner's first plan are sized for the trace's true mean demand per family",
    "ours: a plan takes effect after its measured solve time (wall clock here); all its slot changes start at once; "
    "demand is counted per 1-s window (the gateways report more often); routing as the gateway does it: shed share, "
    "each variant's least-loaded slot kept if predicted to finish in time (else the request is refused at once, counted "
    "unrouted), variants held to the plan's fractions, a draw weighted by them",
    "INFaaS-like: no VM autoscaling (fixed fleet); rescaling on the last period's arrival rate; each request sees "
    "every slot's exact queue (running batch + queue in full batches), a generous view; EDF batching",
    "Clipper-HA/LA: uniform routing over a family's slots, AIMD over batch sizes 1,2,4,.. up to the SLO/2 batch",
)


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    catalog = load_catalog().take(opts.shape.families)
    fleet = make_fleet(catalog, opts.devices)
    started = time.perf_counter()
    rows, traces = [], []
    for seed in opts.seeds:
        trace = make_trace(opts.shape, fleet, seed)
        traces.append({"seed": seed, "requests": len(trace.times), "mean_rps": sum(trace.mean_rps),
                       "peak_load": float(trace.load.max()), "mean_load": float(trace.load.mean()),
                       "bursts": [{"start_s": s, "length_s": l, "focus": fleet.families[k]} for s, l, k in trace.bursts]})
        for name in SCHEMES + (ABLATIONS if opts.ablations else ()):
            rows.append(run_one(name, fleet, trace, opts, seed))
    summary = summarise(rows, opts.seeds)
    r = summary["ratios"]
    result = {
        "acc_drop_vs_clipper_la": r["acc_drop_vs_clipper_la"]["median"],
        "violations_vs_clipper_ha": r["violations_vs_clipper_ha"]["median"],
        "violations_vs_infaas": r["violations_vs_infaas"]["median"],
        "solve_s_p99": summary["solves"]["p99_s"],
    }
    report = {
        "benchmark": "accuracy_scaling", "machine": machine(), "wall_s": time.perf_counter() - started,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "shape"},
        "workload": {**asdict(opts.shape), "mean_load_expected": opts.shape.mean_load,
                     "popularity": popularity(opts.shape.families, opts.shape.zipf).tolist(), "traces": traces},
        "fleet": {"devices": opts.devices, "kind": KIND, "families": list(fleet.families),
                  "slo_ms": {f: 1000 * s for f, s in zip(fleet.families, fleet.slo_s, strict=True)},
                  "variants": {v: {"family": fleet.families[i.family], "accuracy": i.accuracy, "rate_rps": i.rate,
                                   "batch": i.batch} for v, i in sorted(fleet.info.items())}},
        "simplifications": list(SIMPLIFICATIONS),
        "runs": rows, **summary, "result": result,
        "ratio_note": "each ratio is baseline / ours per seed (median over seeds reported); inf when ours is 0 and the baseline is not",
    }
    write_json(opts.out, report)
    print_report(report)
    print("RESULT " + " ".join(f"{k}={_fmt(v)}" for k, v in result.items()))
    return 0


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3f}" if abs(x) >= 0.01 or x == 0 else f"{x:.4g}"


def print_report(report: dict[str, Any]) -> None:
    m, w, f = report["machine"], report["workload"], report["fleet"]
    seeds = len(report["options"]["seeds"])
    print(f"accuracy-scaling benchmark on {m['platform']}, python {m['python']}, {m['usable_cpus']} usable cpus; "
          f"{report['wall_s']:.1f} s")
    print(f"workload: {w['families']} families, Zipf {w['zipf']:g} (popularity {', '.join(f'{p:.2f}' for p in w['popularity'])}); "
          f"{w['duration_s']:g} s; load (x full-accuracy capacity) base {w['base_load']:g}, peak {w['burst_factor']:g}, "
          f"{w['bursts']} burst(s) over {w['burst_share']:.0%} of the time, focus {w['burst_focus']:g}; "
          f"expected mean load {w['mean_load_expected']:.2f}")
    for t in w["traces"]:
        print(f"  seed {t['seed']}: {t['requests']:,} requests, mean {t['mean_rps']:.0f} rps, load mean {t['mean_load']:.2f} "
              f"peak {t['peak_load']:.2f}; bursts " + ", ".join(f"{b['start_s']:.0f}-{b['start_s'] + b['length_s']:.0f} s on {b['focus']}"
                                                              for b in t["bursts"]))
    print(f"fleet: {f['devices']} x {f['kind']} (one slot each); SLO ms " + ", ".join(f"{k} {v:g}" for k, v in f["slo_ms"].items()))
    o = report["options"]
    print(f"ours: re-solve every {o['period_s']:g} s ({o['fast_period_s']:g} s when demand rises), MILP time limit "
          f"{o['time_limit_s']:g} s, beta from {o['beta']:g}, demand forecast {o['horizon_s']:g} s ahead (half-life "
          f"{o['half_life_s']:g} s); every scheme: variant load {o['load_s']:g} s, {o['switch_mode']} "
          f"(x{o['interference']:g} batch time while loading)")
    share = statistics.median(r["overload_request_share"] for r in report["runs"])
    print(f"\nper scheme: median [min-max] over {seeds} seed(s); violations split by arrival in seconds whose load exceeds "
          f"full-accuracy capacity (overload, {share:.0%} of requests) or not (normal), and the accuracy drop of each phase (drop o/n); goodput/throughput in rps")
    head = (f"  {'scheme':19s} {'batching':8s} {'eff. acc':>22s} {'acc drop':>20s} {'violations %':>22s} "
            f"{'late/drop/shed/unrouted %':>26s} {'overload/normal %':>18s} {'drop o/n':>12s} {'goodput':>8s} {'thrput':>7s} {'switches':>8s}")
    print(head)
    rows_by = {r["scheme"]: r for r in report["runs"]}
    for s in report["schemes"]:
        if s == ABLATIONS[0]:
            print("  ablations of ours: Proteus' published settings (EWMA com 0.7, no forecast, beta 1.05, 2-s fast "
                  "re-solve on rises and falls, Proteus batching) / then one thing changed each: no forecast (the "
                  "smoothed rate) / Proteus batching / break-before-make switches:")
        x = report["schemes"][s]

        def cell(metric: str, scale: float = 1.0, digits: int = 2) -> str:
            v = x[metric]
            return f"{v['median'] * scale:.{digits}f} [{v['min'] * scale:.{digits}f}-{v['max'] * scale:.{digits}f}]"

        parts = "/".join(f"{x[k]['median'] * 100:.2f}" for k in ("late_rate", "dropped_rate", "shed_rate", "unrouted_rate"))
        phases = "/".join(f"{x[k]['median'] * 100:.2f}" for k in ("violation_rate_overload", "violation_rate_normal"))
        drops = "/".join(f"{x[k]['median']:.2f}" for k in ("accuracy_drop_overload", "accuracy_drop_normal"))
        print(f"  {s:19s} {rows_by[s]['batching']:8s} {cell('effective_accuracy'):>22s} {cell('accuracy_drop'):>20s} "
              f"{cell('violation_rate', 100):>22s} {parts:>26s} {phases:>18s} {drops:>12s} {x['goodput_rps']['median']:8.0f} "
              f"{x['throughput_rps']['median']:7.0f} {x['switches']['median']:8.0f}")
    sv = report["solves"]
    print(f"\nours, MILP solves: {sv['count']} over all seeds; p50 {sv['p50_s'] * 1000:.1f} ms, p99 {sv['p99_s'] * 1000:.1f} ms, "
          f"max {sv['max_s'] * 1000:.1f} ms (time limit {o['time_limit_s']:g} s); statuses {sv['statuses']}; "
          f"hit the time limit {sv['time_limit_hits']}")
    print(f"  slot changes per run: median {sv['slots_changed_per_run']['median']:g}, of which moved to another family "
          f"{sv['family_moves_per_run']['median']:g} ({f['devices']} slots)")
    print("\nratios (baseline / ours, per seed; median [min-max]):")
    for k, v in report["ratios"].items():
        print(f"  {k:26s} {_fmt(v['median']):>8s} [{_fmt(v['min'])}-{_fmt(v['max'])}]")
    print("\nsimplifications:")
    for line in report["simplifications"]:
        print(f"  - {line}")


if __name__ == "__main__":
    raise SystemExit(main())

