"""How much of the decision log the controller keeps (the policy; ``controller.store`` enforces it).
Imports nothing of ours, so the controller's config can check its values at load."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DecisionRetention:
    """How much of the decision log the store keeps: records younger than ``max_age_s`` and a
    state file within ``max_bytes`` (the oldest records go first), at most ``max_records``.

    Checked every ``check_interval_s`` of the clock given to the store, and after every
    ``check_every_records`` appended records, so a burst cannot outrun the period. A size cap is
    enforced down to ``LOW_WATER`` of it, so one check frees room for many appends.
    """

    max_age_s: float = 7 * 86400.0
    max_bytes: int = 256 * 2**20
    max_records: int = 500_000
    check_interval_s: float = 60.0
    check_every_records: int = 2_000

    LOW_WATER = 0.9
    BATCH = 5_000  # rows per DELETE: each is one short transaction

    def __post_init__(self) -> None:
        if not self.max_age_s > 0:
            raise ValueError(f"decision_log_max_age_s must be > 0, got {self.max_age_s}")
        if self.max_bytes < 64 * 1024:
            raise ValueError(f"decision_log_max_bytes must be at least 65536 (64 KiB), got {self.max_bytes}")
        if self.max_records < 1:
            raise ValueError(f"decision_log_max_records must be >= 1, got {self.max_records}")
        if not self.check_interval_s > 0 or self.check_every_records < 1:
            raise ValueError("decision_log_check_s and the record count between checks must be positive")
