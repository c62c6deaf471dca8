"""The bandit learner: one Vowpal Wabbit policy per model family, trained on joined decision records.

Every record is also appended to the decision log (SQLite) for offline evaluation. Models are
saved atomically under ``<state>/bandit/`` and restored on start, so a controller restart keeps
what was learned. Not thread-safe; the controller actor owns it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from mesh.bandit import DEFAULT_VW_ARGS, BadModel, BanditPolicy, Candidate, save_atomic
from protocol.bounds import record_defect
from protocol.types import DecisionRecord

log = logging.getLogger(__name__)


def candidates_of(record: DecisionRecord) -> list[Candidate]:
    return [
        Candidate(variant=c.variant, accuracy=c.accuracy, predicted_latency_ms=c.predicted_latency_ms,
                  p_deadline=c.p_deadline, energy_j=c.energy_j)
        for c in record.candidates
    ]


class Learner:
    """Per-family policies with versions; ``dirty`` families have changed since their last publish."""

    def __init__(self, state_dir: Path | str, *, vw_args: str = DEFAULT_VW_ARGS) -> None:
        self.dir = Path(state_dir) / "bandit"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vw_args = vw_args
        self.policies: dict[str, BanditPolicy] = {}
        self.versions: dict[str, int] = {}
        self.updates: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.rejected: dict[str, int] = {}  # defect -> records dropped for it
        self._restore()

    def _restore(self) -> None:
        meta_path = self.dir / "meta.json"
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        except (OSError, ValueError) as exc:  # damaged (a crash mid-write on a filesystem without atomic renames)
            log.warning("bandit metadata %s cannot be read (%s); versions and counts start afresh", meta_path, exc)
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        for model_path in sorted(self.dir.glob("*.vw")):
            family = model_path.stem
            info = meta.get(family, {})
            if info.get("vw_args", self.vw_args) != self.vw_args:
                log.warning("bandit model of %s was trained with other arguments; starting afresh", family)
                continue
            try:
                self.policies[family] = BanditPolicy(self.vw_args, model=model_path.read_bytes())
            except BadModel:
                log.warning("bandit model of %s cannot be loaded; starting afresh", family)
                continue
            self.versions[family] = int(info.get("version", 1))
            self.updates[family] = int(info.get("updates", 0))

    def policy(self, family: str) -> BanditPolicy:
        policy = self.policies.get(family)
        if policy is None:
            policy = self.policies[family] = BanditPolicy(self.vw_args)
            self.versions.setdefault(family, 0)
            self.updates.setdefault(family, 0)
        return policy

    def admit(self, records: Iterable[DecisionRecord], families: Collection[str]) -> list[DecisionRecord]:
        """The records fit to log and learn from: of a known family, every value finite and in range
        (see :mod:`protocol.bounds`). The others are dropped and counted in ``rejected``, never raised."""
        kept = []
        for r in records:
            defect = "unknown family" if r.family not in families else record_defect(r)
            if defect:
                self._reject(defect, r)
            else:
                kept.append(r)
        return kept

    def learn(self, records: Iterable[DecisionRecord]) -> int:
        """Train on joined records; returns how many were usable."""
        used = 0
        for r in records:
            defect = record_defect(r)
            if defect:
                self._reject(defect, r)
                continue
            try:
                self.policy(r.family).learn(r.context, r.budget_ms, r.load, candidates_of(r), r.chosen, r.reward,
                                            r.probability)
            except (ValueError, OverflowError) as exc:  # one record VW cannot take must not stop the rest
                self._reject(f"not learnable: {type(exc).__name__}", r)
                continue
            self.updates[r.family] = self.updates.get(r.family, 0) + 1
            self.dirty.add(r.family)
            used += 1
        return used

    def _reject(self, defect: str, record: DecisionRecord) -> None:
        if self.rejected.get(defect, 0) == 0:
            log.warning("dropped a decision record: %s", defect, extra={"event_id": record.event_id[:128]})
        self.rejected[defect] = self.rejected.get(defect, 0) + 1

    def publish(self) -> list[tuple[str, int, bytes]]:
        """Snapshots of the families that changed, each with a new version; saved to disk first."""
        out = []
        for family in sorted(self.dirty):
            self.versions[family] = self.versions.get(family, 0) + 1
            model = self.policies[family].snapshot()
            save_atomic(self.dir / f"{family}.vw", model)
            out.append((family, self.versions[family], model))
        if self.dirty:
            self._save_meta()
        self.dirty.clear()
        return out

    def snapshots(self, families: Sequence[str]) -> list[tuple[str, int, bytes]]:
        """Current snapshots of ``families`` (for a gateway that just registered)."""
        return [(f, self.versions.get(f, 0), self.policy(f).snapshot()) for f in sorted(families)]

    def _save_meta(self) -> None:
        meta = {f: {"version": self.versions[f], "updates": self.updates.get(f, 0), "vw_args": self.vw_args}
                for f in self.versions}
        save_atomic(self.dir / "meta.json", json.dumps(meta, indent=1).encode())

    def close(self) -> None:
        for policy in self.policies.values():
            policy.close()
        self.policies.clear()
