"""The resize-gap benchmark's record and report: what each resize went through, the analysis of the
request record around it (gaps, latencies, failures by phase) and the printed table. Pure
functions of the record and the event times; :mod:`benchmarks.resize_gap` runs the mesh and the load.
"""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Each re-plan switches policy, so each one resizes: 1-core gpu-lets <-> one whole-device worker.
POLICY_CYCLE = ("temporal", "gpulet")
GSLICE_GAP_MS = 0.1  # GSLICE (SoCC 2020): GPU re-allocation downtime "< 100 us"
TOP_GAPS = 5


@dataclass(slots=True)
class LoadRecord:
    """Every request of the run in completion order: monotonic ns and HTTP status (0: connection lost)."""

    sent_ns: list[int] = field(default_factory=list)
    done_ns: list[int] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    variant: list[str] = field(default_factory=list)  # letmesh_variant of a 200 reply, else ""
    errors: list[tuple[int, int, str]] = field(default_factory=list)  # (done ns, status, message) of the rest
    sent: int = 0
    unanswered: int = 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sent, done, status), sorted by completion time."""
        sent, done, status = (np.asarray(v, dtype=np.int64) for v in (self.sent_ns, self.done_ns, self.status))
        order = np.argsort(done, kind="stable")
        return sent[order], done[order], status[order]


def describe_layout(workers: list[dict[str, Any]]) -> str:
    """'1c+1c*': the core count of each ready worker, '*' on those serving the loaded variant."""
    ready = [w for w in workers if w["state"] == "ready"]
    return "+".join(f"{len(w['cores'])}c{'*' if w['serves_load'] else ''}" for w in ready) or "none"


@dataclass(slots=True)
class ResizeEvents:
    """Monotonic ns of what a resize went through, as seen by polling the controller's status."""

    policy: str
    command_ns: int
    reply_ns: int = 0
    new_seen_ns: int = 0  # the new workers appear (starting)
    new_ready_ns: int = 0  # every new worker ready
    switch_ns: int = 0  # old workers marked draining: routing has moved to the new ones
    done_ns: int = 0  # the old workers are gone; nothing draining or stopping
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)
    new_workers: list[str] = field(default_factory=list)
    retired_workers: list[str] = field(default_factory=list)
    polls: int = 0
    # Liveness as the controller saw it: an agent it declares lost takes its workers out of routing.
    agent_silence_max_s: float = 0.0
    agent_lost_ns: int = 0
    states_seen: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # worker -> (state, first ns)


# --- analysis: pure functions of the request record and the event times ----------------------------


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else 0.0


def interval_stats(done_ns: np.ndarray, start_ns: int, end_ns: int) -> dict[str, float]:
    """Inter-completion intervals (ms) with both completions inside [start, end); ``done_ns`` sorted."""
    t = done_ns[(done_ns >= start_ns) & (done_ns < end_ns)]
    gaps = np.diff(t) / 1e6
    return {"n": int(gaps.size), "p50_ms": _pct(gaps, 50), "p99_ms": _pct(gaps, 99), "p999_ms": _pct(gaps, 99.9),
            "max_ms": float(gaps.max()) if gaps.size else 0.0}


def gaps_overlapping(done_ns: np.ndarray, start_ns: int, end_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Intervals between consecutive completions that overlap [start, end]: (lengths ns, start ns).

    The completion just before ``start`` and the one just after ``end`` count, so a stall that
    began before the window or outlasted it is measured whole. ``done_ns`` sorted.
    """
    lo = max(int(np.searchsorted(done_ns, start_ns, side="left")) - 1, 0)
    hi = min(int(np.searchsorted(done_ns, end_ns, side="right")) + 1, done_ns.size)
    t = done_ns[lo:hi]
    if t.size < 2:  # nothing completed around the window: all of it is a gap
        return np.asarray([end_ns - start_ns], dtype=np.int64), np.asarray([start_ns], dtype=np.int64)
    return np.diff(t), t[:-1]


def longest_gap(done_ns: np.ndarray, start_ns: int, end_ns: int) -> tuple[float, int]:
    """The longest interval overlapping [start, end]: (ms, the ns it began)."""
    lengths, starts = gaps_overlapping(done_ns, start_ns, end_ns)
    i = int(lengths.argmax())
    return float(lengths[i]) / 1e6, int(starts[i])


def latency_stats(sent_ns: np.ndarray, done_ns: np.ndarray) -> dict[str, float]:
    lat = (done_ns - sent_ns) / 1e6
    return {"n": int(lat.size), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "max_ms": float(lat.max()) if lat.size else 0.0}


def phase_at(t_ns: int, ev: ResizeEvents) -> str:
    """Which part of a resize a moment falls in."""
    if t_ns < ev.command_ns:
        return "before"
    if t_ns < ev.switch_ns:
        return "start-up"  # new workers loading and warming up; old ones serving everything
    if t_ns < ev.done_ns:
        return "drain"  # routing moved; old workers finish what they hold, then stop
    return "after"


def failure_kinds(errors: list[tuple[int, int, str]], ev: ResizeEvents, start_ns: int,
                  end_ns: int) -> list[dict[str, Any]]:
    """Failed requests in [start, end] grouped by status and message, with when they began and ended."""
    kinds: dict[tuple[int, str], dict[str, Any]] = {}
    for done, status, message in errors:
        if not start_ns <= done <= end_ns:
            continue
        text = "".join("#" if ch.isdigit() else ch for ch in message)  # ids and counts would split a kind
        at = (done - ev.command_ns) / 1e9
        kind = kinds.setdefault((status, text), {"status": status, "message": text, "count": 0, "first_s": at})
        kind["count"] += 1
        kind["last_s"] = at
    return sorted(kinds.values(), key=lambda k: -k["count"])


def analyse_resize(rec: tuple[np.ndarray, np.ndarray, np.ndarray], errors: list[tuple[int, int, str]],
                   ev: ResizeEvents, *, steady_from_ns: int, window_end_ns: int) -> dict[str, Any]:
    """One resize: the switch window [command, window end] against the steady phase before it."""
    sent, done, status = rec
    ok = status == 200
    ok_done = done[ok]
    steady = (done >= steady_from_ns) & (done < ev.command_ns)
    switch = (done >= ev.command_ns) & (done <= window_end_ns)
    steady_gaps = interval_stats(ok_done, steady_from_ns, ev.command_ns)
    gap_ms, gap_at = longest_gap(ok_done, ev.command_ns, window_end_ns)
    lengths, starts = gaps_overlapping(ok_done, ev.command_ns, window_end_ns)
    top = np.argsort(lengths)[::-1][:TOP_GAPS]
    phases = {"start-up": (ev.command_ns, ev.switch_ns), "drain": (ev.switch_ns, ev.done_ns),
              "after": (ev.done_ns, window_end_ns)}
    steady_s = (ev.command_ns - steady_from_ns) / 1e9
    switch_s = (window_end_ns - ev.command_ns) / 1e9
    failed = status[switch & ~ok]

    def rel(t_ns: int) -> float:
        return (t_ns - ev.command_ns) / 1e9

    return {
        "policy": ev.policy,
        "from": describe_layout(ev.before),
        "to": describe_layout(ev.after),
        "layout_before": ev.before,
        "layout_after": ev.after,
        "new_workers": ev.new_workers,
        "retired_workers": ev.retired_workers,
        "loaded_variant_served_after": any(w["serves_load"] and w["state"] == "ready" for w in ev.after),
        "timeline_s": {"reply": rel(ev.reply_ns), "new_seen": rel(ev.new_seen_ns), "new_ready": rel(ev.new_ready_ns),
                       "switch": rel(ev.switch_ns), "old_gone": rel(ev.done_ns), "window_end": rel(window_end_ns)},
        "status_polls": ev.polls,
        "agent_silence_max_s": ev.agent_silence_max_s,
        "agent_lost_at_s": rel(ev.agent_lost_ns) if ev.agent_lost_ns else None,
        "worker_states_seen": {w: [[state, rel(t)] for state, t in seen] for w, seen in ev.states_seen.items()},
        # A new worker seen lost: routing dropped the worker carrying the load (its agent was declared lost).
        "new_workers_lost": [w for w in ev.new_workers if any(st == "lost" for st, _ in ev.states_seen.get(w, []))],
        "gap_ms": gap_ms,
        "gap_at_s": rel(gap_at),
        "gap_phase": phase_at(gap_at, ev),
        "gap_by_phase_ms": {p: longest_gap(ok_done, a, b)[0] if b > a else 0.0 for p, (a, b) in phases.items()},
        "top_gaps": [{"ms": float(lengths[i]) / 1e6, "at_s": rel(int(starts[i])), "phase": phase_at(int(starts[i]), ev)}
                     for i in top],
        "gap_over_steady_p99": gap_ms / steady_gaps["p99_ms"] if steady_gaps["p99_ms"] > 0 else None,
        "gap_minus_steady_max_ms": gap_ms - steady_gaps["max_ms"],
        "steady": {
            "seconds": steady_s,
            "intervals": steady_gaps,
            "latency": latency_stats(sent[steady & ok], done[steady & ok]),
            "rps": int((steady & ok).sum()) / steady_s if steady_s > 0 else 0.0,
            "failed": int((steady & ~ok).sum()),
        },
        "switch": {
            "seconds": switch_s,
            "requests": int(switch.sum()),
            "latency": latency_stats(sent[switch & ok], done[switch & ok]),
            "rps": int((switch & ok).sum()) / switch_s if switch_s > 0 else 0.0,
            "failed": int(failed.size),
            "failed_statuses": {str(s): int((failed == s).sum()) for s in np.unique(failed)},
            "failures": failure_kinds(errors, ev, ev.command_ns, window_end_ns),
        },
    }


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median": 0.0, "min": 0.0, "max": 0.0, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


SUMMARY_FIGURES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "gap_ms": lambda r: r["gap_ms"],
    # When the controller declares the agent lost it takes the new workers out of routing: those
    # resizes apart, so the switch's own gap is visible whether or not that happened.
    "gap_routed_ms": lambda r: None if r["new_workers_lost"] else r["gap_ms"],
    "gap_unrouted_ms": lambda r: r["gap_ms"] if r["new_workers_lost"] else None,
    "gap_start_up_ms": lambda r: r["gap_by_phase_ms"]["start-up"],
    "gap_drain_ms": lambda r: r["gap_by_phase_ms"]["drain"],
    "gap_after_ms": lambda r: r["gap_by_phase_ms"]["after"],
    "steady_gap_p50_ms": lambda r: r["steady"]["intervals"]["p50_ms"],
    "steady_gap_p99_ms": lambda r: r["steady"]["intervals"]["p99_ms"],
    "steady_gap_max_ms": lambda r: r["steady"]["intervals"]["max_ms"],
    "gap_over_steady_p99": lambda r: r["gap_over_steady_p99"],
    "gap_minus_steady_max_ms": lambda r: r["gap_minus_steady_max_ms"],
    "switch_s": lambda r: r["timeline_s"]["switch"],
    "old_gone_s": lambda r: r["timeline_s"]["old_gone"],
    "steady_latency_p50_ms": lambda r: r["steady"]["latency"]["p50_ms"],
    "switch_latency_p50_ms": lambda r: r["switch"]["latency"]["p50_ms"],
    "steady_latency_p99_ms": lambda r: r["steady"]["latency"]["p99_ms"],
    "switch_latency_p99_ms": lambda r: r["switch"]["latency"]["p99_ms"],
    "steady_rps": lambda r: r["steady"]["rps"],
    "switch_rps": lambda r: r["switch"]["rps"],
}


def summarise(resizes: list[dict[str, Any]], rec: LoadRecord, load_s: float) -> dict[str, Any]:
    """Median and range over resizes of every figure, and the request counts of the whole run."""
    summary = {}
    for key, figure in SUMMARY_FIGURES.items():
        summary[key] = spread([v for r in resizes if (v := figure(r)) is not None])
    status = np.asarray(rec.status, dtype=np.int64)
    counts = {
        "sent": rec.sent,
        "answered": int(status.size),
        "unanswered": rec.unanswered,
        "ok": int((status == 200).sum()),
        "failed": int((status != 200).sum()),
        "failed_in_switch_windows": sum(r["switch"]["failed"] for r in resizes),
        "statuses": {str(s): int((status == s).sum()) for s in np.unique(status)},
        "load_seconds": load_s,
    }
    return {"summary": summary, "counts": counts}


# --- report ------------------------------------------------------------------------------------


def interpretation(report: dict[str, Any]) -> list[str]:
    s, env = report["summary"], report["environment"]
    gap, p99, smax = s["gap_ms"]["median"], s["steady_gap_p99_ms"]["median"], s["steady_gap_max_ms"]["median"]
    phases = sorted({r["gap_phase"] for r in report["resizes"]})
    where = ", ".join(f"{sum(r['gap_phase'] == p for r in report['resizes'])} in {p}" for p in phases)
    own = s["gap_routed_ms"]["median"] if s["gap_routed_ms"]["n"] else gap
    routed = (f"{s['gap_routed_ms']['median']:.2f} ms median over the {s['gap_routed_ms']['n']} resizes where the new "
              "workers stayed routed;" if s["gap_unrouted_ms"]["n"] and s["gap_routed_ms"]["n"] else "")
    points = [
        f"Routing moves only once the new workers are ready, so the {s['switch_s']['median']:.2f} s from command to "
        "switch is worker start-up (process, model load, warm-up) while the old workers keep serving: not downtime.",
        f"The serving gap, {gap:.2f} ms median, is the longest wait between two answers anywhere in the switch "
        f"window (largest gaps: {where}); {routed} the same load in steady state shows p99 {p99:.2f} ms and max "
        f"{smax:.2f} ms. On this CPU the switch's gap is bounded by the HTTP -> gateway -> ZeroMQ -> worker path "
        "and by "
        f"{env['usable_cores']} cores shared among the old and new worker processes, gateway, controller, agent "
        "and clients: a new worker's start-up and warm-up compete with serving, while the routing flip itself is "
        "one routing-table update at the gateway and the old workers finish what they hold.",
        f"GSLICE reports GPU re-allocation downtime under {GSLICE_GAP_MS * 1000:.0f} us (standby process, shared "
        f"weights, MPS). The switch's gap here, {own:.2f} ms, is {own / GSLICE_GAP_MS:.0f}x that figure, but it is "
        "a different quantity on "
        "different hardware: the max inter-completion interval of closed-loop load on a shared 2-core CPU, where "
        f"even steady serving has a {smax:.2f} ms max. Compare it with the steady figures, not with the GPU "
        "number; the GPU measurement (E10: MPS resize, standby with shared weights) needs an MPS-capable device.",
    ]
    lost = [r for r in report["resizes"] if r["new_workers_lost"]]
    if lost:
        failed = sum(r["switch"]["failed"] for r in lost)
        points.append(
            f"In {len(lost)} of {len(report['resizes'])} resizes the controller heard no heartbeat from the agent "
            f"for up to {max(r['agent_silence_max_s'] for r in lost):.1f} s while it stopped the retired workers, "
            "declared it lost and took its workers, the new one serving the load included, out of routing until "
            f"it heard from it again: {failed} requests failed in those resizes and their gaps "
            f"({s['gap_unrouted_ms']['median']:.0f} ms median) are that outage, not the switch "
            f"({s['gap_routed_ms']['median']:.1f} ms median where the new workers stayed routed).")
    lines = ["What this means:"]
    for point in points:
        lines += textwrap.wrap(point, width=116, initial_indent="  - ", subsequent_indent="    ")
    return lines


def render(report: dict[str, Any]) -> str:
    env, o, s, c = report["environment"], report["options"], report["summary"], report["counts"]
    lines = [
        f"letmesh resize gap: make-before-break re-plans under steady closed-loop load "
        f"({'quick' if o['quick'] else 'full'} run)",
        f"machine: {env['cpu_model']}, {env['usable_cores']} usable cores shared by the clients, gateway, controller, "
        f"agent and workers; load average {env['loadavg_at_start'][0]:.2f} at start, "
        f"{report['loadavg_at_end'][0]:.2f} at end",
        f"software: python {env['python']}, torch {env['torch']}, aiohttp {env['aiohttp']}, "
        f"pyzmq {env['pyzmq']} (libzmq {env['libzmq']})",
        f"mesh: serving {', '.join(report['served_models'])}; load: {o['clients']} closed-loop clients "
        f"(keep-alive HTTP/1.1) on {report['request']}; deadline: "
        + ("the model's default" if o["slo_ms"] is None else f"letmesh_slo_ms={o['slo_ms']:g}"),
        f"resizes: {len(report['resizes'])} operator re-plans alternating {' / '.join(POLICY_CYCLE)}, "
        f"{o['steady_s']:g} s steady phase before each; switch window: command until {o['tail_s']:g} s after the old "
        f"workers stopped; setup {report['setup_s']:.0f} s (start, profiling, first plan)",
        "  layout: cores of each ready worker, * = serves the loaded variant; times in s after the command",
        "",
        f"  {'#':>2} {'policy':<9} {'layout':<13} {'switch':>6} {'gone':>5} {'gap ms':>8} {'at':>6} {'phase':<8}"
        f" {'steady gap ms':>20} {'lat p99 ms':>12} {'req/s':>10} {'failed':>6}",
        f"  {'':>2} {'':<9} {'':<13} {'':>6} {'':>5} {'':>8} {'':>6} {'':<8}"
        f" {'p50/p99/max':>20} {'steady->sw':>12} {'steady->sw':>10} {'':>6}",
    ]
    for i, r in enumerate(report["resizes"], 1):
        st = r["steady"]["intervals"]
        steady_gap = f"{st['p50_ms']:.2f}/{st['p99_ms']:.2f}/{st['max_ms']:.2f}"
        lat = f"{r['steady']['latency']['p99_ms']:.1f}->{r['switch']['latency']['p99_ms']:.1f}"
        rps = f"{r['steady']['rps']:.0f}->{r['switch']['rps']:.0f}"
        lines.append(
            f"  {i:>2} {r['policy']:<9} {r['from'] + '->' + r['to']:<13} {r['timeline_s']['switch']:>6.2f} "
            f"{r['timeline_s']['old_gone']:>5.2f} {r['gap_ms']:>8.2f} {r['gap_at_s']:>6.2f} {r['gap_phase']:<8}"
            f" {steady_gap:>20} {lat:>12} {rps:>10} {r['switch']['failed']:>6}")

    def row(label: str, key: str, unit: str, fmt: str = ".2f") -> str:
        v = s[key]
        return f"  {label:<50} {v['median']:>9{fmt}} {unit:<4} [{v['min']:{fmt}}-{v['max']:{fmt}}]"

    lines += [
        "",
        f"  over {len(report['resizes'])} resizes: median [min-max]",
        row("serving gap: max inter-completion in switch window", "gap_ms", "ms"),
        row(f"  resizes where the new workers stayed routed (n={s['gap_routed_ms']['n']})", "gap_routed_ms", "ms"),
        row(f"  resizes where they left routing: agent lost (n={s['gap_unrouted_ms']['n']})", "gap_unrouted_ms",
            "ms"),
        row("  largest gap during start-up (old serving)", "gap_start_up_ms", "ms"),
        row("  largest gap from routing switch to old gone", "gap_drain_ms", "ms"),
        row("  largest gap after the old workers stopped", "gap_after_ms", "ms"),
        row("steady inter-completion p50", "steady_gap_p50_ms", "ms", ".3f"),
        row("steady inter-completion p99", "steady_gap_p99_ms", "ms"),
        row("steady inter-completion max", "steady_gap_max_ms", "ms"),
        row("gap / steady p99", "gap_over_steady_p99", "x", ".1f"),
        row("gap - steady max", "gap_minus_steady_max_ms", "ms"),
        row("command -> routing switch (new workers ready)", "switch_s", "s"),
        row("command -> old workers gone", "old_gone_s", "s"),
        row("latency p50, steady", "steady_latency_p50_ms", "ms"),
        row("latency p50, switch window", "switch_latency_p50_ms", "ms"),
        row("latency p99, steady", "steady_latency_p99_ms", "ms"),
        row("latency p99, switch window", "switch_latency_p99_ms", "ms"),
        row("throughput, steady", "steady_rps", "r/s", ".0f"),
        row("throughput, switch window", "switch_rps", "r/s", ".0f"),
        "",
        f"  requests: {c['sent']} sent, {c['answered']} answered, {c['unanswered']} unanswered; statuses "
        f"{c['statuses']}; failed (not 200): {c['failed']}, in switch windows: {c['failed_in_switch_windows']}",
    ]
    for i, r in enumerate(report["resizes"], 1):
        for k in r["switch"]["failures"]:
            lines.append(f"  resize {i}: {k['count']} x {k['status']} from {k['first_s']:.2f} s to "
                         f"{k['last_s']:.2f} s: {k['message'] or '(no message)'}")
    for i, r in enumerate(report["resizes"], 1):
        if r["agent_lost_at_s"] is not None:
            lost = sorted(w for w, seen in r["worker_states_seen"].items() if any(st == "lost" for st, _ in seen))
            lines.append(f"  resize {i}: the controller heard nothing from the agent for up to "
                         f"{r['agent_silence_max_s']:.1f} s and declared it lost at {r['agent_lost_at_s']:.2f} s; "
                         f"workers seen lost (out of routing): {', '.join(lost) or 'none'}")
    dropped = [i for i, r in enumerate(report["resizes"], 1) if not r["loaded_variant_served_after"]]
    if dropped:
        lines.append(f"  WARNING: the plan of resize(s) {dropped} left {o['variant']} without a worker (requests "
                     "fail until the next re-plan; see the profiles in the JSON)")
    if c["failed"] or c["unanswered"]:
        lines.append("  WARNING: requests failed (0: connection lost, 503: no worker ready or overloaded, "
                     "504: deadline passed)")
    lines += ["", *interpretation(report), "", f"JSON: {report['out']}"]
    return "\n".join(lines)
