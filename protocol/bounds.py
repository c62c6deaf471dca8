"""Value bounds on wire records that the codec's type checks cannot express (finite, in range, few).

The gateway refuses a request outside them at its edge; the controller checks every decision
record and demand report against them again, since a peer may be older, buggy or hostile. Pure;
imports nothing of ours beyond ``protocol``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from protocol.types import DecisionRecord

CONTEXT_MAX_KEYS = 32
CONTEXT_MAX_KEY_LEN = 64
CONTEXT_MAX_STR_LEN = 256
CONTEXT_MAX_ABS = 1e15
MAX_NAME_LEN = 256
MAX_EVENT_ID_LEN = 128
MAX_CANDIDATES = 64
MAX_BUDGET_MS = 1e7
MAX_LOAD = 1e6
MAX_COUNT = 1 << 40
MAX_WINDOW_S = 3600.0
RECORD_SOURCES = frozenset({"feedback", "implicit"})


def _within(x: object, low: float, high: float) -> bool:
    """``x`` a real number (not a bool) in [low, high]; NaN and ±inf are never within."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return low <= x <= high  # NaN compares false; ints compare exactly, whatever their size


def context_defect(context: object) -> str:
    """"" for a bounded flat context of strings, finite numbers and booleans; else what is wrong."""
    if not isinstance(context, Mapping):
        return "context is not a map"
    if len(context) > CONTEXT_MAX_KEYS:
        return f"context has more than {CONTEXT_MAX_KEYS} keys"
    for key, value in context.items():
        if not isinstance(key, str) or not key or len(key) > CONTEXT_MAX_KEY_LEN:
            return "context key is empty, not a string or too long"
        if isinstance(value, bool):
            continue
        if isinstance(value, str):
            if len(value) > CONTEXT_MAX_STR_LEN:
                return "context string value is too long"
        elif not _within(value, -CONTEXT_MAX_ABS, CONTEXT_MAX_ABS):
            return f"context number is not finite within ±{CONTEXT_MAX_ABS:g}"
    return ""


def record_defect(record: DecisionRecord) -> str:
    """"" when every value of a decision record is usable for learning; else the first defect.

    Defects are a fixed set of phrases (no value from the record), so counting by defect stays bounded."""
    r = record
    if not r.event_id or len(r.event_id) > MAX_EVENT_ID_LEN:
        return "event_id is empty or too long"
    if not r.family or len(r.family) > MAX_NAME_LEN:
        return "family is empty or too long"
    if r.source not in RECORD_SOURCES:
        return "source is not feedback or implicit"
    if not _within(r.budget_ms, math.ulp(0.0), MAX_BUDGET_MS):
        return "budget_ms is not a positive finite number"
    if not _within(r.load, 0.0, MAX_LOAD):
        return "load is not a finite non-negative number"
    if not 1 <= len(r.candidates) <= MAX_CANDIDATES:
        return f"candidates must number 1 to {MAX_CANDIDATES}"
    if not 0 <= r.chosen < len(r.candidates):
        return "chosen is not a candidate's index"
    if not _within(r.probability, math.ulp(0.0), 1.0):
        return "probability is not in (0, 1]"
    if not _within(r.reward, 0.0, 1.0):
        return "reward is not in [0, 1]"
    for c in r.candidates:
        if not c.variant or len(c.variant) > MAX_NAME_LEN:
            return "candidate variant is empty or too long"
        if not (_within(c.accuracy, 0.0, 1.0) and _within(c.p_deadline, 0.0, 1.0)
                and _within(c.predicted_latency_ms, 0.0, MAX_BUDGET_MS * 100)
                and _within(c.energy_j, 0.0, CONTEXT_MAX_ABS)):
            return "candidate has a number out of range"
    return context_defect(r.context)


def counts_defect(counts: Mapping[str, int]) -> str:
    """"" for per-variant request counts that are non-negative and not absurd; else what is wrong."""
    for name, n in counts.items():
        if not name or len(name) > MAX_NAME_LEN:
            return "variant name is empty or too long"
        if not _within(n, 0, MAX_COUNT):
            return "count is out of range"
    return ""
