"""Accuracy-scaling benchmark: the accuracy-scaling planner (Proteus-style MILP, re-solved on
EWMA demand, Proteus batching) against static high- and low-accuracy deployments with AIMD
batching (Clipper-HA / Clipper-LA) and a per-request greedy selector with reactive variant
up/down-scaling (INFaaS-like), in one discrete-event simulator on the same arrivals.

The workload is generated: F model families with Zipf-skewed popularity, Poisson arrivals whose
rate is a baseline plus raised-cosine bursts, sized in units of the fleet's capacity at full
accuracy, so that at the peaks demand exceeds what the fleet carries with the best variants while
the average fits. The fleet is N identical GPUs, one slot (the whole device) each, one variant
per slot, for every scheme. Profiles come from ``benchmarks/data/accuracy_profile.csv`` and
``accuracy_variants.csv``, a synthetic multi-family set this module writes with
``--write-profile`` (see ``benchmarks/data/README.md``).

Reports, per scheme (median and range over seeds): effective accuracy (mean normalised accuracy
of the requests answered within their SLO; the best variant of each family is 100), the accuracy
drop (100 minus that), the SLO-violation rate (late + dropped + shed + unrouted over all
requests), goodput and throughput; for the planner the solve times. Prints a table, writes JSON
to ``benchmarks/results/accuracy_scaling.json``, ends with one ``RESULT`` line. Asserts nothing.

Run: ``python benchmarks/accuracy_scaling.py [--quick]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import heapq
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.accuracy import (
    ResolvePolicy,
    ScalingPlan,
    ScalingProblem,
    Slot,
    VariantChoice,
    capacities,
    solve,
)
from controller.planning import LatencyModel, ProfileTable
from mesh.batching import Queued, make_batcher

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
DEFAULT_OUT = HERE / "results" / "accuracy_scaling.json"
PROFILE_FILE = "accuracy_profile.csv"
VARIANTS_FILE = "accuracy_variants.csv"
KIND = "gpu"
ALLOWED_BATCHES = (1, 2, 4, 8)  # Proteus' allowed batch sizes
SCHEMES = ("ours", "clipper_ha", "clipper_la", "infaas")
# ours with one thing changed, to show what each costs (not baselines; not in the RESULT line)
ABLATIONS = ("ours_edf", "ours_true_demand", "ours_instant_switch", "ours_headroom")
DEADLINE_SLACK_S = 1e-9  # a batch scheduled to end on its deadline is on time
EPS = 1e-12

# --- the synthetic profile set -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FamilySpec:
    """A model family shaped after a published one: variants with their published accuracy
    metric and relative cost; latency parameters chosen by hand (see ``profile_rows``)."""

    family: str
    metric: str
    overhead_ms: float  # per batch
    gamma: float  # batch-b compute grows as b ** gamma (sub-linear: batching pays)
    best_ms: float  # compute of the most costly variant at batch 1
    variants: tuple[tuple[str, float, float], ...]  # (variant, cost, accuracy metric), cheapest first


# Popularity rank order (Zipf rank 1 first), shaped after Proteus' nine request types. Costs are
# published FLOPs (or parameter counts for the language models), accuracies published top-1 /
# mAP / GLUE / LAMBADA figures, rounded; both only set the *shape* of each family's trade-off.
FAMILIES = (
    FamilySpec("mobilenet", "ImageNet top-1 (MobileNet v1 width 0.25-1.0, 224 px)", 1.0, 0.55, 3.0,
               (("mobilenet_v1_025", 0.041, 50.6), ("mobilenet_v1_050", 0.149, 63.7),
                ("mobilenet_v1_075", 0.325, 68.4), ("mobilenet_v1_100", 0.569, 70.6))),
    FamilySpec("resnet", "ImageNet top-1 (torchvision)", 1.2, 0.75, 8.0,
               (("resnet18", 1.82, 69.76), ("resnet34", 3.67, 73.31), ("resnet50", 4.11, 76.13),
                ("resnet101", 7.83, 77.37), ("resnet152", 11.56, 78.31))),
    FamilySpec("efficientnet", "ImageNet top-1 (torchvision)", 1.5, 0.6, 9.0,
               (("efficientnet_b0", 0.39, 77.69), ("efficientnet_b1", 0.69, 78.64), ("efficientnet_b2", 1.09, 80.61),
                ("efficientnet_b3", 1.83, 82.01), ("efficientnet_b4", 4.39, 83.38))),
    FamilySpec("bert", "GLUE average, approximate (BERT miniatures and base)", 1.5, 0.7, 7.0,
               (("bert_tiny", 0.39, 64.2), ("bert_mini", 3.1, 65.8), ("bert_small", 12.6, 71.2),
                ("bert_medium", 25.2, 73.5), ("bert_base", 85.0, 78.3))),
    FamilySpec("yolo", "COCO mAP50-95 (YOLOv5 n-x, 640 px)", 2.5, 0.85, 16.0,
               (("yolov5n", 4.5, 28.0), ("yolov5s", 16.5, 37.4), ("yolov5m", 49.0, 45.4),
                ("yolov5l", 109.1, 49.0), ("yolov5x", 205.7, 50.7))),
    FamilySpec("densenet", "ImageNet top-1 (torchvision)", 2.0, 0.7, 9.0,
               (("densenet121", 2.83, 74.43), ("densenet169", 3.36, 75.60), ("densenet201", 4.29, 76.90),
                ("densenet161", 7.73, 77.14))),
    FamilySpec("gpt2", "LAMBADA zero-shot accuracy", 2.0, 0.75, 18.0,
               (("gpt2", 124.0, 45.99), ("gpt2_medium", 355.0, 55.48), ("gpt2_large", 774.0, 60.12),
                ("gpt2_xl", 1558.0, 63.24))),
    FamilySpec("resnest", "ImageNet top-1, approximate", 1.5, 0.75, 12.0,
               (("resnest50", 5.4, 81.03), ("resnest101", 10.2, 82.83), ("resnest200", 17.5, 83.84))),
    FamilySpec("t5", "GLUE average", 2.0, 0.75, 18.0,
               (("t5_small", 60.0, 77.4), ("t5_base", 220.0, 82.7), ("t5_large", 770.0, 86.4), ("t5_3b", 2800.0, 88.5))),
)
PROFILE_BATCHES = tuple(range(1, 9))
P99_OVER_P50 = 1.05
SLO_BATCH = 4  # each family's SLO lets its best variant run this batch within SLO/2


def _p50_ms(spec: FamilySpec, cost: float, batch: int) -> float:
    best_cost = max(c for _, c, _ in spec.variants)
    return spec.overhead_ms + spec.best_ms * cost / best_cost * batch ** spec.gamma


def profile_rows() -> tuple[list[tuple], list[dict[str, Any]]]:
    """(profile rows in ``ProfileTable`` order, variant rows). Deterministic: no noise.

    Latency of a batch b: ``overhead + best_ms * cost / cost_best * b ** gamma`` (p50), p99 = 1.05 x
    p50. A family's SLO is twice the planning latency (p99 x the planner's 1.1 margin) of its best
    variant at batch 4, rounded up to 5 ms, so that Proteus' SLO/2 rule gives that variant batch 4
    and its cheaper siblings larger batches."""
    rows, variants = [], []
    for rank, spec in enumerate(FAMILIES, start=1):
        best_acc = max(a for _, _, a in spec.variants)
        best_cost = max(c for _, c, _ in spec.variants)
        planning = _p50_ms(spec, best_cost, SLO_BATCH) * P99_OVER_P50 * 1.1
        slo = 5.0 * math.ceil(2 * planning / 5.0 + 1e-9)
        for name, cost, acc in spec.variants:
            for b in PROFILE_BATCHES:
                p50 = _p50_ms(spec, cost, b)
                rows.append((name, KIND, 100, b, round(p50, 4), round(p50 * P99_OVER_P50, 4)))
            variants.append({"variant": name, "family": spec.family, "rank": rank, "metric": spec.metric, "cost": cost,
                             "accuracy_raw": acc, "accuracy": round(100.0 * acc / best_acc, 3), "slo_ms": slo})
    return rows, variants


def write_profile(directory: Path) -> list[Path]:
    rows, variants = profile_rows()
    directory.mkdir(parents=True, exist_ok=True)
    profile, listing = directory / PROFILE_FILE, directory / VARIANTS_FILE
    with profile.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("variant", "device_kind", "partition", "batch", "p50_ms", "p99_ms"))
        w.writerows(rows)
    with listing.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(variants[0]))
        w.writeheader()
        w.writerows(variants)
    return [profile, listing]


@dataclass(frozen=True, slots=True)
class Catalog:
    """The profile set: families in popularity-rank order, their variants (accuracy normalised so
    the best of each family is 100), the planning latency and each family's SLO."""

    families: tuple[str, ...]
    variants: tuple[VariantChoice, ...]
    latency: LatencyModel
    slo_ms: dict[str, float]

    def take(self, count: int) -> Catalog:
        keep = self.families[:count]
        return Catalog(keep, tuple(v for v in self.variants if v.family in keep), self.latency,
                       {f: s for f, s in self.slo_ms.items() if f in keep})


def load_catalog(directory: Path = DATA) -> Catalog:
    with (directory / PROFILE_FILE).open(newline="") as f:
        table = ProfileTable.from_rows(csv.DictReader(f))
    with (directory / VARIANTS_FILE).open(newline="") as f:
        listing = list(csv.DictReader(f))
    ranks = sorted({(int(r["rank"]), r["family"]) for r in listing})
    variants = tuple(VariantChoice(r["variant"], r["family"], float(r["accuracy"]), float(r["slo_ms"])) for r in listing)
    slo = {v.family: v.slo_ms for v in variants}
    return Catalog(tuple(f for _, f in ranks), variants, LatencyModel(table), slo)


# --- the fleet ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VariantInfo:
    """What the simulator needs of a variant on one slot kind."""

    variant: str
    family: int  # index into the workload's families
    accuracy: float
    rate: float  # peak req/s within the SLO (Proteus' SLO/2 rule)
    batch: int  # the batch that rate uses: the batchers' max_batch
    latency_s: tuple[float, ...]  # index b: seconds of a batch of b (index 0 unused)


@dataclass(frozen=True, slots=True)
class Fleet:
    slots: tuple[Slot, ...]
    info: dict[str, VariantInfo]  # variants some slot can host
    capacity: dict[tuple[str, str], float]  # (slot_id, variant) -> req/s, for ScalingProblem
    families: tuple[str, ...]
    slo_s: tuple[float, ...]  # per family index

    def ladder(self, k: int) -> list[str]:
        """Family k's hostable variants, least accurate first."""
        return sorted((v for v, i in self.info.items() if i.family == k), key=lambda v: (self.info[v].accuracy, v))

    def best_rate(self, k: int) -> float:
        return self.info[self.ladder(k)[-1]].rate


def make_fleet(catalog: Catalog, devices: int) -> Fleet:
    slots = tuple(Slot(f"g{i:02d}", f"gpu{i:02d}", KIND, 100) for i in range(devices))
    caps = capacities(slots, catalog.variants, catalog.latency, None, batches=ALLOWED_BATCHES)
    index = {f: k for k, f in enumerate(catalog.families)}
    info = {}
    for v in catalog.variants:
        found = caps.get((slots[0].slot_id, v.variant))
        if found is None:
            continue  # cannot meet its SLO on this device even alone
        rate, batch = found
        curve = catalog.latency.curve(v.variant, KIND, 100, batch)
        info[v.variant] = VariantInfo(v.variant, index[v.family], v.accuracy, rate, batch,
                                      (0.0, *(ms / 1000.0 for ms in curve)))
    capacity = {key: rate for key, (rate, _) in caps.items()}
    return Fleet(slots, info, capacity, catalog.families, tuple(catalog.slo_ms[f] / 1000.0 for f in catalog.families))


# --- the workload ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """The workload's shape. Loads are in units of the fleet's capacity at full accuracy: 1.0 is
    the demand the fleet would carry exactly if every request ran the best variant of its family
    on a fractional share of the devices."""

    families: int
    zipf: float  # popularity of the family of rank r (in requests) is proportional to r ** -zipf
    base_load: float
    burst_factor: float  # total load at a burst's peak
    burst_share: float  # share of the trace inside bursts
    bursts: int
    burst_focus: float  # share of a burst's extra load that goes to one family drawn per burst
    duration_s: float

    @property
    def mean_load(self) -> float:
        return self.base_load + (self.burst_factor - self.base_load) / 2 * self.burst_share  # sin^2 averages 1/2


STEP_S = 0.1  # the rate is piecewise constant on this grid


def popularity(families: int, zipf: float) -> np.ndarray:
    p = np.arange(1, families + 1, dtype=float) ** -zipf
    return p / p.sum()


@dataclass(frozen=True, slots=True)
class Trace:
    times: list[float]
    families: list[int]
    rate: np.ndarray  # [family, step] req/s
    load: np.ndarray  # [step] total load (capacity units)
    mean_rps: tuple[float, ...]  # per family, over the trace (what the static baselines are sized for)
    bursts: tuple[tuple[float, float, int], ...]  # (start_s, length_s, focus family)


def make_trace(shape: Shape, fleet: Fleet, seed: int) -> Trace:
    """Poisson arrivals at the shape's time-varying rates; the same seed gives the same trace."""
    rng = np.random.default_rng(seed)
    k_n = shape.families
    best = np.array([fleet.best_rate(k) for k in range(k_n)])
    pop = popularity(k_n, shape.zipf)
    share = (pop / best) / (pop / best).sum()  # each family's share of the fleet at full accuracy
    steps = max(1, round(shape.duration_s / STEP_S))
    t = (np.arange(steps) + 0.5) * STEP_S
    load = np.outer(share, np.full(steps, shape.base_load))
    bursts = []
    if shape.bursts > 0 and shape.burst_share > 0 and shape.burst_factor > shape.base_load:
        length = shape.burst_share * shape.duration_s / shape.bursts
        room = shape.duration_s / shape.bursts
        for b in range(shape.bursts):
            start = b * room + rng.uniform(0.0, room - length)
            focus = int(rng.integers(k_n))
            inside = (t >= start) & (t < start + length)
            height = (shape.burst_factor - shape.base_load) * np.sin(np.pi * (t[inside] - start) / length) ** 2
            split = (1 - shape.burst_focus) * share
            split[focus] += shape.burst_focus
            load[:, inside] += np.outer(split, height)
            bursts.append((float(start), float(length), focus))
    # load (share of the fleet) -> req/s: family k's full-accuracy device rate times the devices
    rate = load * (best * len(fleet.slots))[:, None]
    times, fams = [], []
    for k in range(k_n):
        counts = rng.poisson(rate[k] * STEP_S)
        starts = np.repeat(np.arange(steps) * STEP_S, counts)
        times.append(starts + rng.uniform(0.0, STEP_S, counts.sum()))
        fams.append(np.full(counts.sum(), k, dtype=np.int64))
    all_t, all_f = np.concatenate(times), np.concatenate(fams)
    order = np.argsort(all_t, kind="stable")
    return Trace(all_t[order].tolist(), all_f[order].tolist(), rate, load.sum(axis=0),
                 tuple(float(r) for r in rate.mean(axis=1)), tuple(bursts))


# --- the simulator --------------------------------------------------------------------------------

FINISH, WAKE, LOADED, TICK, APPLY = range(5)


class Server:
    """One slot: the variant it has loaded (None while loading), its batcher and clock state."""

    __slots__ = ("accepting", "batcher", "busy", "busy_until", "index", "info", "pending", "running", "token")

    def __init__(self, index: int) -> None:
        self.index = index
        self.info: VariantInfo | None = None
        self.batcher = None
        self.pending: str | None = None  # the variant it switches to (draining, then loading)
        self.accepting = False
        self.busy = False
        self.busy_until = 0.0
        self.running: tuple[Queued, ...] = ()
        self.token = 0


@dataclass(slots=True)
class Counts:
    requests: int = 0
    on_time: int = 0
    late: int = 0  # served after the deadline
    dropped: int = 0  # answered late by the batcher (hopeless, or past the deadline when polled)
    shed: int = 0  # dropped at admission by the plan's shed share
    unrouted: int = 0  # no slot up for the family (e.g. all of its slots loading)
    accuracy_sum: float = 0.0  # normalised accuracy over on-time requests
    switches: int = 0
    load_s: float = 0.0  # slot-seconds spent loading


class Simulator:
    """A heap of events on a simulated clock; arrivals come from a sorted list. Schemes decide
    routing and deployments; the simulator runs the slots' batchers, exactly one batch at a time
    per slot, and the switches (drain the queue, then load for ``load_s``)."""

    def __init__(self, fleet: Fleet, policy: str, load_s: float) -> None:
        self.fleet = fleet
        self.policy = policy
        self.load_s = load_s
        self.servers = [Server(i) for i in range(len(fleet.slots))]
        self.heap: list[tuple[float, int, int, int, int]] = []  # (time, seq, code, slot, token)
        self.seq = 0
        self.version = 0  # bumps whenever a slot starts or stops accepting
        self.counts = Counts()
        self.per_family = [Counts() for _ in fleet.families]
        self.served_by_variant: dict[str, int] = {}
        self.on_time_at: list[int] = []  # on-time requests by the second they arrived in

    # --- deployment ---

    def deploy(self, i: int, variant: str) -> None:
        """Load ``variant`` on slot i instantly (the initial deployment, before any arrival)."""
        s = self.servers[i]
        self._install(s, variant)

    def _install(self, s: Server, variant: str) -> None:
        info = self.fleet.info[variant]
        s.info = info
        s.batcher = make_batcher(self.policy, max_batch=info.batch, latency_s=info.latency_s.__getitem__)
        s.accepting = True
        s.pending = None
        self.version += 1

    def switch(self, i: int, variant: str, now: float) -> None:
        """Move slot i to ``variant``: it stops taking requests, finishes its queue, then loads."""
        s = self.servers[i]
        if s.info is not None and s.info.variant == variant:
            if s.pending is not None:  # cancel a switch still draining
                s.pending, s.accepting = None, True
                self.version += 1
            return
        if s.info is None:  # loading something else: start over
            if s.pending != variant:
                s.pending = variant
                self._start_load(s, now)
            return
        if s.pending is None:
            self.counts.switches += 1
            self.version += 1
        s.pending, s.accepting = variant, False
        if not s.busy and not len(s.batcher):
            self._start_load(s, now)

    def _start_load(self, s: Server, now: float) -> None:
        s.info, s.batcher, s.accepting, s.busy = None, None, False, False
        s.token += 1
        self.counts.load_s += self.load_s
        self.push(now + self.load_s, LOADED, s.index, s.token)

    def push(self, t: float, code: int, slot: int = -1, token: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, code, slot, token))

    # --- queries for schemes ---

    def up(self, i: int) -> str | None:
        """The variant slot i serves new requests with, or None."""
        s = self.servers[i]
        return s.info.variant if s.accepting and s.info is not None else None

    def finish_estimate(self, i: int, now: float) -> float:
        """When a request pushed now would finish: the running batch, then the queue in full batches."""
        s = self.servers[i]
        info = s.info
        start = s.busy_until if s.busy else now
        q = len(s.batcher) + 1
        full, rest = divmod(q, info.batch)
        return start + full * info.latency_s[info.batch] + (info.latency_s[rest] if rest else 0.0)

    # --- the run ---

    def run(self, trace: Trace, scheme: Scheme, duration_s: float) -> None:
        fam_counts = self.per_family
        total = self.counts
        slo_s = self.fleet.slo_s
        servers = self.servers
        heap, pop = self.heap, heapq.heappop
        window = [0] * len(self.fleet.families)
        for t in range(1, int(math.ceil(duration_s))):
            self.push(float(t), TICK)
        times, fams = trace.times, trace.families
        self.on_time_at = [0] * (int(math.ceil(duration_s)) + 1)
        n, a = len(times), 0
        rid = 0
        route = scheme.route
        while a < n or heap:
            if a < n and (not heap or times[a] <= heap[0][0]):
                now, k = times[a], fams[a]
                a += 1
                window[k] += 1
                fc = fam_counts[k]
                fc.requests += 1
                i = route(self, now, k)
                if i < 0:
                    if i == -1:
                        fc.shed += 1
                    else:
                        fc.unrouted += 1
                    continue
                s = servers[i]
                rid += 1
                if not s.batcher.push(Queued(rid, now + slo_s[k], now, k)):
                    fc.dropped += 1  # queue full
                    continue
                if not s.busy:
                    self.step(s, now)
                continue
            now, _, code, i, token = pop(heap)
            if code == FINISH:
                s = servers[i]
                self.finish(s, now)
                self.step(s, now)
            elif code == WAKE:
                s = servers[i]
                if token == s.token and not s.busy:
                    self.step(s, now)
            elif code == LOADED:
                s = servers[i]
                if token == s.token and s.pending is not None:
                    self._install(s, s.pending)
            elif code == TICK:
                scheme.tick(self, now, window)
                window = [0] * len(window)
            elif code == APPLY:
                scheme.apply(self, now)
        for fc in fam_counts:
            total.requests += fc.requests
            total.on_time += fc.on_time
            total.late += fc.late
            total.dropped += fc.dropped
            total.shed += fc.shed
            total.unrouted += fc.unrouted
            total.accuracy_sum += fc.accuracy_sum

    def step(self, s: Server, now: float) -> None:
        """The worker loop: poll the batcher until it runs a batch, waits, or is empty."""
        while True:
            b = s.batcher
            if not len(b):
                s.busy = False
                if s.pending is not None:
                    self._start_load(s, now)
                return
            decision = b.poll(now)
            for item in decision.late:
                self.per_family[item.payload].dropped += 1
            if decision.batch:
                batch = decision.batch
                s.busy = True
                s.running = batch
                s.busy_until = now + s.info.latency_s[len(batch)]
                self.push(s.busy_until, FINISH, s.index)
                return
            if decision.wake_at is not None and not decision.late:
                s.busy = False
                s.token += 1
                self.push(decision.wake_at, WAKE, s.index, s.token)
                return

    def finish(self, s: Server, now: float) -> None:
        batch, s.running, s.busy = s.running, (), False
        info = s.info
        ok = 0
        for item in batch:
            fc = self.per_family[item.payload]
            if now <= item.deadline + DEADLINE_SLACK_S:
                ok += 1
                fc.on_time += 1
                fc.accuracy_sum += info.accuracy
                self.on_time_at[int(item.arrived)] += 1
            else:
                fc.late += 1
        self.served_by_variant[info.variant] = self.served_by_variant.get(info.variant, 0) + ok
        s.batcher.feedback(len(batch), ok < len(batch))


# --- schemes --------------------------------------------------------------------------------------


class Scheme:
    """How requests are routed and what is deployed. ``route`` returns a slot index, -1 (shed) or
    -2 (unrouted)."""

    name = ""
    batching = "edf"
    rng = random.Random(0)  # each run installs its own seeded generator

    def start(self, sim: Simulator, trace: Trace) -> None:
        raise NotImplementedError

    def route(self, sim: Simulator, now: float, k: int) -> int:
        raise NotImplementedError

    def tick(self, sim: Simulator, now: float, window: Sequence[int]) -> None:
        """Every simulated second, with the arrivals per family of the second that ended."""

    def apply(self, sim: Simulator, now: float) -> None:
        """An APPLY event the scheme scheduled."""

    def report(self) -> dict[str, Any]:
        return {}


def static_allocation(fleet: Fleet, variant_of: Sequence[str], mean_rps: Sequence[float]) -> list[str]:
    """One variant per slot, slots over families in proportion to their mean demand: every family
    gets a slot, then each next slot goes to the family whose capacity covers the smallest share
    of its mean demand."""
    k_n = len(variant_of)
    if len(fleet.slots) < k_n:
        raise ValueError(f"{len(fleet.slots)} devices cannot give each of {k_n} families one")
    covered = [0.0] * k_n
    out = []
    for _ in fleet.slots:
        unserved = [k for k in range(k_n) if covered[k] == 0]
        k = unserved[0] if unserved else min(range(k_n), key=lambda k: (covered[k] / max(mean_rps[k], EPS), k))
        covered[k] += fleet.info[variant_of[k]].rate
        out.append(variant_of[k])
    return out


class Static(Scheme):
    """Clipper-HA / Clipper-LA: a fixed deployment of one variant per family, sized for the mean
    demand; requests spread uniformly over the family's slots; AIMD batching."""

    batching = "aimd"

    def __init__(self, name: str, high: bool) -> None:
        self.name = name
        self.high = high
        self.slots_of: list[list[int]] = []

    def start(self, sim: Simulator, trace: Trace) -> None:
        fleet = sim.fleet
        pick = [fleet.ladder(k)[-1 if self.high else 0] for k in range(len(fleet.families))]
        hosts = static_allocation(fleet, pick, trace.mean_rps)
        self.slots_of = [[] for _ in fleet.families]
        for i, v in enumerate(hosts):
            sim.deploy(i, v)
            self.slots_of[fleet.info[v].family].append(i)

    def route(self, sim: Simulator, now: float, k: int) -> int:
        mine = self.slots_of[k]
        return mine[int(self.rng.random() * len(mine))] if mine else -2

    def report(self) -> dict[str, Any]:
        return {"slots_per_family": [len(s) for s in self.slots_of]}


class Proteus(Scheme):
    """Ours: the accuracy-scaling MILP (``controller.accuracy.solve``) re-solved on EWMA demand
    at the ``ResolvePolicy`` cadence, warm-started from the current plan; a plan takes effect
    after its measured solve time (the control path runs beside the data path); weighted random
    routing by the plan's shares over the slots that are up; shedding at admission; Proteus
    batching."""

    name = "ours"
    batching = "proteus"

    def __init__(self, *, policy: ResolvePolicy, ewma_com: float, ewma_windows: int, time_limit_s: float,
                 beta: float, name: str = "ours", batching: str = "proteus", true_demand: bool = False) -> None:
        self.name = name
        self.batching = batching
        self.true_demand = true_demand  # ablation: plan for the trace's true current rates instead of the EWMA
        self.true_rate: np.ndarray | None = None
        self.policy = policy
        self.beta = beta
        self.alpha = 1.0 / (1.0 + ewma_com)
        self.history: deque[list[int]] = deque(maxlen=ewma_windows)
        self.time_limit_s = time_limit_s
        self.plan: ScalingPlan | None = None
        self.waiting: ScalingPlan | None = None  # solved, not yet applied
        self.last_demand: dict[str, float] | None = None
        self.last_solve: float | None = None
        self.shed_share: list[float] = []
        self.routes: list[tuple[list[float], list[int]] | None] = []
        self.built = -1
        self.solves: list[dict[str, Any]] = []
        self.slot_at: dict[str, int] = {}
        self.families: tuple[str, ...] = ()
        self.waiting_demand: dict[str, float] = {}

    # --- control path ---

    def _solve(self, sim: Simulator, now: float, demand: dict[str, float]) -> ScalingPlan:
        fleet = sim.fleet
        variants = tuple(v for v in (VariantChoice(i.variant, fleet.families[i.family], i.accuracy, 1000 * fleet.slo_s[i.family])
                                     for i in fleet.info.values()))
        problem = ScalingProblem(fleet.slots, variants, demand, fleet.capacity)
        plan = solve(problem, beta=self.beta, current=self.plan, time_limit_s=self.time_limit_s)
        before = self.plan.hosts if self.plan is not None else {}
        changed = [(before.get(s), v) for s, v in plan.hosts.items() if before.get(s) != v]
        moved = sum(1 for old, new in changed if old is None or fleet.info[old].family != fleet.info[new].family)
        self.solves.append({"t": now, "solve_s": plan.solve_s, "status": plan.status, "beta": plan.beta,
                            "effective_accuracy": plan.effective_accuracy, "shed_rps": plan.total_shed,
                            "demand_rps": sum(demand.values()), "changed_slots": len(changed), "family_moves": moved})
        self.last_demand, self.last_solve = demand, now
        return plan

    def start(self, sim: Simulator, trace: Trace) -> None:
        self.slot_at = {s.slot_id: i for i, s in enumerate(sim.fleet.slots)}
        self.families = sim.fleet.families
        self.true_rate = trace.rate if self.true_demand else None
        demand = {f: trace.mean_rps[k] for k, f in enumerate(sim.fleet.families)}  # same knowledge as the static ones
        plan = self._solve(sim, 0.0, demand)
        self.last_solve = None  # the first real solve comes with the first demand estimate
        for slot_id, v in plan.hosts.items():
            sim.deploy(self.slot_at[slot_id], v)
        self._take(plan, demand)

    def _take(self, plan: ScalingPlan, demand: dict[str, float]) -> None:
        self.plan = plan
        self.shed_share = [min(1.0, plan.shed.get(f, 0.0) / demand[f]) if demand.get(f, 0.0) > 0 else 0.0
                           for f in self.families]
        self.built = -1

    def tick(self, sim: Simulator, now: float, window: Sequence[int]) -> None:
        self.history.append(list(window))
        if self.waiting is not None:
            return
        demand = self._true(now) if self.true_rate is not None else self._ewma(sim.fleet.families)
        if not demand or not self.policy.due(now, demand, self.last_demand, self.last_solve):
            return
        self.waiting = self._solve(sim, now, demand)
        self.waiting_demand = demand
        sim.push(now + self.waiting.solve_s, APPLY)

    def _ewma(self, families: Sequence[str]) -> dict[str, float]:
        """pandas' ``ewm(com).mean()`` (adjust=True) over the last 1-s windows, newest weighted most."""
        weights = [(1 - self.alpha) ** age for age in range(len(self.history))]
        norm = sum(weights)
        demand = {}
        for k, f in enumerate(families):
            rate = sum(w * h[k] for w, h in zip(weights, reversed(self.history), strict=True)) / norm
            if rate > 0:
                demand[f] = rate
        return demand

    def _true(self, now: float) -> dict[str, float]:
        step = min(int(now / STEP_S), self.true_rate.shape[1] - 1)
        return {f: float(self.true_rate[k, step]) for k, f in enumerate(self.families) if self.true_rate[k, step] > 0}

    def apply(self, sim: Simulator, now: float) -> None:
        """Take a solved plan: routing and shedding at once, and every slot whose variant changes
        starts switching (drain, then load)."""
        plan, self.waiting = self.waiting, None
        if plan is None or not plan.hosts:  # nothing found in time: keep what runs
            return
        self._take(plan, self.waiting_demand)
        for slot_id, v in sorted(plan.hosts.items()):
            sim.switch(self.slot_at[slot_id], v, now)

    # --- data path ---

    def _build(self, sim: Simulator) -> None:
        """Per family: the plan's shares over the slots up with their planned variant; when none
        of them is up (all loading), any slot up with a variant of the family, by capacity."""
        plan = self.plan
        routes: list[tuple[list[float], list[int]] | None] = []
        for k, f in enumerate(sim.fleet.families):
            cum, targets, acc = [], [], 0.0
            for slot_id, share in sorted(plan.routing.get(f, {}).items()):
                i = self.slot_at[slot_id]
                if share > 0 and sim.up(i) == plan.hosts.get(slot_id):
                    acc += share
                    cum.append(acc)
                    targets.append(i)
            if not targets:
                for i, s in enumerate(sim.servers):
                    if sim.up(i) is not None and s.info.family == k:
                        acc += s.info.rate
                        cum.append(acc)
                        targets.append(i)
            routes.append((cum, targets) if targets else None)
        self.routes = routes
        self.built = sim.version

    def route(self, sim: Simulator, now: float, k: int) -> int:
        if self.built != sim.version:
            self._build(sim)
        shed = self.shed_share[k]
        if shed > 0 and self.rng.random() < shed:
            return -1
        found = self.routes[k]
        if found is None:
            return -2
        cum, targets = found
        if len(targets) == 1:
            return targets[0]
        at = bisect.bisect_right(cum, self.rng.random() * cum[-1])
        return targets[min(at, len(targets) - 1)]

    def report(self) -> dict[str, Any]:
        times = [s["solve_s"] for s in self.solves[1:]]
        statuses: dict[str, int] = {}
        for s in self.solves[1:]:
            statuses[s["status"]] = statuses.get(s["status"], 0) + 1
        return {"solves": len(self.solves) - 1, "solve_s": times, "statuses": statuses,
                "changed_slots": sum(s["changed_slots"] for s in self.solves[1:]),
                "family_moves": sum(s["family_moves"] for s in self.solves[1:]),
                "min_beta": min((s["beta"] for s in self.solves[1:]), default=None),
                "initial_solve_s": self.solves[0]["solve_s"]}


class Greedy(Scheme):
    """INFaaS-like: each request goes to the most accurate deployed variant of its family whose
    least-loaded slot is predicted to finish it by its deadline (queue in full batches after the
    running one), else to the next cheaper one, else to the slot predicted to finish first. The
    deployment starts as Clipper-HA's and is rescaled every ``period_s`` on the arrival rate seen
    in that period: a family above ``1 - slack`` of its capacity downgrades slots one variant step
    at a time (most accurate first) until it fits, then takes slots from the family with the most
    spare capacity (running its cheapest variant); a family below ``down_slack`` of its capacity
    upgrades one slot one step if the capacity still covers it. EDF batching."""

    name = "infaas"
    batching = "edf"

    def __init__(self, *, period_s: float, slack: float, down_slack: float) -> None:
        self.period_s = period_s
        self.slack = slack
        self.down_slack = down_slack
        self.seen: list[int] = []
        self.since = 0.0
        self.order: list[list[int]] = []  # per family: slots up, most accurate variant first
        self.built = -1
        self.actions = {"downgrade": 0, "upgrade": 0, "move": 0}
        self.target: list[str] = []  # the variant each slot is meant to run

    def start(self, sim: Simulator, trace: Trace) -> None:
        fleet = sim.fleet
        pick = [fleet.ladder(k)[-1] for k in range(len(fleet.families))]
        self.target = static_allocation(fleet, pick, trace.mean_rps)
        for i, v in enumerate(self.target):
            sim.deploy(i, v)
        self.seen = [0] * len(fleet.families)

    def _build(self, sim: Simulator) -> None:
        order: list[list[tuple[float, int]]] = [[] for _ in sim.fleet.families]
        for i, s in enumerate(sim.servers):
            if sim.up(i) is not None:
                order[s.info.family].append((-s.info.accuracy, i))
        self.order = [[i for _, i in sorted(o)] for o in order]
        self.built = sim.version

    def route(self, sim: Simulator, now: float, k: int) -> int:
        if self.built != sim.version:
            self._build(sim)
        mine = self.order[k]
        if not mine:
            return -2
        deadline = now + sim.fleet.slo_s[k]
        servers = sim.servers
        best_i, best_t = -1, math.inf  # fastest overall
        group_acc, group_i, group_t = None, -1, math.inf
        for i in mine:
            acc = servers[i].info.accuracy
            if acc != group_acc:
                if group_i >= 0 and group_t <= deadline:
                    return group_i
                group_acc, group_i, group_t = acc, -1, math.inf
            t = sim.finish_estimate(i, now)
            if t < group_t:
                group_i, group_t = i, t
            if t < best_t:
                best_i, best_t = i, t
        if group_i >= 0 and group_t <= deadline:
            return group_i
        return best_i

    def tick(self, sim: Simulator, now: float, window: Sequence[int]) -> None:
        for k, c in enumerate(window):
            self.seen[k] += c
        if now - self.since < self.period_s - 1e-9:
            return
        rate = [c / (now - self.since) for c in self.seen]
        self.since, self.seen = now, [0] * len(self.seen)
        self._rescale(sim, now, rate)

    def _capacity(self, sim: Simulator, k: int) -> float:
        return sum(sim.fleet.info[v].rate for v in self.target if sim.fleet.info[v].family == k)

    def _rescale(self, sim: Simulator, now: float, rate: Sequence[float]) -> None:
        fleet = sim.fleet
        info = fleet.info
        ladders = [fleet.ladder(k) for k in range(len(fleet.families))]
        step = {v: (ladders[i.family].index(v), i.family) for v, i in info.items()}
        fits = 1.0 - self.slack
        over = sorted(range(len(rate)), key=lambda k: -rate[k] / max(self._capacity(sim, k), EPS))
        for k in over:
            while rate[k] > fits * self._capacity(sim, k):
                mine = [i for i, v in enumerate(self.target) if info[v].family == k and step[v][0] > 0]
                if mine:  # downgrade the most accurate slot one step
                    i = max(mine, key=lambda i: (step[self.target[i]][0], -i))
                    self.target[i] = ladders[k][step[self.target[i]][0] - 1]
                    self.actions["downgrade"] += 1
                    sim.switch(i, self.target[i], now)
                    continue
                # all at the cheapest: take a slot from the family with the most spare capacity
                donors = []
                for i, v in enumerate(self.target):
                    j = info[v].family
                    if j != k and sum(1 for w in self.target if info[w].family == j) > 1:
                        left = self._capacity(sim, j) - info[v].rate
                        if fits * left >= rate[j]:
                            donors.append((-(fits * left - rate[j]) / max(rate[j], EPS), i))
                if not donors:
                    break
                i = min(donors)[1]
                self.target[i] = ladders[k][0]
                self.actions["move"] += 1
                sim.switch(i, self.target[i], now)
        for k in range(len(rate)):
            cap = self._capacity(sim, k)
            if rate[k] >= self.down_slack * cap:
                continue
            mine = [i for i, v in enumerate(self.target) if info[v].family == k and step[v][0] < len(ladders[k]) - 1]
            if not mine:
                continue
            i = min(mine, key=lambda i: (step[self.target[i]][0], i))
            up = ladders[k][step[self.target[i]][0] + 1]
            if fits * (cap - info[self.target[i]].rate + info[up].rate) >= rate[k]:
                self.target[i] = up
                self.actions["upgrade"] += 1
                sim.switch(i, up, now)

    def report(self) -> dict[str, Any]:
        return {"actions": dict(self.actions)}


# --- one run --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    quick: bool
    tiny: bool
    shape: Shape
    devices: int
    seeds: tuple[int, ...]
    load_s: float
    time_limit_s: float
    beta: float
    headroom_beta: float
    period_s: float
    fast_period_s: float
    ewma_com: float
    infaas_period_s: float
    infaas_slack: float
    infaas_down_slack: float
    ablations: bool
    out: Path


def make_scheme(name: str, opts: Options) -> Scheme:
    if name.startswith("ours"):
        return Proteus(policy=ResolvePolicy(period_s=opts.period_s, fast_period_s=opts.fast_period_s),
                       ewma_com=opts.ewma_com, ewma_windows=20, time_limit_s=opts.time_limit_s,
                       beta=opts.headroom_beta if name == "ours_headroom" else opts.beta,
                       name=name, batching="edf" if name == "ours_edf" else "proteus",
                       true_demand=name == "ours_true_demand")
    if name == "clipper_ha":
        return Static("clipper_ha", high=True)
    if name == "clipper_la":
        return Static("clipper_la", high=False)
    if name == "infaas":
        return Greedy(period_s=opts.infaas_period_s, slack=opts.infaas_slack, down_slack=opts.infaas_down_slack)
    raise ValueError(f"unknown scheme {name!r}")


def run_one(name: str, fleet: Fleet, trace: Trace, opts: Options, seed: int) -> dict[str, Any]:
    scheme = make_scheme(name, opts)
    scheme.rng = random.Random(f"{seed}/{name}")  # routing draws: seeded, separate per scheme
    sim = Simulator(fleet, scheme.batching, 0.0 if name == "ours_instant_switch" else opts.load_s)
    t0 = time.perf_counter()
    scheme.start(sim, trace)
    sim.run(trace, scheme, opts.shape.duration_s)
    wall = time.perf_counter() - t0
    c = sim.counts
    requests = max(c.requests, 1)
    window = opts.shape.duration_s
    acc = c.accuracy_sum / c.on_time if c.on_time else 0.0
    violations = c.requests - c.on_time
    # requests that arrived in a second whose mean load exceeds the fleet's full-accuracy capacity, and the rest
    seconds = len(sim.on_time_at)
    arrived = np.bincount(np.asarray(trace.times, dtype=float).astype(int), minlength=seconds)[:seconds]
    per_s = max(1, round(1.0 / STEP_S))
    load = np.pad(trace.load, (0, seconds * per_s - len(trace.load)), constant_values=0.0).reshape(seconds, per_s).mean(axis=1)
    over = load > 1.0
    ok = np.asarray(sim.on_time_at)
    phase = {}
    for key, mask in (("overload", over), ("normal", ~over)):
        n = int(arrived[mask].sum())
        phase[f"violation_rate_{key}"] = (n - int(ok[mask].sum())) / n if n else 0.0
    row = {
        "scheme": name, "seed": seed, "requests": c.requests, "on_time": c.on_time,
        "effective_accuracy": acc, "accuracy_drop": 100.0 - acc,
        "violation_rate": violations / requests,
        "late_rate": c.late / requests, "dropped_rate": c.dropped / requests,
        "shed_rate": c.shed / requests, "unrouted_rate": c.unrouted / requests,
        "goodput_rps": c.on_time / window, "throughput_rps": (c.on_time + c.late) / window,
        "switches": c.switches, "load_slot_s": c.load_s, "sim_wall_s": wall,
        **phase, "overload_request_share": float(arrived[over].sum() / max(arrived.sum(), 1)),
        "per_family_violation_rate": {f: (fc.requests - fc.on_time) / max(fc.requests, 1)
                                      for f, fc in zip(fleet.families, sim.per_family, strict=True)},
        "served_by_variant": dict(sorted(sim.served_by_variant.items())),
        "batching": scheme.batching,
        **scheme.report(),
    }
    return row


# --- summaries ------------------------------------------------------------------------------------

METRICS = ("effective_accuracy", "accuracy_drop", "violation_rate", "late_rate", "dropped_rate", "shed_rate",
           "unrouted_rate", "violation_rate_overload", "violation_rate_normal", "goodput_rps", "throughput_rps", "switches")


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(baseline: float, ours: float, eps: float = 0.0) -> float:
    """baseline / ours; inf when ours is 0 and the baseline is not, 1 when both are 0."""
    if ours + eps > 0:
        return (baseline + eps) / (ours + eps)
    return math.inf if baseline > 0 else 1.0


def summarise(rows: list[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    by = {(r["scheme"], r["seed"]): r for r in rows}
    names = [s for s in (*SCHEMES, *ABLATIONS) if (s, seeds[0]) in by]
    schemes = {s: {m: spread([by[(s, seed)][m] for seed in seeds]) for m in METRICS} for s in names}
    per_seed = {"acc_drop_vs_clipper_la": [], "violations_vs_clipper_ha": [], "violations_vs_infaas": [],
                "acc_drop_vs_infaas": []}
    for seed in seeds:
        ours = by[("ours", seed)]
        per_seed["acc_drop_vs_clipper_la"].append(ratio(by[("clipper_la", seed)]["accuracy_drop"], ours["accuracy_drop"]))
        per_seed["acc_drop_vs_infaas"].append(ratio(by[("infaas", seed)]["accuracy_drop"], ours["accuracy_drop"]))
        per_seed["violations_vs_clipper_ha"].append(ratio(by[("clipper_ha", seed)]["violation_rate"], ours["violation_rate"]))
        per_seed["violations_vs_infaas"].append(ratio(by[("infaas", seed)]["violation_rate"], ours["violation_rate"]))
    ratios = {k: {**spread(v), "per_seed": v} for k, v in per_seed.items()}
    solve_s = [t for seed in seeds for t in by[("ours", seed)]["solve_s"]]
    statuses: dict[str, int] = {}
    for seed in seeds:
        for k, v in by[("ours", seed)]["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    q = np.percentile(solve_s, [50, 99]).tolist() if solve_s else [0.0, 0.0]
    solves = {"count": len(solve_s), "p50_s": q[0], "p99_s": q[1], "max_s": max(solve_s, default=0.0),
              "statuses": statuses, "time_limit_hits": statuses.get("time_limit", 0),
              "slots_changed_per_run": spread([by[("ours", seed)]["changed_slots"] for seed in seeds]),
              "family_moves_per_run": spread([by[("ours", seed)]["family_moves"] for seed in seeds])}
    return {"schemes": schemes, "ratios": ratios, "solves": solves}


# --- driver ---------------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller run (about a minute), same code path")
    p.add_argument("--tiny", action="store_true", help="smoke-test size (a few seconds)")
    p.add_argument("--families", type=int, help="model families (default 9, quick 6, at most 9)")
    p.add_argument("--devices", type=int, help="GPUs, one slot each (default 20, quick 12)")
    p.add_argument("--duration-s", type=float, help="trace length (default 300, quick 60)")
    p.add_argument("--seeds", type=int, help="seeds (default 5, quick 3)")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of family popularity (default 1.0)")
    p.add_argument("--base-load", type=float, default=0.6, help="baseline load, x full-accuracy capacity (default 0.6)")
    p.add_argument("--burst-factor", type=float, default=2.5, help="load at a burst's peak, x full-accuracy capacity (default 2.5)")
    p.add_argument("--burst-share", type=float, default=0.25, help="share of the trace inside bursts (default 0.25)")
    p.add_argument("--bursts", type=int, help="number of bursts (default: one per 100 s, at least 1)")
    p.add_argument("--burst-focus", type=float, default=0.3, help="share of a burst's extra load on one random family (default 0.3)")
    p.add_argument("--load-s", type=float, default=1.0, help="time a slot needs to load another variant (default 1.0)")
    p.add_argument("--time-limit-s", type=float, default=1.0, help="MILP time limit per solve (default 1.0)")
    p.add_argument("--beta", type=float, default=1.05, help="the planner's capacity headroom to start the beta ladder from (default 1.05, Proteus)")
    p.add_argument("--headroom-beta", type=float, default=1.3, help="beta of the ours_headroom ablation (default 1.3)")
    p.add_argument("--period-s", type=float, default=10.0, help="re-solve period (default 10, Proteus)")
    p.add_argument("--fast-period-s", type=float, default=2.0, help="re-solve period when demand jumps (default 2, Proteus)")
    p.add_argument("--ewma-com", type=float, default=0.7, help="EWMA centre of mass over 1-s windows (default 0.7, Proteus' bursty config)")
    p.add_argument("--infaas-period-s", type=float, default=2.0, help="INFaaS-like rescaling period (default 2)")
    p.add_argument("--infaas-slack", type=float, default=0.05, help="INFaaS-like: overloaded above 1 - slack of capacity (default 0.05)")
    p.add_argument("--infaas-down-slack", type=float, default=0.6, help="INFaaS-like: upgrade below this share of capacity (default 0.6)")
    p.add_argument("--write-profile", action="store_true", help=f"(re)write {PROFILE_FILE} and {VARIANTS_FILE} in benchmarks/data and exit")
    p.add_argument("--no-ablations", action="store_true", help=f"skip the rows {', '.join(ABLATIONS)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    a = p.parse_args(argv)
    if a.write_profile:
        for path in write_profile(DATA):
            print(f"wrote {path}")
        raise SystemExit(0)
    size = "tiny" if a.tiny else "quick" if a.quick else "full"
    defaults = {"tiny": (3, 4, 8.0, 1), "quick": (6, 12, 60.0, 3), "full": (9, 20, 300.0, 5)}[size]
    families = a.families or defaults[0]
    devices = a.devices or defaults[1]
    duration = a.duration_s or defaults[2]
    seeds = a.seeds or defaults[3]
    if not 1 <= families <= len(FAMILIES):
        p.error(f"--families must be 1..{len(FAMILIES)}")
    if devices < families:
        p.error("--devices must be at least --families (the static baselines give each family a device)")
    if duration <= 2 or seeds < 1:
        p.error("--duration-s must exceed 2 and --seeds be at least 1")
    if not (0 <= a.burst_share <= 1 and 0 <= a.burst_focus <= 1 and a.base_load > 0 and a.burst_factor > 0):
        p.error("burst share and focus must be in [0, 1], loads positive")
    bursts = a.bursts if a.bursts is not None else max(1, round(duration / 100))
    shape = Shape(families, a.zipf, a.base_load, a.burst_factor, a.burst_share, bursts, a.burst_focus, duration)
    return Options(quick=a.quick or a.tiny, tiny=a.tiny, shape=shape, devices=devices, seeds=tuple(range(seeds)),
                   load_s=a.load_s, time_limit_s=a.time_limit_s, beta=a.beta, headroom_beta=a.headroom_beta, period_s=a.period_s, fast_period_s=a.fast_period_s,
                   ewma_com=a.ewma_com, infaas_period_s=a.infaas_period_s, infaas_slack=a.infaas_slack,
                   infaas_down_slack=a.infaas_down_slack, ablations=not a.no_ablations, out=a.out)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0))}


SIMPLIFICATIONS = (
    "one GPU kind, one slot per device, one variant per slot, for every scheme (so the MILP sees one slot class: "
    "its solves are small)",
    "a batch takes exactly the planning latency (profile p99 x 1.1 margin), which every batcher also predicts",
    "a slot that changes variant stops taking requests, finishes its queue, then serves nothing for --load-s; "
    "no make-before-break (no spare devices); the initial deployment at t=0 is free for every scheme",
    "the static baselines and the planner's first plan are sized for the trace's true mean demand per family",
    "ours: a plan takes effect after its measured solve time (wall clock here); all its slot changes start at once; "
    "routing falls back to any slot up with the family when none of the planned ones is (e.g. all loading)",
    "INFaaS-like: no VM autoscaling (fixed fleet); rescaling on the last period's arrival rate; each request sees "
    "every slot's exact queue (running batch + queue in full batches), a generous view; EDF batching",
    "Clipper-HA/LA: uniform routing over a family's slots, AIMD over batch sizes 1,2,4,.. up to the SLO/2 batch",
)


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    catalog = load_catalog().take(opts.shape.families)
    fleet = make_fleet(catalog, opts.devices)
    started = time.perf_counter()
    rows, traces = [], []
    for seed in opts.seeds:
        trace = make_trace(opts.shape, fleet, seed)
        traces.append({"seed": seed, "requests": len(trace.times), "mean_rps": sum(trace.mean_rps),
                       "peak_load": float(trace.load.max()), "mean_load": float(trace.load.mean()),
                       "bursts": [{"start_s": s, "length_s": l, "focus": fleet.families[k]} for s, l, k in trace.bursts]})
        for name in SCHEMES + (ABLATIONS if opts.ablations else ()):
            rows.append(run_one(name, fleet, trace, opts, seed))
    summary = summarise(rows, opts.seeds)
    r = summary["ratios"]
    result = {
        "acc_drop_vs_clipper_la": r["acc_drop_vs_clipper_la"]["median"],
        "violations_vs_clipper_ha": r["violations_vs_clipper_ha"]["median"],
        "violations_vs_infaas": r["violations_vs_infaas"]["median"],
        "solve_s_p99": summary["solves"]["p99_s"],
    }
    report = {
        "benchmark": "accuracy_scaling", "machine": machine(), "wall_s": time.perf_counter() - started,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "shape"},
        "workload": {**asdict(opts.shape), "mean_load_expected": opts.shape.mean_load,
                     "popularity": popularity(opts.shape.families, opts.shape.zipf).tolist(), "traces": traces},
        "fleet": {"devices": opts.devices, "kind": KIND, "families": list(fleet.families),
                  "slo_ms": {f: 1000 * s for f, s in zip(fleet.families, fleet.slo_s, strict=True)},
                  "variants": {v: {"family": fleet.families[i.family], "accuracy": i.accuracy, "rate_rps": i.rate,
                                   "batch": i.batch} for v, i in sorted(fleet.info.items())}},
        "simplifications": list(SIMPLIFICATIONS),
        "runs": rows, **summary, "result": result,
        "ratio_note": "each ratio is baseline / ours per seed (median over seeds reported); inf when ours is 0 and the baseline is not",
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(_jsonable(report), indent=2, sort_keys=True, allow_nan=False))
    print_report(report)
    print("RESULT " + " ".join(f"{k}={_fmt(v)}" for k, v in result.items()))
    return 0


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3f}" if abs(x) >= 0.01 or x == 0 else f"{x:.4g}"


def _jsonable(value: Any) -> Any:
    """JSON has no infinities or NaN: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def print_report(report: dict[str, Any]) -> None:
    m, w, f = report["machine"], report["workload"], report["fleet"]
    seeds = len(report["options"]["seeds"])
    print(f"accuracy-scaling benchmark on {m['platform']}, python {m['python']}, {m['usable_cpus']} usable cpus; "
          f"{report['wall_s']:.1f} s")
    print(f"workload: {w['families']} families, Zipf {w['zipf']:g} (popularity {', '.join(f'{p:.2f}' for p in w['popularity'])}); "
          f"{w['duration_s']:g} s; load (x full-accuracy capacity) base {w['base_load']:g}, peak {w['burst_factor']:g}, "
          f"{w['bursts']} burst(s) over {w['burst_share']:.0%} of the time, focus {w['burst_focus']:g}; "
          f"expected mean load {w['mean_load_expected']:.2f}")
    for t in w["traces"]:
        print(f"  seed {t['seed']}: {t['requests']:,} requests, mean {t['mean_rps']:.0f} rps, load mean {t['mean_load']:.2f} "
              f"peak {t['peak_load']:.2f}; bursts " + ", ".join(f"{b['start_s']:.0f}-{b['start_s'] + b['length_s']:.0f} s on {b['focus']}"
                                                              for b in t["bursts"]))
    print(f"fleet: {f['devices']} x {f['kind']} (one slot each); SLO ms " + ", ".join(f"{k} {v:g}" for k, v in f["slo_ms"].items()))
    o = report["options"]
    print(f"ours: re-solve every {o['period_s']:g} s ({o['fast_period_s']:g} s on demand jumps), MILP time limit {o['time_limit_s']:g} s, "
          f"EWMA com {o['ewma_com']:g}; variant load time {o['load_s']:g} s for every scheme")
    share = statistics.median(r["overload_request_share"] for r in report["runs"])
    print(f"\nper scheme: median [min-max] over {seeds} seed(s); violations split by arrival in seconds whose load exceeds "
          f"full-accuracy capacity (overload, {share:.0%} of requests) or not (normal); goodput/throughput in rps")
    head = (f"  {'scheme':19s} {'batching':8s} {'eff. acc':>22s} {'acc drop':>20s} {'violations %':>22s} "
            f"{'late/drop/shed/unrouted %':>26s} {'overload/normal %':>18s} {'goodput':>8s} {'thrput':>7s} {'switches':>8s}")
    print(head)
    rows_by = {r["scheme"]: r for r in report["runs"]}
    for s in report["schemes"]:
        if s == ABLATIONS[0]:
            print(f"  ablations of ours, one thing changed each: edf batching / the trace's true current demand instead of "
                  f"the EWMA / switching variants costs no load time / beta {o['headroom_beta']:g} instead of {o['beta']:g}:")
        x = report["schemes"][s]

        def cell(metric: str, scale: float = 1.0, digits: int = 2) -> str:
            v = x[metric]
            return f"{v['median'] * scale:.{digits}f} [{v['min'] * scale:.{digits}f}-{v['max'] * scale:.{digits}f}]"

        parts = "/".join(f"{x[k]['median'] * 100:.2f}" for k in ("late_rate", "dropped_rate", "shed_rate", "unrouted_rate"))
        phases = "/".join(f"{x[k]['median'] * 100:.2f}" for k in ("violation_rate_overload", "violation_rate_normal"))
        print(f"  {s:19s} {rows_by[s]['batching']:8s} {cell('effective_accuracy'):>22s} {cell('accuracy_drop'):>20s} "
              f"{cell('violation_rate', 100):>22s} {parts:>26s} {phases:>18s} {x['goodput_rps']['median']:8.0f} "
              f"{x['throughput_rps']['median']:7.0f} {x['switches']['median']:8.0f}")
    sv = report["solves"]
    print(f"\nours, MILP solves: {sv['count']} over all seeds; p50 {sv['p50_s'] * 1000:.1f} ms, p99 {sv['p99_s'] * 1000:.1f} ms, "
          f"max {sv['max_s'] * 1000:.1f} ms (time limit {o['time_limit_s']:g} s); statuses {sv['statuses']}; "
          f"hit the time limit {sv['time_limit_hits']}")
    print(f"  slot changes per run: median {sv['slots_changed_per_run']['median']:g}, of which moved to another family "
          f"{sv['family_moves_per_run']['median']:g} ({f['devices']} slots)")
    print("\nratios (baseline / ours, per seed; median [min-max]):")
    for k, v in report["ratios"].items():
        print(f"  {k:26s} {_fmt(v['median']):>8s} [{_fmt(v['min'])}-{_fmt(v['max'])}]")
    print("\nsimplifications:")
    for line in report["simplifications"]:
        print(f"  - {line}")


if __name__ == "__main__":
    raise SystemExit(main())
