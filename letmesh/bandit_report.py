"""``letmesh bandit report``: learned preferences per context, and the learned policy's estimated
value against the policy that made the logged decisions (inverse propensity and doubly robust).

Reads the controller's state folder directly (the SQLite decision log and the saved models), so
it works while the controller runs and after it has stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from controller.learner import candidates_of
from controller.offpolicy import LoggedDecision, evaluate, policy_target, preferences
from controller.store import StateStore
from mesh.bandit import DEFAULT_VW_ARGS, BadModel, BanditPolicy


def _logged(store: StateStore, family: str, limit: int) -> list[LoggedDecision]:
    return [
        LoggedDecision(context=dict(r.context), budget_ms=r.budget_ms, load=r.load,
                       candidates=tuple(candidates_of(r)), chosen=r.chosen, probability=r.probability,
                       reward=r.reward)
        for r in store.decisions(family, limit=limit)
    ]


def report_data(state_dir: Path, *, family: str | None = None, limit: int = 20_000) -> dict[str, Any]:
    """Per family: the saved model's version, learned preferences per context and the estimated
    mean reward of the logged, deployed and greedy policies (NaN where there is nothing to estimate)."""
    db = state_dir / "controller.sqlite3"
    if not db.exists():
        raise FileNotFoundError(f"no controller state in {state_dir} (looked for {db.name})")
    bandit_dir = state_dir / "bandit"
    meta_path = bandit_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    families = [family] if family else sorted(p.stem for p in bandit_dir.glob("*.vw"))
    out: list[dict[str, Any]] = []
    if not families:
        return {"families": out}
    store = StateStore.reader(db)
    try:
        for fam in families:
            model_path = bandit_dir / f"{fam}.vw"
            records = _logged(store, fam, limit)
            info = meta.get(fam, {})
            entry: dict[str, Any] = {"family": fam, "model_version": info.get("version"), "updates": info.get("updates"),
                                     "decisions": len(records), "preferences": [], "estimates": None}
            out.append(entry)
            if family and not records and not model_path.exists() and fam not in meta:
                # A family no request has reached yet, or a misspelt name: this state cannot tell.
                known = sorted(p.stem for p in bandit_dir.glob("*.vw"))
                entry["note"] = (f"no model and no logged decision for {fam!r} in {state_dir}: no request has "
                                 "reached it yet, or the name is not a family's"
                                 + (f" (families with a model: {', '.join(known)})" if known else ""))
            if not model_path.exists() or not records:
                continue
            try:
                policy = BanditPolicy(info.get("vw_args", DEFAULT_VW_ARGS), model=model_path.read_bytes())
            except BadModel as exc:  # the controller starts such a family afresh; the report says so
                entry["note"] = f"the saved model {model_path} cannot be loaded ({exc}): the controller starts this family afresh"
                continue
            with policy:
                prefs = preferences(records, policy)
                value = evaluate(records, policy_target(policy))
                greedy = evaluate(records, policy_target(policy, greedy=True))
            entry["preferences"] = [{"context": context, "variant": variant, "probability": probability}
                                    for context, variant, probability in prefs]
            entry["estimates"] = {
                "logged": value.logged,
                "deployed": {"ips": value.ips, "ips_stderr": value.ips_stderr, "snips": value.snips,
                             "dr": value.dr, "dr_stderr": value.dr_stderr},
                "greedy": {"ips": greedy.ips, "ips_stderr": greedy.ips_stderr, "snips": greedy.snips,
                           "dr": greedy.dr, "dr_stderr": greedy.dr_stderr},
            }
    finally:
        store.close()
    return {"families": out}


def format_report(data: dict[str, Any]) -> str:
    if not data["families"]:
        return "no bandit model has been saved yet (no family has had decisions with feedback)"
    lines: list[str] = []
    for entry in data["families"]:
        version = "?" if entry["model_version"] is None else entry["model_version"]
        updates = "?" if entry["updates"] is None else entry["updates"]
        lines.append(f"family {entry['family']}: model v{version}, {updates} updates, "
                     f"{entry['decisions']} logged decisions used here")
        est = entry["estimates"]
        if est is None:
            lines.append(f"  nothing to report yet{': ' + entry['note'] if entry.get('note') else ''}\n")
            continue
        lines.append("  learned preference per context:")
        for pref in entry["preferences"]:
            ctx = ", ".join(f"{k}={v}" for k, v in sorted(pref["context"].items())) or "(no context)"
            lines.append(f"    {ctx:<40} -> {pref['variant']:<16} p={pref['probability']:.2f}")
        deployed, greedy = est["deployed"], est["greedy"]
        lines.append("  estimated mean reward per request (95% interval where known):")
        lines.append(f"    logged policy (what ran)        {est['logged']:.3f}")
        lines.append(f"    learned policy, as deployed     IPS {_ci(deployed['ips'], deployed['ips_stderr'])}   "
                     f"SNIPS {deployed['snips']:.3f}   DR {_ci(deployed['dr'], deployed['dr_stderr'])}")
        lines.append(f"    learned policy, greedy          IPS {_ci(greedy['ips'], greedy['ips_stderr'])}   "
                     f"SNIPS {greedy['snips']:.3f}   DR {_ci(greedy['dr'], greedy['dr_stderr'])}")
        if any(e["ips"] > 1.0 for e in (deployed, greedy)):
            lines.append("    (IPS weighs each logged reward by how much likelier the learned policy makes its choice, so on")
            lines.append("    few decisions it can pass 1; SNIPS divides by those weights and stays within the rewards' range)")
        lines.append("")
    return "\n".join(lines).rstrip()


def report(state_dir: Path, *, family: str | None = None, limit: int = 20_000) -> str:
    return format_report(report_data(state_dir, family=family, limit=limit))


def _ci(value: float, stderr: float) -> str:
    if math.isnan(stderr):
        return f"{value:.3f}"
    return f"{value:.3f} ± {1.96 * stderr:.3f}"
