"""Makes the profile sets the planner benchmark reads (see README.md in this folder for provenance).

``--gpu``: a synthetic GPU profile (latency per MPS percentage and batch), utilisation features
and co-location slowdowns, computed from published per-model characteristics with a simple
roofline-style formula; deterministic (fixed seed). ``--cpu``: latency of the demo "digits"
models measured on this machine with 1 and 2 cores, and their slowdown when two run side by side
on separate cores. An entry point: may import everything.

Run: ``python benchmarks/data/generate.py --gpu --cpu``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    sys.path.insert(0, str(HERE.parent.parent))

PARTITIONS = (20, 40, 50, 60, 80, 100)
BATCHES = (1, 2, 4, 8, 16, 32)
GPU_KIND = "cuda"
CPU_KIND = "cpu"
PEAK_GFLOP_PER_MS = 8.0  # effective dense FP32 rate of a whole 2080 Ti-class GPU
SMOOTH_K = 4.0  # sharpness of the knee where a model stops filling more SMs
SEED = 20220711

PROFILE_FIELDS = ("variant", "device_kind", "partition", "batch", "p50_ms", "p99_ms")
COLOCATION_FIELDS = ("device_kind", "a_variant", "a_partition", "a_batch", "b_variant", "b_partition", "b_batch", "slowdown")


def gpu_models() -> dict[str, dict]:
    return json.loads((HERE / "gpu_models.json").read_text())["models"]


def variants_of(models: dict[str, dict]) -> list[tuple[str, dict]]:
    out = []
    for name, m in sorted(models.items()):
        for v in m.get("variants", [name]):
            out.append((v, m))
    return out


def gpu_latency_ms(m: dict, partition: int, batch: int) -> float:
    """overhead + per-input copy + compute on the SMs the batch can fill within its partition."""
    share = partition / 100.0
    growth = math.log2(batch) / 5.0  # 0 at batch 1, 1 at batch 32
    fill = min(1.0, m["fill_b1"] * (m["fill_b32"] / m["fill_b1"]) ** growth)
    usable = (share ** -SMOOTH_K + fill ** -SMOOTH_K) ** (-1.0 / SMOOTH_K)
    compute = batch * m["gflops"] / (PEAK_GFLOP_PER_MS * m["efficiency"] * usable)
    return m["overhead_ms"] + m["transfer_ms"] * batch + compute


def utilisation(m: dict, batch: int) -> tuple[float, float]:
    """(DRAM, L2) utilisation of a solo run: the model's level, ramping up with batch size."""
    ramp = 1.0 - math.exp(-batch / 6.0) * 0.6
    return m["dram_util"] * ramp, m["l2_util"] * ramp


def true_slowdown(ma: dict, pa: int, ba: int, mb: dict, pb: int, bb: int) -> float:
    """The hidden co-location law the samples are drawn from (the fitted model only sees features)."""
    da, _la = (u * pa / 100 for u in utilisation(ma, ba))
    db, lb = (u * pb / 100 for u in utilisation(mb, bb))
    return 1.0 + 0.32 * db + 0.08 * lb + 0.10 * da + 0.30 * da * db


def write_gpu() -> None:
    rng = np.random.default_rng(SEED)
    models = gpu_models()
    rows = []
    for v, m in variants_of(models):
        for p in PARTITIONS:
            for b in BATCHES:
                p50 = gpu_latency_ms(m, p, b) * (1.0 + 0.01 * float(rng.standard_normal()))
                p99 = p50 * (1.04 + 0.02 * float(rng.random())) + 0.05
                rows.append((v, GPU_KIND, p, b, round(p50, 4), round(p99, 4)))
    _write_csv(HERE / "gpu_profile.csv", PROFILE_FIELDS, rows)
    util_rows = []
    for v, m in variants_of(models):
        for b in BATCHES:
            dram, l2 = utilisation(m, b)
            util_rows.append((v, b, round(dram, 4), round(l2, 4)))
    _write_csv(HERE / "gpu_util.csv", ("variant", "batch", "dram_util", "l2_util"), util_rows)
    names = [v for v, _ in variants_of(models)]
    by_name = dict(variants_of(models))
    co_rows = []
    for _ in range(240):
        a, b = (names[i] for i in rng.integers(0, len(names), size=2))
        pa = int(rng.choice((20, 40, 50, 60, 80)))
        ba, bb = (int(x) for x in rng.choice(BATCHES, size=2))
        pb = 100 - pa
        alpha = true_slowdown(by_name[a], pa, ba, by_name[b], pb, bb) + 0.008 * float(rng.standard_normal())
        co_rows.append((GPU_KIND, a, pa, ba, b, pb, bb, round(max(alpha, 0.98), 4)))
    _write_csv(HERE / "gpu_colocation.csv", COLOCATION_FIELDS, co_rows)


# --- CPU measurement ------------------------------------------------------------------------------

CPU_BATCHES = BATCHES
CPU_WARMUP = 10
CPU_ROUNDS = 5  # solo and shared (or 1- and 2-core) blocks alternate, so background load hits both alike
CPU_BLOCK = 20
CO_BATCHES = ((1, 1), (8, 8), (32, 32), (1, 32), (32, 1))


def _digits_model(name: str):
    import torch

    from letmesh.zoo import DIGITS_RECIPES, Probabilities, quiet_jit

    recipe = next(r for r in DIGITS_RECIPES if r.name == name)
    torch.manual_seed(0)
    with quiet_jit():
        return torch.jit.script(Probabilities(recipe.make()).eval())


def _pin(cores: set[int]) -> None:
    import torch

    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))


def _time_batches(model, batch: int, repeats: int, warmup: int = CPU_WARMUP) -> list[float]:
    import torch

    x = torch.rand(batch, 64)
    out = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _profile(core_sets: list[set[int]], names: list[str]) -> list[tuple]:
    """Latency per (variant, core count, batch), the core sets measured in alternating blocks."""
    rows = []
    for name in names:
        model = _digits_model(name)
        for b in CPU_BATCHES:
            samples: dict[int, list[float]] = {len(c): [] for c in core_sets}
            for _ in range(CPU_ROUNDS):
                for cores in core_sets:
                    _pin(cores)
                    samples[len(cores)] += _time_batches(model, b, CPU_BLOCK, warmup=3)
            for n, xs in samples.items():
                rows.append((name, CPU_KIND, n, b, float(np.percentile(xs, 50)), float(np.percentile(xs, 99))))
    return rows


def _busy_child(core: int, conn) -> None:
    """Runs whatever (variant, batch) it is told on its core until told to stop."""
    import torch

    _pin({core})
    models: dict[str, object] = {}
    while True:
        cmd = conn.recv()
        if cmd is None:
            return
        name, batch = cmd
        model = models.setdefault(name, _digits_model(name))
        x = torch.rand(batch, 64)
        with torch.inference_mode():
            for _ in range(CPU_WARMUP):
                model(x)
            conn.send("ready")
            while not conn.poll():
                model(x)
        conn.recv()  # the "stop" token


def write_cpu(out: Path = HERE) -> None:
    from letmesh.zoo import DIGITS_RECIPES

    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("the CPU profile needs at least two usable cores")
    core_a, core_b = sorted(os.sched_getaffinity(0))[:2]
    names = [r.name for r in DIGITS_RECIPES]
    rows = _profile([{core_a}, {core_a, core_b}], names)
    rows = [(v, k, p, b, round(p50, 4), round(p99, 4)) for v, k, p, b, p50, p99 in rows]
    _write_csv(out / "cpu_profile.csv", PROFILE_FIELDS, rows)
    # co-location: this process on core A measures, a child on core B keeps the other model busy;
    # solo and shared blocks alternate and the slowdown is the ratio of their medians
    _pin({core_a})
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    busy = ctx.Process(target=_busy_child, args=(core_b, child))
    busy.start()
    co_rows = []
    try:
        models = {name: _digits_model(name) for name in names}
        for a in names:
            for b in names:
                for ba, bb in CO_BATCHES:
                    solo, shared = [], []
                    for _ in range(CPU_ROUNDS):
                        solo += _time_batches(models[a], ba, CPU_BLOCK, warmup=3)
                        parent.send((b, bb))
                        parent.recv()
                        shared += _time_batches(models[a], ba, CPU_BLOCK, warmup=3)
                        parent.send("stop")
                    ratio = float(np.percentile(shared, 50)) / float(np.percentile(solo, 50))
                    co_rows.append((CPU_KIND, a, 1, ba, b, 1, bb, round(ratio, 4)))
    finally:
        parent.send(None)
        busy.join(timeout=30)
    _write_csv(out / "cpu_colocation.csv", COLOCATION_FIELDS, co_rows)


def _write_csv(path: Path, fields: tuple[str, ...], rows: list[tuple]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="write the synthetic GPU profile set")
    p.add_argument("--cpu", action="store_true", help="measure the CPU profile set on this machine")
    p.add_argument("--out-dir", type=Path, default=HERE, help="where --cpu writes (default: this folder)")
    a = p.parse_args(argv)
    if not (a.gpu or a.cpu):
        p.error("say --gpu, --cpu or both")
    if a.gpu:
        write_gpu()
    if a.cpu:
        a.out_dir.mkdir(parents=True, exist_ok=True)
        write_cpu(a.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
