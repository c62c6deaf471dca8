"""Variant selection by QoE feedback: the VW contextual bandit against Exp3, the best fixed variant and an oracle.

A simulated stream of requests to a digits-like family of four variants. Each request has a
context (app, device class, an irrelevant user segment), a deadline budget and a load; the app's
satisfaction (QoE) depends on the variant's accuracy, its latency against the budget and, for some
apps and devices, its energy. Halfway through, a co-located job slows the two big variants on
servers and the battery-saver app's users start to value accuracy over battery. Every policy sees
the same requests, the same candidate sets (profiles plus Kalman slowdown trackers fed by the
mesh's other traffic) and the same reward noise, so their differences are their choices alone.
"vw" is the product's loop (a learner, and a deciding replica refreshed from its snapshots every
--sync-every decisions); "vw_online" decides with the learner itself, to show what the lag costs.

Prints a table and writes JSON plus a PNG of the curves; ends with one ``RESULT`` line (ratios of
cumulative QoE after the run's decisions, 5,000 by default). Asserts nothing.

Run: ``python benchmarks/bandit.py [--quick]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.support.bandit_world import APPS, BUDGETS_MS, DEVICES, JITTER_SIGMA, NOISE_SD, VARIANTS, Step, world
from benchmarks.support.report import write_json
from mesh.bandit import DEFAULT_VW_ARGS, VW_VERSION, BanditPolicy

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bandit.json"
POLICIES = ("vw", "vw_online", "exp3", "best_fixed", "oracle")

EXP3_ETA = 0.01  # Clipper's hard-coded learning rate


# --- the policies -----------------------------------------------------------------------------

def run_vw(steps: list[Step], seed: int, vw_args: str, sync_every: int) -> list[int]:
    """The product's loop: a learner updates on every reward; a replica decides and is refreshed from
    the learner's snapshot every ``sync_every`` decisions (0: decide with the learner itself)."""
    rng = random.Random(seed)
    chosen = []
    with BanditPolicy(vw_args) as learner:
        replica = BanditPolicy(vw_args, model=learner.snapshot()) if sync_every else None
        try:
            for t, s in enumerate(steps):
                if replica is not None and t and t % sync_every == 0:
                    replica.close()
                    replica = BanditPolicy(vw_args, model=learner.snapshot())
                d = (replica or learner).decide(s.context, s.budget_ms, s.load, s.candidates, rng=rng)
                learner.learn(s.context, s.budget_ms, s.load, s.candidates, d.chosen,
                              float(s.reward[s.index[d.chosen]]), d.probability)
                chosen.append(s.index[d.chosen])
        finally:
            if replica is not None:
                replica.close()
    return chosen


def run_exp3(steps: list[Step], seed: int) -> list[int]:
    """Clipper's Exp3: one weight per variant for all contexts, loss divided by its probability."""
    rng = random.Random(seed)
    log_w = np.zeros(len(VARIANTS))
    chosen = []
    for s in steps:
        idx = np.array(s.index)
        w = np.exp(log_w[idx] - log_w[idx].max())
        p = w / w.sum()
        k = int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right"))
        k = min(k, len(idx) - 1)
        v = int(idx[k])
        log_w[v] -= EXP3_ETA * (1.0 - float(s.reward[v])) / p[k]
        chosen.append(v)
    return chosen


def fallback(v: int, index: tuple[int, ...]) -> int:
    """A fixed variant that is not a candidate yields to the candidate nearest it, the cheaper on a tie."""
    return min(index, key=lambda c: (abs(c - v), c))


def run_best_fixed(steps: list[Step]) -> tuple[list[int], str]:
    totals = [sum(float(s.expected[fallback(v, s.index)]) for s in steps) for v in range(len(VARIANTS))]
    best = int(np.argmax(totals))
    return [fallback(best, s.index) for s in steps], VARIANTS[best]


def run_oracle(steps: list[Step]) -> list[int]:
    return [max(s.index, key=lambda v: float(s.expected[v])) for s in steps]


# --- one seed, many seeds ----------------------------------------------------------------------

def run_seed(seed: int, decisions: int, vw_args: str, every: int, sync_every: int, feedback: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    steps, rejected = world(seed, decisions, feedback)
    t_world = time.perf_counter() - t0
    t1 = time.perf_counter()
    choices = {"vw": run_vw(steps, seed, vw_args, sync_every)}
    t_vw = time.perf_counter() - t1
    choices["vw_online"] = run_vw(steps, seed, vw_args, 0)
    choices["exp3"] = run_exp3(steps, seed)
    choices["best_fixed"], best_variant = run_best_fixed(steps)
    choices["oracle"] = run_oracle(steps)
    realised = {p: np.array([s.reward[c] for s, c in zip(steps, cs)]) for p, cs in choices.items()}
    expected = {p: np.array([s.expected[c] for s, c in zip(steps, cs)]) for p, cs in choices.items()}
    cuts = list(range(every, decisions + 1, every))
    if not cuts or cuts[-1] != decisions:
        cuts.append(decisions)
    half = decisions // 2
    contexts: dict[str, dict[str, Any]] = {}
    for i, s in enumerate(steps):
        key = f"{s.context['app']}/{s.context['device']}/{s.budget_ms:g}ms"
        entry = contexts.setdefault(key, {"n": 0, "agree": 0, "qoe": {p: 0.0 for p in POLICIES},
                                          "oracle_picks": {}, "vw_picks": {}})
        entry["n"] += 1
        entry["agree"] += int(choices["vw"][i] == choices["oracle"][i])
        for p in POLICIES:
            entry["qoe"][p] += float(expected[p][i])
        for name, p in (("oracle_picks", "oracle"), ("vw_picks", "vw")):
            v = VARIANTS[choices[p][i]]
            entry[name][v] = entry[name].get(v, 0) + 1
    return {
        "seed": seed,
        "best_fixed_variant": best_variant,
        "rejected": rejected,
        "cumulative_qoe": {p: float(realised[p].sum()) for p in POLICIES},
        "cumulative_expected_qoe": {p: float(expected[p].sum()) for p in POLICIES},
        "phase_qoe": {p: [float(expected[p][:half].sum()), float(expected[p][half:].sum())] for p in POLICIES},
        "curve_t": cuts,
        "regret": {p: [float((expected["oracle"][:c] - expected[p][:c]).sum()) for c in cuts] for p in POLICIES},
        "window_qoe": {p: [float(expected[p][max(0, c - every):c].mean()) for c in cuts] for p in POLICIES},
        "contexts": contexts,
        "seconds": {"world": t_world, "vw": t_vw, "total": time.perf_counter() - t0},
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]], options: argparse.Namespace) -> dict[str, Any]:
    def ratio(a: str, b: str, field: str = "cumulative_qoe") -> dict[str, float]:
        return spread([r[field][a] / r[field][b] for r in runs])

    ratios = {"qoe_vs_oracle": ratio("vw", "oracle"), "qoe_vs_exp3": ratio("vw", "exp3"),
              "qoe_vs_best_fixed": ratio("vw", "best_fixed")}
    phases = {name: {p: spread([r["phase_qoe"][p][k] / r["phase_qoe"]["oracle"][k] for r in runs]) for p in POLICIES}
              for k, name in enumerate(("before_change", "after_change"))}
    contexts: dict[str, dict[str, Any]] = {}
    for r in runs:
        for key, e in r["contexts"].items():
            agg = contexts.setdefault(key, {"n": 0, "agree": 0, "qoe": {p: 0.0 for p in POLICIES},
                                            "oracle_picks": {}, "vw_picks": {}})
            agg["n"] += e["n"]
            agg["agree"] += e["agree"]
            for p in POLICIES:
                agg["qoe"][p] += e["qoe"][p]
            for name in ("oracle_picks", "vw_picks"):
                for v, n in e[name].items():
                    agg[name][v] = agg[name].get(v, 0) + n
    per_context = []
    for key in sorted(contexts):
        agg = contexts[key]
        per_context.append({
            "context": key, "n": agg["n"], "vw_agrees_with_oracle": agg["agree"] / agg["n"],
            "mean_expected_qoe": {p: agg["qoe"][p] / agg["n"] for p in POLICIES},
            "oracle_favourite": max(agg["oracle_picks"], key=agg["oracle_picks"].get),
            "vw_favourite": max(agg["vw_picks"], key=agg["vw_picks"].get),
            "oracle_picks": agg["oracle_picks"], "vw_picks": agg["vw_picks"],
        })
    t = runs[0]["curve_t"]
    curves: dict[str, Any] = {"t": t, "regret": {}, "window_qoe": {}}
    for field in ("regret", "window_qoe"):
        for p in POLICIES:
            cols = np.array([r[field][p] for r in runs])
            curves[field][p] = {"median": np.median(cols, axis=0).tolist(), "min": cols.min(axis=0).tolist(),
                                "max": cols.max(axis=0).tolist()}
    result = {k: v["median"] for k, v in ratios.items()}
    return {
        "benchmark": "bandit",
        "config": {"decisions": options.decisions, "seeds": options.seeds, "vw_args": options.vw_args,
                   "sync_every": options.sync_every, "feedback": options.feedback,
                   "change_at": options.decisions // 2, "variants": list(VARIANTS), "apps": list(APPS),
                   "devices": list(DEVICES), "budgets_ms": list(BUDGETS_MS), "noise_sd": NOISE_SD,
                   "jitter_sigma": JITTER_SIGMA, "exp3_eta": EXP3_ETA, "quick": options.quick},
        "environment": {"python": platform.python_version(), "vowpalwabbit": VW_VERSION,
                        "machine": platform.machine(), "usable_cores": len(os.sched_getaffinity(0))},
        "ratios": ratios,
        "ratios_expected": {"qoe_vs_oracle": ratio("vw", "oracle", "cumulative_expected_qoe"),
                            "qoe_vs_exp3": ratio("vw", "exp3", "cumulative_expected_qoe"),
                            "qoe_vs_best_fixed": ratio("vw", "best_fixed", "cumulative_expected_qoe")},
        "cumulative_qoe": {p: spread([r["cumulative_qoe"][p] for r in runs]) for p in POLICIES},
        "regret_vs_oracle": {p: spread([r["regret"][p][-1] for r in runs]) for p in POLICIES},
        "phases_vs_oracle": phases,
        "best_fixed_variant": [r["best_fixed_variant"] for r in runs],
        "rejected_requests": [r["rejected"] for r in runs],
        "per_context": per_context,
        "curves": curves,
        "seconds_per_seed": spread([r["seconds"]["total"] for r in runs]),
        "vw_seconds_per_decision": spread([r["seconds"]["vw"] / options.decisions for r in runs]),
        "target_met": result["qoe_vs_oracle"] >= 0.95,
        "result": result,
    }


# --- output -----------------------------------------------------------------------------------

def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["curves"]
    t = curves["t"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for p in POLICIES:
        for ax, field in ((ax1, "regret"), (ax2, "window_qoe")):
            c = curves[field][p]
            ax.plot(t, c["median"], label=p)
            ax.fill_between(t, c["min"], c["max"], alpha=0.2)
    for ax in (ax1, ax2):
        ax.axvline(report["config"]["change_at"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("decisions")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("cumulative regret vs oracle (expected QoE)")
    ax2.set_ylabel("mean expected QoE per window")
    ax1.legend()
    fig.suptitle(f"QoE bandit: {report['config']['seeds']} seeds, median and range; dotted: the change")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [(f"bandit benchmark: {cfg['decisions']} decisions x {cfg['seeds']} seeds, {cfg['feedback']} feedback, "
              f"replica synced every {cfg['sync_every']}; vw {report['environment']['vowpalwabbit']} {cfg['vw_args']}"),
             "", (f"{'policy':<11} {'cum QoE (median)':>17} {'range':>19} {'regret':>8} {'before/oracle':>14} "
                  f"{'after/oracle':>13}")]
    for p in POLICIES:
        c, r = report["cumulative_qoe"][p], report["regret_vs_oracle"][p]
        b, a = report["phases_vs_oracle"]["before_change"][p], report["phases_vs_oracle"]["after_change"][p]
        lines.append(f"{p:<11} {c['median']:>17.1f} {c['min']:>9.1f}..{c['max']:<8.1f} {r['median']:>8.1f} "
                     f"{b['median']:>14.3f} {a['median']:>13.3f}")
    lines += ["", ("mean expected QoE per decision, by context (favourite = most frequent choice; agree = share "
                   "of VW's choices equal to the oracle's)"),
              (f"{'app/device/budget':<29} {'oracle favourite':<16} {'vw favourite':<14} {'agree':>5} "
               + " ".join(f"{p:>10}" for p in POLICIES))]
    for e in report["per_context"]:
        q = e["mean_expected_qoe"]
        lines.append(f"{e['context']:<29} {e['oracle_favourite']:<16} {e['vw_favourite']:<14} "
                     f"{e['vw_agrees_with_oracle']:>5.0%} " + " ".join(f"{q[p]:>10.3f}" for p in POLICIES))
    lines.append("")
    for k, v in report["ratios"].items():
        lines.append(f"{k:<18} median {v['median']:.4f}  range {v['min']:.4f}..{v['max']:.4f}")
    lines.append(f"best fixed variant per seed: {', '.join(sorted(set(report['best_fixed_variant'])))}; "
                 f"VW {report['vw_seconds_per_decision']['median'] * 1e6:.0f} us per decision "
                 "(decide, learn, snapshots); "
                 f"{report['seconds_per_seed']['median']:.1f} s per seed")
    lines.append("target (>= 0.95 of the oracle): " + ("met" if report["target_met"] else "NOT met"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer seeds (about a minute), same code path")
    p.add_argument("--decisions", type=int, default=5000, help="decisions per seed (default 5000)")
    p.add_argument("--seeds", type=int, help="independent runs (default 10, quick 3)")
    p.add_argument("--vw-args", default=DEFAULT_VW_ARGS, help="VW arguments of the selector under test")
    p.add_argument("--sync-every", type=int, default=100,
                   help="decisions between policy snapshots pushed to the deciding replica (default 100)")
    p.add_argument("--feedback", choices=("graded", "binary"), default="graded",
                   help="graded: QoE plus noise (default); binary: satisfied or not, with probability QoE")
    p.add_argument("--every", type=int, default=100, help="decisions between curve points")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path (the PNG goes beside it)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    options = p.parse_args(argv)
    if options.seeds is None:
        options.seeds = 3 if options.quick else 10
    if options.decisions < 2 or options.seeds < 1 or options.every < 1 or options.sync_every < 1:
        p.error("--decisions needs at least 2; --seeds, --every and --sync-every at least 1")
    runs = [run_seed(1000 + k, options.decisions, options.vw_args, options.every, options.sync_every, options.feedback)
            for k in range(options.seeds)]
    report = summarise(runs, options)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    png = options.out.with_suffix(".png")
    report["plot"] = None
    if not options.no_plot:
        try:
            plot(report, png)
            report["plot"] = str(png)
        except ImportError:
            print("matplotlib is not installed: no PNG (pip install matplotlib)", file=sys.stderr)
    write_json(options.out, report)
    print(table(report))
    print(f"wrote {options.out}" + (f" and {png}" if report["plot"] else ""))
    r = report["result"]
    print(f"RESULT qoe_vs_oracle={r['qoe_vs_oracle']:.4f} qoe_vs_exp3={r['qoe_vs_exp3']:.4f} "
          f"qoe_vs_best_fixed={r['qoe_vs_best_fixed']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
