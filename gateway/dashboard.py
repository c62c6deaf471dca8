"""The live dashboard's data: one JSON-ready dict assembled from what the gateway holds.

Pure: :func:`build_view` reads the routing table, the controller's latest status, the traffic
window (``Telemetry.recent()``'s shape), selection's per-context preferences and the bandit
policies' versions, and returns what the page draws. The page itself (``dashboard.html``, plain
JS and SVG, no external resources) polls that dict. Imports nothing from ``controller`` or ``agents``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from importlib import resources
from typing import Any

from gateway.redact import public_reason
from gateway.routing import RoutingView
from protocol.message import StatusReply
from protocol.types import WorkerStatus

# Traffic is drawn in bins of this many seconds: one-second counts at a few requests per second are noise.
BIN_S = 5
# Workers in these states hold a gpu-let; the others (stopped, crashed past their limit) are listed apart.
HOLDS_PARTITION = frozenset({"starting", "ready", "restarting", "draining", "stopping", "lost"})


def page() -> bytes:
    """The dashboard page: one self-contained HTML document."""
    return resources.files("gateway").joinpath("dashboard.html").read_bytes()


def build_view(
    *, routing: RoutingView, reachable: Collection[str], status: StatusReply | None, status_age_s: float | None,
    recent: Mapping[str, Any] | None, preferences: Mapping[str, list[dict]], policy_versions: Mapping[str, int],
    now_s: float,
) -> dict[str, Any]:
    """Everything the dashboard shows, at wall-clock time ``now_s``.

    ``reachable``: workers whose heartbeats reach this gateway. ``status``: the controller's
    latest StatusReply, ``status_age_s`` old (None before the first). ``recent``: the traffic
    window (None when there is none). ``preferences``: :meth:`PreferenceTally.view`.
    """
    devices, elsewhere = _devices(routing, set(reachable), status)
    return {
        "now": now_s,
        "routing_version": routing.version,
        "routing_received": routing.received,
        "status_age_s": None if status_age_s is None else round(status_age_s, 1),
        "controller_epoch": status.controller_epoch if status else None,
        "devices": devices,
        "other_workers": elsewhere,
        "traffic": _traffic(recent, now_s),
        "families": _families(routing, recent),
        "bandit": _bandit(routing, preferences, policy_versions),
        "replans": _replans(status, status_age_s or 0.0),
        "unavailable": {v: public_reason(why) for v, why in sorted((status.unavailable if status else {}).items())},
    }


def _gpulet(worker_id: str, state: str, variants: tuple[str, ...], size: float, detail: str, routing: RoutingView,
            reachable: set[str]) -> dict[str, Any]:
    route = routing.workers.get(worker_id)
    return {
        "worker": worker_id,
        "state": state,
        "size": size,
        "detail": detail,
        "routed": route is not None and not route.draining,
        "reachable": worker_id in reachable,
        "variants": [{"name": v, "weight": round(route.weights.get(v, route.weight), 3) if route else 0.0,
                      "accuracy": routing.models[v].accuracy if v in routing.models else None} for v in variants],
    }


def _partition_size(w: WorkerStatus) -> tuple[float, str]:
    p = w.partition
    if p.kind == "cuda":
        percent = p.mps_percent or 100
        return float(percent), f"MPS {percent}%"
    cores = ",".join(str(c) for c in p.cores)
    return float(len(p.cores) or 1), f"cores {cores}" if len(p.cores) != 1 else f"core {cores}"


def _devices(routing: RoutingView, reachable: set[str], status: StatusReply | None) -> tuple[list[dict], list[dict]]:
    """Devices (each with its gpu-lets, in partition order), and workers not on a known device.

    Before the controller's status arrives, only the routing table is known: its workers are
    listed apart, grouped by nothing, in state "routed".
    """
    if status is None:
        return [], [_gpulet(w, "routed", r.variants, 1.0, r.agent_id, routing, reachable)
                    for w, r in sorted(routing.workers.items())]
    devices: dict[tuple[str, str], dict[str, Any]] = {}
    for agent in status.agents:
        for d in agent.devices:
            capacity = 100.0 if d.kind == "cuda" else float(d.cores)
            devices[(agent.agent_id, d.device_id)] = {
                "agent": agent.agent_id, "host": agent.hostname, "alive": agent.alive, "device": d.device_id,
                "kind": d.kind, "name": d.name, "capacity": capacity, "unit": "%" if d.kind == "cuda" else "cores",
                "gpulets": [], "used": 0.0,
            }
    elsewhere = []
    known = set()
    for w in sorted(status.workers, key=lambda w: (min(w.partition.cores, default=0), w.worker_id)):
        known.add(w.worker_id)
        size, detail = _partition_size(w)
        gpulet = _gpulet(w.worker_id, str(w.state), w.variants, size, detail, routing, reachable)
        gpulet["restarts"] = w.restarts
        gpulet["slowdown"] = {v: round(x, 3) for v, x in sorted(w.slowdown.items())}
        device = devices.get((w.agent_id, w.partition.device_id))
        if device is None or str(w.state) not in HOLDS_PARTITION:
            elsewhere.append(gpulet)
            continue
        device["gpulets"].append(gpulet)
        device["used"] += size
    for w, r in sorted(routing.workers.items()):  # routed, but newer than the status
        if w not in known:
            elsewhere.append(_gpulet(w, "routed", r.variants, 1.0, r.agent_id, routing, reachable))
    return list(devices.values()), elsewhere


def _traffic(recent: Mapping[str, Any] | None, now_s: float) -> dict[str, Any] | None:
    """Request rate, SLO attainment and effective accuracy per ``BIN_S`` bin, oldest first.

    SLO attainment is the share of a bin's accepted requests answered 200 within their deadline
    (late, 504, shed and failed ones all count against it; invalid ones, the client's 4xx, do not);
    effective accuracy is the mean accuracy of the variants that answered. A bin without requests
    has neither.
    """
    series = (recent or {}).get("series") or []
    if not series:
        return None
    keys = ("requests", "ok", "late", "deadline_missed", "shed", "errors", "invalid", "accuracy_sum", "accuracy_n")
    bins: dict[int, dict[str, float]] = {}
    now = int(now_s)
    first = max(int(series[0]["t"]), now - 3600)  # bounded even if a clock jumped
    series = [p for p in series if first <= int(p["t"]) <= now]
    for t in range(first // BIN_S * BIN_S, now + 1, BIN_S):
        bins[t] = dict.fromkeys(keys, 0)  # every bin from the oldest second to now: a quiet spell draws as 0
        bins[t]["done"] = 0
    for point in series:
        b = bins[int(point["t"]) // BIN_S * BIN_S]
        for key in keys:
            b[key] += point.get(key, 0)
        if int(point["t"]) < now:
            b["done"] += point.get("requests", 0)
    points = []
    for t in sorted(bins):
        b = bins[t]
        # A rate over the whole seconds of the bin the window holds (the oldest and newest bins may
        # hold part of theirs): the second in progress counts once it is over (counted as a whole
        # second, its first requests read as a rate far below the real one); a bin of that second
        # alone has no rate yet.
        seconds = min(t + BIN_S, now) - max(t, first)
        requests = b["requests"]
        points.append({
            "t": t,
            "rate": round(b["done"] / seconds, 3) if seconds > 0 else None,
            "slo": round(b["ok"] / (requests - b["invalid"]), 4) if requests > b["invalid"] else None,
            "accuracy": round(b["accuracy_sum"] / b["accuracy_n"], 4) if b["accuracy_n"] else None,
            "requests": requests, "ok": b["ok"], "late": b["late"], "deadline_missed": b["deadline_missed"],
            "shed": b["shed"], "errors": b["errors"], "invalid": b["invalid"],
        })
    totals = {k: sum(p[k] for p in points)
              for k in ("requests", "ok", "late", "deadline_missed", "shed", "errors", "invalid")}
    acc_n = sum(p.get("accuracy_n", 0) for p in series)
    accepted = totals["requests"] - totals["invalid"]
    totals["slo"] = round(totals["ok"] / accepted, 4) if accepted else None
    totals["accuracy"] = round(sum(p.get("accuracy_sum", 0.0) for p in series) / acc_n, 4) if acc_n else None
    window = now - first + 1
    return {"bin_s": BIN_S, "window_s": max(window, 0), "points": points, "totals": totals}


def _families(routing: RoutingView, recent: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Per family: each variant's accuracy, its share of the family's recent requests, and the
    plan's cap on that share; the share the plan sheds."""
    observed = (recent or {}).get("families") or {}
    out = []
    for family, models in sorted(routing.families.items()):
        seen = observed.get(family, {})
        counts = seen.get("variants", {})
        total = sum(counts.values())
        caps = routing.family_fractions.get(family, {})
        out.append({
            "family": family,
            "requests": seen.get("requests", 0),
            "slo": round(seen["slo_met"] / seen["requests"], 4) if seen.get("requests") else None,
            "shed": routing.shed.get(family, 0.0),
            "variants": [{"name": m.name, "accuracy": m.accuracy, "requests": counts.get(m.name, 0),
                          "share": round(counts.get(m.name, 0) / total, 4) if total else None,
                          "cap": caps.get(m.name)} for m in models],
        })
    return out


def _bandit(routing: RoutingView, preferences: Mapping[str, list[dict]],
            versions: Mapping[str, int]) -> list[dict[str, Any]]:
    return [{"family": family, "policy_version": versions.get(family, 0), "contexts": preferences.get(family, [])}
            for family in sorted(set(routing.families) | set(preferences))]


def _replans(status: StatusReply | None, age_s: float) -> list[dict[str, Any]]:
    if status is None:
        return []
    return [{"ago_s": round(r.ago_s + age_s, 1), "reason": r.reason, "policy": r.policy, "kept": r.kept,
             "started": r.started, "retired": r.retired, "scaled": r.scaled,
             "effective_accuracy": r.effective_accuracy if r.scaled else None,
             "shed": dict(r.shed), "finished": r.finished} for r in status.replans]
