"""Planner benchmark: the highest request rate each scheduler carries within SLO, and planning time.

On gpu-let's multi-model scenarios (scen1-5 and the game and traffic applications, their models,
SLOs and rate grids) with a synthetic GPU profile shaped after those models, and on a profile of
the demo "digits" models measured on this machine's CPU, it finds for gpu-let (interference model
on and off), temporal sharing only (Nexus-style) and one model per whole device the highest grid
level whose demand the plan carries, on 2 and 4 devices. It also audits each interference-blind
plan at its peak under the interference model, and times planning for 10, 100 and 1,000 devices.
Prints a table, writes JSON, ends with one ``RESULT`` line. Asserts nothing about speed.

Run: ``python benchmarks/planner.py [--quick]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.support.churn import CHURN_BAND, CHURN_SIGMA, replan_churn
from benchmarks.support.report import write_json
from controller.planning import (
    CoLocation,
    Demand,
    DeviceSlot,
    InterferenceModel,
    LatencyModel,
    ProfileTable,
    max_rate,
    plan,
)
from controller.planning.audit import audit

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
DEFAULT_OUT = HERE / "results" / "planner.json"
GPU_MEMORY = 11 * 2**30  # a 2080 Ti-class card, as in gpu-let's testbed
MB = 2**20
WORKER_OVERHEAD = 1230 * MB  # gpu-let's per-proxy runtime memory
POLICIES = (("gpulet", True), ("gpulet", False), ("temporal", True), ("whole", True), ("gpulet-first", True))
# "gpulet-first": the gpu-let policy restricted to its first packing (no portfolio of packings)


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    kind: str
    steps: dict[str, float]  # variant -> rps per grid level
    note: str = ""
    levels: int = 300  # rate grid: level i runs every model at i x its step (gpu-let sweeps i = 1..300)


GPU_SCENARIOS = (
    # scen1: the notes say "short" models at 100 i and the others at 50 i without naming them;
    # we take the three with SLOs <= 64 ms as the short ones.
    Scenario("scen1", "cuda", {"googlenet": 50, "bert": 100, "mnasnet1_0": 100, "mobilenet_v2": 100}, "short=SLO<=64ms at 100i"),
    Scenario("scen2", "cuda", {"densenet161": 10, "vgg16": 10}),
    Scenario("scen3", "cuda", {"resnet50": 10, "vgg16": 10, "mobilenet_v2": 10}),
    Scenario("scen4", "cuda", {"ssd_mobilenetv1": 10, "mnasnet1_0": 10, "densenet161": 10}),
    Scenario("scen5", "cuda", {"lenet1": 10, "ssd_mobilenetv1": 10, "vgg16": 10, "mnasnet1_0": 10}),
    Scenario("game", "cuda", {**{f"lenet{i}": 100 for i in range(1, 7)}, "resnet50": 100}, "7 models at the app rate, SLO 108 ms"),
    Scenario("traffic", "cuda", {"ssd_mobilenetv1": 50, "googlenet": 50, "vgg16": 50}, "SLO 90/112/112 ms"),
)
APP_SLO_MS = {"game": {"*": 108.0}, "traffic": {"ssd_mobilenetv1": 90.0, "googlenet": 112.0, "vgg16": 112.0}}
CPU_SLO_MS = {"digits-linear": 2.0, "digits-mlp": 2.0, "digits-wide": 5.0, "digits-cnn": 20.0}
CPU_SCENARIOS = (  # the digits models run at thousands of rps per core: a coarser, longer grid
    Scenario("digits-all", "cpu", {v: 100 for v in CPU_SLO_MS}, levels=2000),
    Scenario("digits-heavy", "cpu", {"digits-wide": 100, "digits-cnn": 100}, levels=2000),
)
CPU_CORES = 2  # each simulated edge board has this machine's two cores


# --- data -----------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def colocations(rows: list[dict[str, str]]) -> list[CoLocation]:
    return [
        CoLocation(r["device_kind"], (r["a_variant"], int(r["a_partition"]), int(r["a_batch"])),
                   (r["b_variant"], int(r["b_partition"]), int(r["b_batch"])), float(r["slowdown"]))
        for r in rows
    ]


def utilisation_features(rows: list[dict[str, str]]):
    """gpu-let's features: L2 and DRAM utilisation of a solo run, interpolated between profiled
    batch sizes and scaled by the partition's share of the GPU."""
    table: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for r in sorted(rows, key=lambda r: (r["variant"], int(r["batch"]))):
        b, d, l2 = table.setdefault(r["variant"], ([], [], []))
        b.append(int(r["batch"]))
        d.append(float(r["dram_util"]))
        l2.append(float(r["l2_util"]))

    def at(xs: list[int], ys: list[float], x: int) -> float:
        j = bisect.bisect_left(xs, x)
        if j < len(xs) and xs[j] == x:
            return ys[j]
        if j == 0:
            return ys[0]
        if j == len(xs):
            return ys[-1]
        return ys[j - 1] + (ys[j] - ys[j - 1]) * (x - xs[j - 1]) / (xs[j] - xs[j - 1])

    def features(kind: str, variant: str, partition: int, batch: int) -> tuple[float, float]:
        b, d, l2 = table[variant]
        share = partition / 100.0
        return (at(b, d, batch) * share, at(b, l2, batch) * share)

    return features


def split(samples: list[CoLocation], held_share: float = 0.25) -> tuple[list[CoLocation], list[CoLocation]]:
    """Deterministic hold-out: every k-th sample."""
    k = max(2, round(1 / held_share))
    return [s for i, s in enumerate(samples) if i % k], [s for i, s in enumerate(samples) if i % k == 0]


@dataclasses.dataclass(frozen=True, slots=True)
class Family:
    kind: str
    latency: LatencyModel
    interference: InterferenceModel
    slo: dict[str, float]
    memory: dict[str, int]
    fit: dict[str, Any]


def gpu_family() -> Family:
    table = ProfileTable.from_rows(read_csv(DATA / "gpu_profile.csv"))
    features = utilisation_features(read_csv(DATA / "gpu_util.csv"))
    train, held = split(colocations(read_csv(DATA / "gpu_colocation.csv")))
    model = InterferenceModel.fit(train, features)
    models = json.loads((DATA / "gpu_models.json").read_text())["models"]
    slo, memory = {}, {}
    for name, m in models.items():
        for v in m.get("variants", [name]):
            slo[v], memory[v] = float(m["slo_ms"]), int(m["memory_mb"] * MB)
    fit = {"features": "dram,l2 utilisation x share", "train": len(train), **model.error(held),
           "coefficients": model.coefficients["cuda"], "none_mae": InterferenceModel.none().error(held)["mae"]}
    return Family("cuda", LatencyModel(table), model, slo, memory, fit)


def cpu_family(source: Path) -> Family:
    table = ProfileTable.from_rows(read_csv(source / "cpu_profile.csv"))
    train, held = split(colocations(read_csv(source / "cpu_colocation.csv")))
    model = InterferenceModel.fit(train, table=table)
    fit = {"features": "latency-derived (share, share x drive)", "train": len(train), **model.error(held),
           "coefficients": model.coefficients["cpu"], "none_mae": InterferenceModel.none().error(held)["mae"]}
    return Family("cpu", LatencyModel(table), model, dict(CPU_SLO_MS), {}, fit)


def measure_cpu(out: Path) -> Path:
    """Re-measure the CPU profile in a subprocess (pinned cores, its own torch); cached in ``out``."""
    if not (out / "cpu_profile.csv").exists():
        subprocess.run([sys.executable, str(DATA / "generate.py"), "--cpu", "--out-dir", str(out)], check=True)
    return out


# --- experiments ----------------------------------------------------------------------------------


def devices_for(family: Family, n: int) -> list[DeviceSlot]:
    if family.kind == "cuda":
        return [DeviceSlot(f"gpu{i}", "cuda", 100, GPU_MEMORY) for i in range(n)]
    return [DeviceSlot(f"board{i}", "cpu", CPU_CORES) for i in range(n)]


def demands_for(family: Family, scenario: Scenario) -> list[Demand]:
    app = APP_SLO_MS.get(scenario.name, {})
    out = []
    for v, step in sorted(scenario.steps.items()):
        slo = app.get(v, app.get("*", family.slo[v]))
        out.append(Demand(v, float(step), slo, family.memory.get(v, 0)))
    return out


def peak(family: Family, scenario: Scenario, n: int, policy: str, interference_on: bool) -> dict[str, Any]:
    devices = devices_for(family, n)
    shape = demands_for(family, scenario)
    model = family.interference if interference_on else InterferenceModel.none()
    options: dict[str, Any] = {"worker_overhead_bytes": WORKER_OVERHEAD if family.kind == "cuda" else 0}
    name = policy
    if policy == "gpulet-first":
        policy, options["strategies"] = "gpulet", ("gpulet",)
    t0 = time.perf_counter()
    level = max_rate(devices, shape, family.latency, model, policy, levels=scenario.levels, **options)
    elapsed = time.perf_counter() - t0
    demands = [dataclasses.replace(d, rate_rps=d.rate_rps * level) for d in shape]
    result = plan(devices, demands, family.latency, interference=model, policy=policy, **options)
    # how the plan fares under the interference model (for the interference-blind plan: E3-lite)
    broken = audit(result, devices, demands, family.latency, family.interference)
    slo_broken = sorted({v.gpulet for v in broken if v.rule in ("slo", "cycle")})
    return {
        "device": family.kind, "scenario": scenario.name, "devices": n, "policy": name, "interference": interference_on,
        "level": int(level), "total_rps": level * sum(scenario.steps.values()), "strategy": result.strategy,
        "gpulets": len(result.gpulets), "split_devices": len({g.device_id for g in result.gpulets if g.size < (100 if family.kind == "cuda" else CPU_CORES)}),
        "gpulets_over_slo_under_interference": len(slo_broken), "search_s": elapsed,
    }


def gains(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """gpu-let (interference on) over each baseline, per (scenario, devices); mean over cases
    where the baseline carries something. Also gpu-let restricted to its first packing."""
    by = {(r["scenario"], r["devices"], r["policy"], r["interference"]): r["total_rps"] for r in rows if r["device"] == kind}
    out: dict[str, Any] = {}
    for mine, baseline, key in (("gpulet", "temporal", "vs_temporal"), ("gpulet", "whole", "vs_whole_device"),
                                ("gpulet-first", "temporal", "first_packing_vs_temporal")):
        cases, skipped = {}, []
        for (scen, n, policy, on), rate in sorted(by.items()):
            if policy != mine or not on:
                continue
            base = by.get((scen, n, baseline, True), 0.0)
            if base > 0:
                cases[f"{scen}/N={n}"] = rate / base
            else:
                skipped.append(f"{scen}/N={n}")
        values = list(cases.values())
        out[key] = {
            "cases": cases, "skipped_baseline_zero": skipped,
            "mean": statistics.fmean(values) if values else float("nan"),
            "geomean": statistics.geometric_mean(values) if values else float("nan"),
            "min": min(values) if values else float("nan"), "max": max(values) if values else float("nan"),
        }
    pairs = [(rate, by.get((s, n, "gpulet", False), 0.0)) for (s, n, p, on), rate in by.items() if p == "gpulet" and on]
    ratios = [on / off for on, off in pairs if off > 0]
    out["interference_cost"] = statistics.fmean(ratios) if ratios else float("nan")
    return out


def churn(family: Family, scenario: Scenario, n: int, steps: int, seed: int = 1) -> dict[str, Any]:
    """Re-plan churn of ``scenario`` on ``n`` devices (see ``benchmarks.support.churn``)."""
    devices = devices_for(family, n)
    shape = demands_for(family, scenario)
    options: dict[str, Any] = {"worker_overhead_bytes": WORKER_OVERHEAD if family.kind == "cuda" else 0}
    top = max_rate(devices, shape, family.latency, family.interference, levels=scenario.levels, **options)
    out = replan_churn(devices, shape, family.latency, family.interference, top, steps, seed, options)
    return {"device": family.kind, "scenario": scenario.name, "devices": n, **out}


def scaled_fleet(family: Family, n: int, load: float) -> tuple[list[DeviceSlot], list[Demand], LatencyModel, InterferenceModel]:
    """n GPUs and n/5 variants (the scenario models, renamed copies) at ``load`` × what whole devices carry."""
    base = ["bert", "densenet161", "googlenet", "lenet1", "mnasnet1_0", "mobilenet_v2", "resnet50", "ssd_mobilenetv1", "vgg16"]
    count = max(4, n // 5)
    names = [(f"{base[i % len(base)]}#{i}", base[i % len(base)]) for i in range(count)]
    rows = [(name, *row[1:]) for name, src in names for row in family.latency.table.to_rows() if row[0] == src]
    table = ProfileTable.from_rows(rows)
    latency = LatencyModel(table)
    base_features = utilisation_features(read_csv(DATA / "gpu_util.csv"))

    def features(kind: str, variant: str, partition: int, batch: int) -> tuple[float, float]:
        return base_features(kind, variant.split("#")[0], partition, batch)

    model = InterferenceModel({"cuda": family.interference.coefficients["cuda"]}, features)
    per_device = n / count
    demands = []
    for name, src in names:
        solo = max(latency.throughput_rps(name, "cuda", 100, b) for b in range(1, 33)
                   if 2 * latency.latency_ms(name, "cuda", 100, b) <= family.slo[src])
        demands.append(Demand(name, load * per_device * solo, family.slo[src], family.memory[src]))
    return [DeviceSlot(f"gpu{i:04d}", "cuda", 100, GPU_MEMORY) for i in range(n)], demands, latency, model


def planning_time(family: Family, n: int, runs: int, load: float = 0.6) -> dict[str, Any]:
    devices, demands, latency, model = scaled_fleet(family, n, load)
    times, result = [], None
    for _ in range(runs):
        fresh = LatencyModel(latency.table)  # no memo carried between runs
        t0 = time.perf_counter()
        result = plan(devices, demands, fresh, interference=model, worker_overhead_bytes=WORKER_OVERHEAD)
        times.append(time.perf_counter() - t0)
    assert result is not None
    return {"devices": n, "variants": len(demands), "load": load, "runs": runs, "median_s": statistics.median(times), "min_s": min(times),
            "max_s": max(times), "strategy": result.strategy, "unserved_rps": result.total_unserved(), "gpulets": len(result.gpulets)}


# --- driver ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    quick: bool
    tiny: bool
    runs: int
    sizes: tuple[int, ...]
    device_counts: tuple[int, ...]
    scenarios: tuple[str, ...]
    churn_steps: int
    cpu_source: Path
    out: Path


def parse_options(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller run (about a minute), same code path")
    p.add_argument("--tiny", action="store_true", help="smoke-test size: one scenario, one small timing")
    p.add_argument("--runs", type=int, help="timed runs per fleet size (default 5, quick 3)")
    p.add_argument("--measure-cpu", action="store_true", help="re-measure the CPU profile here (cached in benchmarks/results/)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    a = p.parse_args(argv)
    names = tuple(s.name for s in GPU_SCENARIOS + CPU_SCENARIOS)
    source = measure_cpu(HERE / "results" / "cpu") if a.measure_cpu else DATA
    if a.tiny:
        return Options(quick=True, tiny=True, runs=a.runs or 1, sizes=(10,), device_counts=(2,), scenarios=("scen2", "digits-heavy"),
                       churn_steps=8, cpu_source=source, out=a.out)
    runs = a.runs or (3 if a.quick else 5)
    if runs < 1:
        p.error("--runs must be at least 1")
    return Options(quick=a.quick, tiny=False, runs=runs, sizes=(10, 100, 1000), device_counts=(2, 4), scenarios=names,
                   churn_steps=30 if a.quick else 60, cpu_source=source, out=a.out)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0))}


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    families = {"cuda": gpu_family(), "cpu": cpu_family(opts.cpu_source)}
    rows = []
    for scenario in GPU_SCENARIOS + CPU_SCENARIOS:
        if scenario.name not in opts.scenarios:
            continue
        for n in opts.device_counts:
            for policy, on in POLICIES:
                rows.append(peak(families[scenario.kind], scenario, n, policy, on))
    moves = [churn(families[scenario.kind], scenario, max(opts.device_counts), opts.churn_steps)
             for scenario in GPU_SCENARIOS + CPU_SCENARIOS if scenario.name in opts.scenarios]
    timing = [planning_time(families["cuda"], n, opts.runs) for n in opts.sizes]
    # overloaded: no packing carries everything, so every candidate packing runs
    timing.append(planning_time(families["cuda"], max(opts.sizes), opts.runs, load=1.3))
    report = {
        "benchmark": "planner", "machine": machine(),
        "options": {"quick": opts.quick, "tiny": opts.tiny, "runs": opts.runs, "cpu_source": str(opts.cpu_source)},
        "interference": {kind: fam.fit for kind, fam in families.items()},
        "max_rate": rows,
        "gains": {kind: gains(rows, kind) for kind in ("cuda", "cpu")},
        "planning_time": timing,
        "churn": moves,
    }
    headline = report["gains"]["cuda"]
    largest = max(timing, key=lambda t: t["devices"])
    report["result"] = {
        "gain_vs_temporal": headline["vs_temporal"]["mean"],
        "gain_vs_whole_device": headline["vs_whole_device"]["mean"],
        "plan_s_1000": next((t["median_s"] for t in timing if t["devices"] == 1000 and t["load"] == 0.6), float("nan")),
        "largest_fleet": largest["devices"],
        "restarts_fresh": statistics.fmean(m["fresh"]["restarts_per_replan"] for m in moves),
        "restarts_retain": statistics.fmean(m["retain"]["restarts_per_replan"] for m in moves),
    }
    write_json(opts.out, report)
    print_report(report)
    r = report["result"]
    print(f"RESULT gain_vs_temporal={r['gain_vs_temporal']:.3f} gain_vs_whole_device={r['gain_vs_whole_device']:.3f} "
          f"plan_s_1000={r['plan_s_1000']:.3f} restarts_per_replan_fresh={r['restarts_fresh']:.2f} "
          f"restarts_per_replan_retain={r['restarts_retain']:.2f}")
    return 0


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"planner benchmark on {m['platform']}, python {m['python']}, {m['usable_cpus']} usable cpus")
    print("\ninterference model fit (held-out samples)")
    for kind, fit in report["interference"].items():
        print(f"  {kind:5s} {fit['features']:40s} train {fit['train']:3d}  held {fit['n']:3d}  MAE {fit['mae']:.4f}  "
              f"max {fit['max_abs']:.4f}  rel {fit['mean_rel']:.2%}  (no model: MAE {fit['none_mae']:.4f})")
    print("\nhighest carried rate (rps; grid level in brackets; deterministic planner: 1 run each)")
    header = (f"  {'device':6s} {'scenario':13s} {'N':>2s}  {'gpulet':>14s} {'gpulet-noint':>14s} {'temporal':>14s} {'whole':>14s} "
              f"{'gpulet-first':>14s}  {'g/t':>5s}  {'winner':22s} {'noint>SLO':>9s}")
    print(header)
    keyed = {(r["device"], r["scenario"], r["devices"], r["policy"], r["interference"]): r for r in report["max_rate"]}
    cases = sorted({(r["device"], r["scenario"], r["devices"]) for r in report["max_rate"]}, key=lambda c: (c[0] != "cuda", c))
    for dev, scen, n in cases:
        cells = [keyed.get((dev, scen, n, p, on)) for p, on in POLICIES]
        text = [f"{c['total_rps']:9.0f} [{c['level']:3d}]" if c else f"{'-':>14s}" for c in cells]
        g, t = cells[0], cells[2]
        ratio = f"{g['total_rps'] / t['total_rps']:5.2f}" if g and t and t["total_rps"] > 0 else "    -"
        over = cells[1]["gpulets_over_slo_under_interference"] if cells[1] else 0
        print(f"  {dev:6s} {scen:13s} {n:2d}  {'  '.join(text)}  {ratio}  {g['strategy'] if g else '':22s} {over:9d}")
    for kind, g in report["gains"].items():
        if not g["vs_temporal"]["cases"]:
            continue
        vt, vw = g["vs_temporal"], g["vs_whole_device"]
        print(f"\n  {kind}: gpu-let / temporal: mean {vt['mean']:.3f}, geomean {vt['geomean']:.3f}, range {vt['min']:.2f}-{vt['max']:.2f} "
              f"over {len(vt['cases'])} cases")
        print(f"  {kind}: gpu-let / whole device: mean {vw['mean']:.3f}, geomean {vw['geomean']:.3f} over {len(vw['cases'])} cases "
              f"({len(vw['skipped_baseline_zero'])} cases where whole devices carry nothing left out)")
        first = g["first_packing_vs_temporal"]
        print(f"  {kind}: gpu-let with its first packing only / temporal: mean {first['mean']:.3f}, geomean {first['geomean']:.3f}")
        print(f"  {kind}: gpu-let, interference on / off: mean {g['interference_cost']:.3f} (the capacity the model's predicted slowdowns cost)")
    print("\nre-plan churn: workers restarted per re-plan while each variant's demand wanders "
          f"(x exp(N(0, {CHURN_SIGMA})) a step, {CHURN_BAND[0]:.0%}-{CHURN_BAND[1]:.0%} of the peak carried)")
    print(f"  {'device':6s} {'scenario':13s} {'N':>2s} {'steps':>5s}  {'fresh':>6s} {'retain':>6s}  {'moving re-plans':>15s}  "
          f"{'unserved fresh/retain':>21s}  {'plan ms fresh/retain':>20s}")
    for m in report["churn"]:
        f, k = m["fresh"], m["retain"]
        print(f"  {m['device']:6s} {m['scenario']:13s} {m['devices']:2d} {m['steps']:5d}  {f['restarts_per_replan']:6.2f} "
              f"{k['restarts_per_replan']:6.2f}  {f['replans_moving_workers']:7d}/{k['replans_moving_workers']:<7d}  "
              f"{f['mean_unserved_share']:10.4f}/{k['mean_unserved_share']:<10.4f}  "
              f"{1000 * f['median_plan_s']:9.2f}/{1000 * k['median_plan_s']:<9.2f}")
    print("\nplanning time (gpu-let policy, interference on; load = demand / what whole devices carry)")
    print(f"  {'devices':>7s} {'variants':>8s} {'load':>5s} {'runs':>4s} {'median s':>9s} {'min s':>8s} {'max s':>8s}  strategy")
    for t in report["planning_time"]:
        print(f"  {t['devices']:7d} {t['variants']:8d} {t['load']:5.1f} {t['runs']:4d} {t['median_s']:9.3f} {t['min_s']:8.3f} {t['max_s']:8.3f}  "
              f"{t['strategy']}{'' if t['unserved_rps'] < 1e-3 else ' (overloaded: {:.0f} rps unserved)'.format(t['unserved_rps'])}")


if __name__ == "__main__":
    raise SystemExit(main())
