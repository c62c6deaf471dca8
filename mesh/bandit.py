"""Contextual-bandit variant selection shared by the controller (learning) and the gateway (deciding).

Candidates are the deployed variants of a family predicted to meet a request's bounds; a Vowpal
Wabbit ``--cb_explore_adf`` policy picks one of them from the request context, and learns from the
QoE reward. Both sides build VW examples with the same functions here, so a snapshot learned at the
controller decides identically in a gateway. Imports ``mesh.slowdown`` and vowpalwabbit; never
asyncio, zmq or torch.
"""

from __future__ import annotations

import math
import os
import random
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import TracebackType
from typing import Self

from vowpalwabbit import Workspace

from mesh.slowdown import SlowdownEstimate, p_deadline_met

ContextValue = str | int | float | bool

# Store this beside saved models: VW reads older models but not newer ones.
VW_VERSION = version("vowpalwabbit")

# Namespaces (VW keys interactions on the first letter): C request context, B budget and load
# (shared); V variant identity, F variant's numeric features (per action). Crossing the shared
# namespaces with the variant's identity and features is what lets preferences differ per context
# (without -q CF the benchmark's QoE falls from ~0.98 to ~0.96 of the oracle's; cubic terms did
# not help within 5,000 decisions). SquareCB explores by the predicted gap to the best, so it
# spends little on clearly bad variants and keeps trying close ones. In benchmarks/bandit.py it
# tied epsilon-greedy (0.05) and --bag 5 with graded QoE feedback and beat them with binary
# (satisfied or not) feedback, where epsilon-greedy can lock onto an early lucky variant;
# --cover 3, --softmax and --cb_type ips/dr did clearly worse. Costs are 1 - reward: an untried
# variant then looks optimistic, not pessimistic (costs of -reward did slightly worse).
DEFAULT_VW_ARGS = "--cb_explore_adf --squarecb -q CV -q CF -q BV -q BF --quiet"

_BAD_CHARS = str.maketrans({c: "_" for c in " \t\r\n|:"})
_ENERGY_FLOOR_J = 1e-9  # a variant profiled at 0 J would otherwise be log(0)


class BanditError(Exception):
    """Root of this module's errors."""


class NoCandidate(BanditError):
    """No deployed variant is predicted to satisfy the request's bounds; ``bound`` names the one that binds."""

    def __init__(self, bound: str, message: str) -> None:
        super().__init__(message)
        self.bound = bound


class PolicyClosed(BanditError):
    """The policy's VW workspace was already closed."""


class BadModel(BanditError):
    """Model bytes VW cannot load (corrupt, truncated, or from a newer VW)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One action: a deployed variant with what is predicted for this request."""

    variant: str
    accuracy: float
    predicted_latency_ms: float
    p_deadline: float
    energy_j: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's choice: an index into the candidates, its probability, and the whole pmf."""

    chosen: int
    probability: float
    pmf: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Bounds:
    """A request's bounds: its deadline budget and optional accuracy floor and energy ceiling."""

    budget_ms: float
    min_accuracy: float | None = None
    max_energy_j: float | None = None


def candidate_from_profile(*, variant: str, accuracy: float, energy_j: float, profiled_ms: float,
                           slowdown: SlowdownEstimate, budget_ms: float, queue_ms: float = 0.0) -> Candidate:
    """A candidate whose latency and P(deadline met) come from its profile and the worker's live slowdown."""
    predicted = queue_ms + slowdown.mean * profiled_ms
    p = p_deadline_met(budget_ms / 1e3, profiled_ms / 1e3, slowdown, queue_ms / 1e3)
    return Candidate(variant=variant, accuracy=accuracy, predicted_latency_ms=predicted, p_deadline=p,
                     energy_j=energy_j)


def filter_candidates(options: Sequence[Candidate], bounds: Bounds, *, min_p_deadline: float = 0.5,
                      family: str = "") -> list[Candidate]:
    """The options that meet every bound, in their given order; NoCandidate names the bound that binds.

    Bounds are applied in order accuracy, energy, deadline, each to what survived the previous one,
    so the error names the first bound no variant can meet and quotes the best value on offer.
    """
    of = f" of {family}" if family else ""
    if not options:
        raise NoCandidate("deployed", f"no deployed variant{of}")
    left = list(options)
    if bounds.min_accuracy is not None:
        ok = [c for c in left if c.accuracy >= bounds.min_accuracy]
        if not ok:
            best = max(c.accuracy for c in left)
            raise NoCandidate("accuracy", f"no deployed variant{of} has accuracy >= {bounds.min_accuracy:g} "
                                          f"(best: {best:.4g})")
        left = ok
    if bounds.max_energy_j is not None:
        ok = [c for c in left if c.energy_j <= bounds.max_energy_j]
        if not ok:
            least = min(c.energy_j for c in left)
            qualifier = " meeting the accuracy bound" if bounds.min_accuracy is not None else ""
            raise NoCandidate("energy", f"no deployed variant{of}{qualifier} uses <= {bounds.max_energy_j:g} J "
                                        f"per request (least: {least:.4g} J)")
        left = ok
    ok = [c for c in left if c.p_deadline >= min_p_deadline]
    if not ok:
        best_c = max(left, key=lambda c: (c.p_deadline, -c.predicted_latency_ms))
        raise NoCandidate("deadline", f"no deployed variant{of} is likely to meet the {bounds.budget_ms:g} ms "
                                      f"deadline (best: {best_c.variant}, predicted {best_c.predicted_latency_ms:.3g} "
                                      f"ms, P(deadline met) {best_c.p_deadline:.2f} < {min_p_deadline:g})")
    return ok


# Without a learned policy, a variant is chosen only if it meets the deadline at least this likely
# whenever another candidate does: the deadline comes before accuracy.
CONFIDENT_P = 0.99


def confident(candidates: Sequence[Candidate], p: float = CONFIDENT_P) -> list[Candidate]:
    """The candidates at least ``p`` likely to meet the deadline, in their order; all of them when none is.

    The deadline filter keeps a variant whose predicted latency fits the budget (P >= 0.5): a
    request that can go nowhere safer still runs on its best bet. Where a safer candidate exists,
    a chooser with no feedback to learn the risk from (the most accurate variant, or the plan's
    shares) would otherwise load the accurate variant's queue up to the deadline, and one slow
    batch there turns the requests queued behind it into misses."""
    sure = [c for c in candidates if c.p_deadline >= p]
    return sure if sure else list(candidates)


# --- VW examples ------------------------------------------------------------------------------

def _token(value: object) -> str:
    text = str(value).translate(_BAD_CHARS)
    return text or "_"


def _num(x: float) -> str:
    return f"{x:.6g}"


def _context_feature(key: str, value: ContextValue) -> str | None:
    k = _token(key)
    if isinstance(value, bool):
        return f"{k}={'true' if value else 'false'}"
    if isinstance(value, (int, float)):
        try:
            x = float(value)
        except OverflowError:  # an int past float's range
            return None
        if not math.isfinite(x):
            return None
        # Squashed so that a large raw number cannot swamp the other weights; ids belong in strings.
        return f"{k}:{_num(math.copysign(math.log1p(abs(x)), x))}"
    return f"{k}={_token(value)}"


def _budget(budget_ms: float) -> float:
    """The budget as a feature: within [1 µs, 1e7 ms]; NaN (which no comparison catches) as the floor."""
    try:
        budget = float(budget_ms)
    except OverflowError:
        return 1e7
    return min(max(budget, 1e-3), 1e7) if budget == budget else 1e-3


def shared_features(context: Mapping[str, ContextValue], budget_ms: float, load: float) -> str:
    """The shared line: the request context (namespace C) and the deadline budget and load (B)."""
    ctx = [f for k in sorted(context) if (f := _context_feature(k, context[k])) is not None]
    budget = _budget(budget_ms)
    bucket = round(math.log2(budget))
    load_x = min(max(float(load), 0.0), 10.0) if math.isfinite(load) else 0.0
    parts = ["shared"]
    if ctx:
        parts.append("|C " + " ".join(ctx))
    parts.append(f"|B budget=b{bucket} log_budget:{_num(math.log10(budget))} load:{_num(load_x)}")
    return " ".join(parts)


def action_features(candidate: Candidate, candidates: Sequence[Candidate], budget_ms: float) -> str:
    """One action line (without label): the variant's identity (V) and numeric features (F).

    Features are scaled to about unit size and partly relative to the other candidates, so that
    what is learned carries over between families and candidate sets.
    """
    budget = _budget(budget_ms)
    best_acc = max(c.accuracy for c in candidates)
    least_e = max(min(c.energy_j for c in candidates), _ENERGY_FLOOR_J)
    err_pct = 100.0 * (1.0 - candidate.accuracy)
    gap_pct = 100.0 * (best_acc - candidate.accuracy)
    lat = min(max(candidate.predicted_latency_ms, 0.0) / budget, 4.0)
    p = min(max(candidate.p_deadline, 0.0), 1.0)
    rel_e = math.log10(max(candidate.energy_j, _ENERGY_FLOOR_J) / least_e)
    return (f"|V v={_token(candidate.variant)} |F err:{_num(err_pct)} gap:{_num(gap_pct)} lat:{_num(lat)} "
            f"miss:{_num(1.0 - p)} energy:{_num(rel_e)}")


def vw_example(context: Mapping[str, ContextValue], budget_ms: float, load: float,
               candidates: Sequence[Candidate], label: tuple[int, float, float] | None = None) -> list[str]:
    """A VW ADF multi-line example: the shared line, then one line per candidate in order.

    ``label`` = (chosen index, cost, probability) puts ``0:cost:probability`` on the chosen line.
    """
    if not candidates:
        raise ValueError("a VW example needs at least one candidate")
    lines = [shared_features(context, budget_ms, load)]
    for c in candidates:
        lines.append(action_features(c, candidates, budget_ms))
    if label is not None:
        chosen, cost, probability = label
        if not 0 <= chosen < len(candidates):
            raise ValueError(f"chosen index {chosen} outside 0..{len(candidates) - 1}")
        lines[chosen + 1] = f"0:{_num(cost)}:{_num(probability)} {lines[chosen + 1]}"
    return lines


# --- the policy -------------------------------------------------------------------------------

class BanditPolicy:
    """One VW ``--cb_explore_adf`` workspace for one family: decide, learn, snapshot.

    Built from ``model`` bytes (a :meth:`snapshot`), it restores the whole learner, including the
    options saved in the model; ``vw_args`` are applied on top (pass the learner's own, so that the
    replica decides identically). Not thread-safe: one owner calls it (the controller's learner, or
    a gateway's replica). Holds native resources: use it as a context manager or call :meth:`close`.
    """

    def __init__(self, vw_args: str = DEFAULT_VW_ARGS, model: bytes | None = None) -> None:
        self._vw: Workspace | None = None
        self._updates = 0
        args = shlex.split(vw_args)
        if model is None:
            self._vw = Workspace(arg_list=args)
            return
        fd, name = tempfile.mkstemp(prefix="letmesh-bandit-", suffix=".vw")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(model)
            try:
                self._vw = Workspace(arg_list=[*args, "-i", name])
            except Exception as exc:  # VW reports a bad model as a bare RuntimeError
                raise BadModel(f"cannot load bandit model ({len(model)} bytes): {exc}") from exc
        finally:
            os.unlink(name)

    @property
    def updates(self) -> int:
        """Learning steps taken by this object (not counting those inside a loaded model)."""
        return self._updates

    def _workspace(self) -> Workspace:
        if self._vw is None:
            raise PolicyClosed("bandit policy is closed")
        return self._vw

    def pmf(self, context: Mapping[str, ContextValue], budget_ms: float, load: float,
            candidates: Sequence[Candidate]) -> tuple[float, ...]:
        """The policy's probabilities over ``candidates`` (same order), summing to 1."""
        raw = self._workspace().predict(vw_example(context, budget_ms, load, candidates))
        if len(raw) != len(candidates):
            raise BanditError(f"VW returned {len(raw)} probabilities for {len(candidates)} candidates")
        probs = [max(float(p), 0.0) for p in raw]
        total = sum(probs)
        if not total > 0:
            return tuple(1.0 / len(candidates) for _ in candidates)
        return tuple(p / total for p in probs)

    def decide(self, context: Mapping[str, ContextValue], budget_ms: float, load: float,
               candidates: Sequence[Candidate], *, rng: random.Random) -> Decision:
        """Sample one candidate from the policy's pmf; never anything outside ``candidates``."""
        pmf = self.pmf(context, budget_ms, load, candidates)
        u = rng.random()
        acc = 0.0
        chosen = len(pmf) - 1
        for i, p in enumerate(pmf):
            acc += p
            if u < acc:
                chosen = i
                break
        while pmf[chosen] == 0.0:  # float rounding left u past the last non-zero mass
            chosen -= 1
        return Decision(chosen=chosen, probability=pmf[chosen], pmf=pmf)

    def learn(self, context: Mapping[str, ContextValue], budget_ms: float, load: float,
              candidates: Sequence[Candidate], chosen: int, reward: float, probability: float) -> None:
        """One off-policy update: ``chosen`` was played with ``probability`` and earned ``reward`` in [0, 1]."""
        if not (0.0 <= reward <= 1.0):
            raise ValueError(f"reward must be in [0, 1], got {reward}")
        if not (0.0 < probability <= 1.0):
            raise ValueError(f"probability must be in (0, 1], got {probability}")
        example = vw_example(context, budget_ms, load, candidates, label=(chosen, 1.0 - reward, probability))
        self._workspace().learn(example)
        self._updates += 1

    def snapshot(self) -> bytes:
        """The whole learner state (resumable: it can keep learning after a load)."""
        vw = self._workspace()
        fd, name = tempfile.mkstemp(prefix="letmesh-bandit-", suffix=".vw")
        os.close(fd)
        try:
            vw.save(name)
            return Path(name).read_bytes()
        finally:
            os.unlink(name)

    def close(self) -> None:
        if self._vw is not None:
            vw, self._vw = self._vw, None
            vw.finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def save_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old file or the new one, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
