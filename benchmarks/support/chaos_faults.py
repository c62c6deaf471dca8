"""The chaos benchmark's fault classes and its overload, bad-artifact and fuzz phases.

Each fault class is a ``Fault`` (what to do to the mesh and how it is healed); ``run_phase`` in
``benchmarks.support.chaos_mesh`` drives the load around it. A composition root: may import everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from agents.proc_usage import process_usage
from benchmarks.support import chaos_inputs as inputs
from benchmarks.support.chaos_mesh import ROLES, Fault, MeshUnderTest, run_phase
from benchmarks.support.openloop import Stream
from letmesh.zoo import ARTIFACT, HELDOUT, MANIFEST

GRACE_MS = 50.0
# The overload burst's target: a variant costly per request (letmesh.costly), so that 5x its
# sustainable rate is a rate the load client can send; the digits models are too cheap for that.
COSTLY = "synth-large"
COSTLY_DEPTH = 14400
BAD_VARIANT = "digits-wide"  # shares its worker with healthy variants in the demo layout

@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    quick: bool
    classes: tuple[str, ...]
    phase_s: float
    fault_at_s: float
    down_s: float
    overload_s: float
    overload_factor: float
    max_rate_rps: float
    deadline_ms: float
    family_rps: float
    named_rps: float
    client_timeout_s: float
    heal_timeout_s: float
    start_timeout_s: float
    bad_start_timeout_s: float
    fuzz_bodies: int
    fuzz_frames: int
    repo: str
    repository: Path | None
    epochs_scale: float
    out: Path
    keep: bool = False
    log_level: str = "WARNING"


# --- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    family: str
    named: str  # a variant requested by name
    bodies: dict[str, dict[str, Any]]  # a valid body per model name
    costly: str = ""  # the variant the overload burst names (default: ``named``)

    @property
    def burst(self) -> str:
        return self.costly or self.named

    def body(self, name: str) -> bytes:
        return json.dumps(self.bodies[name]).encode()

    def streams(self, opts: Options, *extra: Stream) -> tuple[Stream, ...]:
        out = [Stream(label=self.family, path=f"/v2/models/{self.family}/infer", body=self.body(self.family),
                      rate_rps=opts.family_rps)]
        if self.named != self.family:
            out.append(Stream(label=self.named, path=f"/v2/models/{self.named}/infer", body=self.body(self.named),
                              rate_rps=opts.named_rps))
        return (*out, *extra)


def workload(repo: Path, kind: str, deadline_ms: float) -> Workload:
    params = {"letmesh_slo_ms": deadline_ms}
    if kind == "trivial":
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}], "parameters": params}
        return Workload(family="trivial", named="identity", bodies={"trivial": body, "identity": body})
    image = np.load(repo / HELDOUT)["images"][0].astype(float).tolist()
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64], "data": image}],
            "parameters": {**params, "letmesh_context": {"app": "chaos"}}}
    names = ("digits", "digits-cnn", "digits-linear", "digits-mlp", BAD_VARIANT)
    bodies = dict.fromkeys(names, body)
    costly = ""
    if (repo / COSTLY / MANIFEST).is_file():
        costly = COSTLY
        bodies[COSTLY] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}],
                          "parameters": params}
    return Workload(family="digits", named="digits-cnn", bodies=bodies, costly=costly)


# --- fault classes -----------------------------------------------------------------------------


def _worker(target: MeshUnderTest, variant: str) -> tuple[str, int]:
    status = target.status()
    workers = [w for w in (status.workers if status else ()) if w.state == "ready" and w.pid]
    chosen = next((w for w in workers if variant in w.variants), workers[0] if workers else None)
    if chosen is not None:
        return chosen.worker_id, chosen.pid
    pid = next(iter(target.worker_pids().values()))
    return f"pid {pid}", pid


def _signal_role(role: str, sig: signal.Signals):
    def inject(target: MeshUnderTest) -> tuple[dict[str, Any], set[int]]:
        pid = target.pid(role)
        if pid is None:
            return {"skipped": f"{role} not running"}, set()
        ended = {pid} | (set(target.worker_pids().values()) if role == "agent" else set())
        os.kill(pid, sig)
        return {"pid": pid, "signal": sig.name}, ended
    return inject


def _restart(role: str, signalled_at: list[float]):
    """Heal: wait (bounded) for the signalled role to exit, then start it again."""
    def heal(target: MeshUnderTest) -> dict[str, Any]:
        proc = target.mesh.procs.get(role)
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # still running: the restart stops it
                code = proc.wait(15.0)
        exited = time.monotonic()
        target.restart_role(role)
        return {"exit_code": code, "exited_after_s": round(exited - signalled_at[0], 2) if signalled_at else None,
                "restarted_after_s": round(time.monotonic() - signalled_at[0], 2) if signalled_at else None}
    return heal


def faults(opts: Options, work: Workload) -> dict[str, Fault]:
    variant = work.named
    out: dict[str, Fault] = {}

    def kill_worker(t: MeshUnderTest):
        wid, pid = _worker(t, variant)
        os.kill(pid, signal.SIGKILL)
        return {"worker": wid, "pid": pid}, {pid}

    stopped: list[int] = []

    def stop_worker(t: MeshUnderTest):
        wid, pid = _worker(t, variant)
        os.kill(pid, signal.SIGSTOP)
        stopped[:] = [pid]
        return {"worker": wid, "pid": pid, "stopped_s": opts.down_s}, set()

    def resume_worker(t: MeshUnderTest):
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        return {"resumed": list(stopped)}

    out["kill_worker"] = Fault(name="kill_worker", describe=f"kill -9 the worker serving {variant}",
                               inject=kill_worker, expected_worker_restarts=1)
    out["stop_worker"] = Fault(name="stop_worker", describe=f"SIGSTOP the worker serving {variant}, SIGCONT later",
                               inject=stop_worker, heal_after_s=opts.down_s, heal=resume_worker)
    for role in ("agent", "controller", "gateway"):
        times: list[float] = []
        signal_role = _signal_role(role, signal.SIGKILL)

        def inject(t: MeshUnderTest, signal_role=signal_role, times=times):
            times[:] = [time.monotonic()]
            return signal_role(t)
        out[f"kill_{role}"] = Fault(name=f"kill_{role}", describe=f"kill -9 the {role}, restart it after "
                                    f"{opts.down_s:g} s", inject=inject, heal_after_s=opts.down_s,
                                    heal=_restart(role, times))
    term_times: list[float] = []
    term = _signal_role("gateway", signal.SIGTERM)

    def term_gateway(t: MeshUnderTest):
        term_times[:] = [time.monotonic()]
        notes, _ = term(t)
        return notes, {notes["pid"]} if "pid" in notes else set()
    out["term_gateway"] = Fault(name="term_gateway", describe="SIGTERM the gateway (graceful drain), start it again "
                                "once it exited", inject=term_gateway, heal_after_s=0.0,
                                heal=_restart("gateway", term_times))
    body = work.bodies[work.family]
    out["poison_context"] = Fault(
        name="poison_context", describe="family requests whose letmesh_context holds 2**80, -2**70 or 200 "
        "levels of nesting, each followed by feedback",
        inject=lambda t: ({"sent": inputs.poison_http(t.url, work.family, body)}, set()))
    out["poison_nan"] = Fault(
        name="poison_nan", describe="4 DecisionRecords with a NaN budget, sent as a gateway would",
        inject=lambda t: (inputs.send_control(t.mesh.controller_address, "gateway:chaos",
                                              [inputs.nan_records(work.family, variant, 4)], t.mesh.keys_dir), set()))
    out["poison_demand"] = Fault(
        name="poison_demand", describe="4 DemandReports naming 4,096 invented models, sent as a gateway would",
        inject=lambda t: (inputs.send_control(t.mesh.controller_address, "gateway:chaos",
                                              [inputs.invented_demand(4096) for _ in range(4)], t.mesh.keys_dir),
                          set()))
    return out


# --- overload ----------------------------------------------------------------------------------


async def _closed_loop(url: str, body: bytes, seconds: float, clients: int, limit_s: float) -> int:
    good = 0
    stop_at = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async def client() -> None:
            nonlocal good
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                        await resp.read()
                        good += resp.status == 200 and time.monotonic() - start <= limit_s
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    # Not goodput; the probe goes on (one failed request used to end the whole run).
                    await asyncio.sleep(0.05)
        await asyncio.gather(*(client() for _ in range(clients)))
    return good


def overload_phase(target: MeshUnderTest, opts: Options, work: Workload) -> dict[str, Any]:
    """A burst at a multiple of the sustainable rate of the costly variant (``work.burst``) requested by
    name, on top of the steady streams. The sustainable rate is the goodput (200s within deadline +
    grace) of a short closed loop of 8 clients on that variant, measured once the mesh has re-planned
    for that load: a first loop of the same length raises the demand, then the layout settles."""
    probe_s = 2.0 if opts.quick else 5.0
    url, limit_s = f"{target.url}/v2/models/{work.burst}/infer", (opts.deadline_ms + GRACE_MS) / 1000.0
    warm = asyncio.run(_closed_loop(url, work.body(work.burst), probe_s, 8, limit_s))
    settle_began = time.monotonic()
    unsettled = target.wait_healthy(opts.heal_timeout_s)
    settle_s = time.monotonic() - settle_began
    good = asyncio.run(_closed_loop(url, work.body(work.burst), probe_s, 8, limit_s))
    sustainable = good / probe_s
    burst = max(1.0, min(opts.max_rate_rps, opts.overload_factor * sustainable))
    stream = Stream(label="burst", path=f"/v2/models/{work.burst}/infer", body=work.body(work.burst),
                    rate_rps=burst, start_s=opts.fault_at_s, duration_s=opts.overload_s)
    duration = opts.fault_at_s + opts.overload_s + max(opts.phase_s - opts.fault_at_s, 5.0)
    result = run_phase(target, work.streams(opts, stream), None, duration_s=duration, fault_at_s=opts.fault_at_s,
                       deadline_ms=opts.deadline_ms, client_timeout_s=opts.client_timeout_s,
                       recovery_from_s=opts.fault_at_s + opts.overload_s)
    result.update(fault="overload", describe=f"{burst:.0f} req/s to {work.burst} for {opts.overload_s:g} s "
                  f"({burst / max(sustainable, 1e-9):.1f}x its measured {sustainable:.0f} req/s; asked "
                  f"{opts.overload_factor:g}x, capped at {opts.max_rate_rps:g}) over the steady streams; "
                  "recovery counted from the end of the burst",
                  notes={"sustainable_rps": sustainable, "burst_rps": burst, "probe_s": probe_s,
                         "burst_factor": burst / max(sustainable, 1e-9), "warm_up_rps": warm / probe_s,
                         "settle_s": round(settle_s, 1), "unsettled": unsettled})
    return result


# --- bad artifacts -----------------------------------------------------------------------------


def corrupt_copy(repo: Path, dest: Path, how: str) -> dict[str, Any]:
    """A copy of ``repo`` with BAD_VARIANT's artifact truncated (manifest updated to match) or one byte flipped."""
    shutil.copytree(repo, dest)
    artifact, manifest_path = dest / BAD_VARIANT / ARTIFACT, dest / BAD_VARIANT / MANIFEST
    blob = bytearray(artifact.read_bytes())
    if how == "truncated":
        blob = blob[: len(blob) // 2]
        manifest = json.loads(manifest_path.read_text())
        manifest.update(sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob))
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    else:
        blob[len(blob) // 2] ^= 0xFF
    artifact.write_bytes(bytes(blob))
    return {"variant": BAD_VARIANT, "artifact": how, "bytes": len(blob)}


def bad_artifact_phase(how: str, repo: Path, work_dir: Path, opts: Options, work: Workload) -> dict[str, Any]:
    notes = corrupt_copy(repo, work_dir / f"repo-{how}", how)
    target = MeshUnderTest(repository=work_dir / f"repo-{how}", state_dir=work_dir / f"state-{how}")
    started = time.monotonic()
    problem = target.start(opts.bad_start_timeout_s)
    notes.update(start_s=round(time.monotonic() - started, 1), start_problem=problem,
                 exited_at_start={r: p.returncode for r, p in target.mesh.procs.items() if p.poll() is not None},
                 startup_log=target.crash_log.read())
    try:
        healthy = Stream(label="digits-linear", path="/v2/models/digits-linear/infer", body=work.body("digits-linear"),
                         rate_rps=10.0)
        result = run_phase(target, work.streams(opts, healthy), None, duration_s=opts.phase_s, fault_at_s=0.0,
                           deadline_ms=opts.deadline_ms, client_timeout_s=opts.client_timeout_s, recovery_from_s=0.0)
        # As after the other classes: healthy again within the heal timeout (a re-plan may be
        # half-way, its old workers still draining, the moment the load stops).
        notes["health_after"] = target.wait_healthy(opts.heal_timeout_s)
    finally:
        notes["left_behind"] = target.stop()
    result.update(fault=f"bad_{how}", describe=f"{BAD_VARIANT}'s artifact {how} beside healthy variants "
                  "(a mesh of its own; recovery counted from the first request)", notes=notes)
    result["crashes"] += len(notes["exited_at_start"]) + sum(notes["startup_log"]["actor_crashes"].values())
    return result


# --- fuzzing -----------------------------------------------------------------------------------


def rss_mb(target: MeshUnderTest) -> dict[str, float]:
    pids = {r: target.pid(r) for r in ROLES}
    pids.update({f"worker {pid}": pid for pid in target.worker_pids().values()})
    usage = {name: process_usage(pid) for name, pid in pids.items() if pid}
    return {name: (u.resident_bytes if u else 0) / 2**20 for name, u in usage.items()}


def fuzz_phase(target: MeshUnderTest, opts: Options, work: Workload) -> dict[str, Any]:
    before_pids = {r: target.pid(r) for r in ROLES}
    target.crash_log.read()
    rss_before = rss_mb(target)
    http = asyncio.run(inputs.fuzz_http(target.url, work.bodies, {"event_id": "fuzz", "reward": 0.5},
                                        bodies=opts.fuzz_bodies))
    control = inputs.fuzz_control(target.mesh.controller_address, work.family, work.named, frames=opts.fuzz_frames,
                                  keys_dir=target.mesh.keys_dir)
    time.sleep(1.0)  # a crash caused by the last frames has time to show
    health_after = target.wait_healthy(opts.heal_timeout_s)  # before the counts: a crash meanwhile is one
    rss_after = rss_mb(target)
    exits = [r for r, pid in before_pids.items() if pid is not None and target.pid(r) != pid]
    growth = {k: round(rss_after[k] - v, 2) for k, v in rss_before.items() if k in rss_after}
    logged = target.crash_log.read()
    return {"http": http, "control": control, "role_exits": exits,
            "crashes": len(exits) + sum(logged["actor_crashes"].values()), **logged,
            "worker_exits": sorted(set(rss_before) - set(rss_after) - set(ROLES)),
            "rss_before_mb": rss_before, "rss_after_mb": rss_after, "rss_growth_mb": growth,
            "leak_mb": max(growth.values(), default=0.0), "health_after": health_after}
