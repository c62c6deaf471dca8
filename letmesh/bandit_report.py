"""``letmesh bandit report``: learned preferences per context, and the learned policy's estimated
value against the policy that made the logged decisions (inverse propensity and doubly robust).

Reads the controller's state folder directly (the SQLite decision log and the saved models), so
it works while the controller runs and after it has stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from controller.learner import candidates_of
from controller.offpolicy import LoggedDecision, evaluate, policy_target, preferences
from controller.store import StateStore
from mesh.bandit import DEFAULT_VW_ARGS, BanditPolicy


def _logged(store: StateStore, family: str, limit: int) -> list[LoggedDecision]:
    return [
        LoggedDecision(context=dict(r.context), budget_ms=r.budget_ms, load=r.load,
                       candidates=tuple(candidates_of(r)), chosen=r.chosen, probability=r.probability,
                       reward=r.reward)
        for r in store.decisions(family, limit=limit)
    ]


def report(state_dir: Path, *, family: str | None = None, limit: int = 20_000) -> str:
    db = state_dir / "controller.sqlite3"
    if not db.exists():
        raise FileNotFoundError(f"no controller state in {state_dir} (looked for {db.name})")
    bandit_dir = state_dir / "bandit"
    meta_path = bandit_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    families = [family] if family else sorted(p.stem for p in bandit_dir.glob("*.vw"))
    if not families:
        return "no bandit model has been saved yet (no family has had decisions with feedback)"
    store = StateStore(db)
    lines: list[str] = []
    try:
        for fam in families:
            model_path = bandit_dir / f"{fam}.vw"
            records = _logged(store, fam, limit)
            info = meta.get(fam, {})
            lines.append(f"family {fam}: model v{info.get('version', '?')}, {info.get('updates', '?')} updates, "
                         f"{len(records)} logged decisions used here")
            if not model_path.exists() or not records:
                lines.append("  nothing to report yet\n")
                continue
            with BanditPolicy(info.get("vw_args", DEFAULT_VW_ARGS), model=model_path.read_bytes()) as policy:
                prefs = preferences(records, policy)
                value = evaluate(records, policy_target(policy))
                greedy = evaluate(records, policy_target(policy, greedy=True))
            lines.append("  learned preference per context:")
            for context, variant, probability in prefs:
                ctx = ", ".join(f"{k}={v}" for k, v in sorted(context.items())) or "(no context)"
                lines.append(f"    {ctx:<40} -> {variant:<16} p={probability:.2f}")
            lines.append("  estimated mean reward per request (95% interval where known):")
            lines.append(f"    logged policy (what ran)        {value.logged:.3f}")
            lines.append(f"    learned policy, as deployed     IPS {_ci(value.ips, value.ips_stderr)}   "
                         f"DR {_ci(value.dr, value.dr_stderr)}")
            lines.append(f"    learned policy, greedy          IPS {_ci(greedy.ips, greedy.ips_stderr)}   "
                         f"DR {_ci(greedy.dr, greedy.dr_stderr)}")
            lines.append("")
    finally:
        store.close()
    return "\n".join(lines).rstrip()


def _ci(value: float, stderr: float) -> str:
    if math.isnan(stderr):
        return f"{value:.3f}"
    return f"{value:.3f} ± {1.96 * stderr:.3f}"
