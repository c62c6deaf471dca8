"""The accuracy-scaling benchmark's inputs: a synthetic multi-family profile set (written to
``benchmarks/data``), the fleet it gives on one GPU kind, and generated bursty, Zipf-skewed
Poisson workloads whose shape is a parameter."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.accuracy import (
    Slot,
    VariantChoice,
    capacities,
)
from controller.planning import LatencyModel, ProfileTable

DATA = Path(__file__).resolve().parent.parent / "data"
PROFILE_FILE = "accuracy_profile.csv"
VARIANTS_FILE = "accuracy_variants.csv"
KIND = "gpu"
ALLOWED_BATCHES = (1, 2, 4, 8)  # Proteus' allowed batch sizes

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


