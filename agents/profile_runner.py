"""Carrying out a ProfileDevice command on the agent: profiling processes on partitions, progress out.

The plan (agents.profiler.measurement_plan) is taken in order, one partition size at a time: a
profiling process pinned to that partition measures every (variant, batch) alone, then, for the
co-locations, a second process on the rest of the device loops the co-runner while the first
measures again, where the device's memory holds it (``agents.profile_memory``; else those
co-locations go unmeasured). Nothing else of the run shares the device meanwhile. Results stream
to the controller as ProfileProgress messages through ``emit``; the last one has ``done`` set.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.artifact import MAX_REASON_LEN
from agents.probe import host_cpu_reason
from agents.process import CORES_ENV, visible_device
from agents.profile_memory import corunner_shortfall_now
from agents.profiler import (
    SPEC_ENV,
    Measurement,
    ProfilerSpec,
    Shared,
    Solo,
    device_capacity,
    measurement_plan,
    partition_menu,
)
from agents.profiler_process import ProfileFailed, ProfilerProcess
from mesh.actor import MailboxClosed
from protocol.message import ProfileDevice, ProfileProgress, VariantLoadFailed
from protocol.types import ColocationSample, DeviceInfo, ProfileSample, VariantSpec

log = logging.getLogger(__name__)

Emit = Callable[[ProfileProgress | VariantLoadFailed], None]


@dataclass(frozen=True, slots=True)
class ProfileLimits:
    """Bounds on one profiling run. ``start_s`` covers a fresh interpreter importing torch,
    fetching and loading the artifacts; ``step_s`` one measurement (warm-up and timed runs)."""

    start_s: float = 180.0
    step_s: float = 300.0
    stop_s: float = 2.0  # SIGTERM, then SIGKILL after this
    progress_every: int = 4  # measurements per ProfileProgress
    warmup_runs: int = 3
    max_pairs: int = 32
    fetch_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """Everything one run measured; ``error`` is empty when it measured the whole plan."""

    samples: tuple[ProfileSample, ...]
    colocations: tuple[ColocationSample, ...]
    error: str = ""


def profiler_environment(
    spec: ProfilerSpec, *, kind: str, device_id: str, partition: int, cores: Sequence[int]
) -> dict[str, str]:
    """The environment of a profiling process: its spec, and the partition it enforces on itself.

    CPU: pinned to ``cores`` with as many torch/OpenMP threads. CUDA: the device, and the MPS
    active-thread percentage ``partition`` (honoured when an MPS control daemon runs).
    """
    env = dict(os.environ)
    env[SPEC_ENV] = spec.to_json()
    if kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = visible_device(device_id, os.environ)
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(partition)
        env.pop(CORES_ENV, None)
        threads = 1
    else:
        env[CORES_ENV] = ",".join(str(c) for c in cores)
        threads = len(cores)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def describe(kind: str, device_id: str, partition: int) -> str:
    if kind == "cuda":
        return f"{partition}% of {device_id}"
    return f"{partition} core" + ("s" if partition != 1 else "")


@dataclass(slots=True)
class _Tally:
    completed: int = 0
    samples: list[ProfileSample] = field(default_factory=list)
    colocations: list[ColocationSample] = field(default_factory=list)
    unsent: int = 0  # the last `unsent` samples have not been emitted yet
    unsent_colocations: int = 0  # likewise for colocations


class ProfileRunner:
    """One profiling run of one device, started by the agent for a ProfileDevice command.

    :meth:`run` never raises but ``CancelledError``: a failure ends the run with a final
    ProfileProgress carrying ``error``. Cancelling it terminates its processes (SIGTERM, then
    SIGKILL) before the cancellation propagates; every process also dies with the agent.
    ``emit`` is called from the run's task and must not block.
    """

    def __init__(
        self,
        cmd: ProfileDevice,
        *,
        agent_id: str,
        devices: Sequence[DeviceInfo],
        cores: Sequence[int],
        controller: str,
        state_dir: Path,
        emit: Emit,
        limits: ProfileLimits = ProfileLimits(),
        extra_env: dict[str, str] | None = None,
        serving: tuple[frozenset[int], frozenset[str]] = (frozenset(), frozenset()),
        neighbours: Callable[[], Iterable[int]] = tuple,
    ) -> None:
        self.cmd = cmd
        self.agent_id = agent_id
        self.devices = tuple(devices)
        # Cores and GPUs workers serve on: a profile measured beside them shows their load (batch 1
        # came out twice as slow). Partitions take free cores first; one that cannot is measured
        # anyway, and said to be.
        self._held, self._busy_gpus = serving
        self._neighbours = neighbours  # the pids of the agent's workers, whose memory the run shares
        self.cores = tuple(sorted(cores, key=lambda c: c in self._held))
        self.controller = controller
        self.cache_dir = Path(state_dir).absolute() / "artifacts"
        self.limits = limits
        self._extra_env = dict(extra_env or {})
        self._emit = emit
        self._live: list[ProfilerProcess] = []
        self._spawned = 0
        self._tally = _Tally()
        self._total = 0
        self._kind = ""
        self._unloadable: set[str] = set()  # variants a profiler of this run could not load
        self._not_beside: set[str] = set()  # variants a co-runner could not load, though the measuring one did

    async def run(self) -> ProfileResult:
        started = time.monotonic()
        cmd = self.cmd
        error = ""
        try:
            device = next((d for d in self.devices if d.device_id == cmd.device_id), None)
            if device is None:
                raise ProfileFailed(f"this agent has no device {cmd.device_id!r}")
            if device.kind == "cuda" and device.device_id in self._busy_gpus:
                log.info("profiling %s beside the workers serving on it: its profiles may read slow", device.device_id)
            if device.kind != "cuda":  # partitions are core counts out of the cores this agent may use
                device = replace(device, cores=min(device.cores, len(self.cores)))
            self._kind = device.kind
            capacity = device_capacity(device)
            menu = partition_menu(device, cmd.partitions)
            variants = cmd.variants
            if device.kind == "cuda":
                # Those that would run on the host CPU here, on cores nothing counts: with no profile
                # on this GPU, the planner places them on a CPU.
                reasons = {v.name: host_cpu_reason(v.backend, "cuda") for v in cmd.variants}
                variants = tuple(v for v in cmd.variants if not reasons[v.name])
                for name, reason in sorted(reasons.items()):
                    if reason:
                        log.warning("not profiling %s on %s: %s", name, cmd.device_id, reason)
            plan = measurement_plan(variants, menu, cmd.batches, cmd.colocation, capacity,
                                    max_pairs=self.limits.max_pairs)
            self._total = len(plan)
            log.info("profiling %s: %d measurements over partitions %s", cmd.device_id, len(plan), list(menu))
            self._send(done=False)
            for partition, steps in itertools.groupby(plan, key=lambda m: m.partition):
                await self._profile_partition(device, partition, list(steps))
        except ProfileFailed as exc:
            error = str(exc)
        except Exception as exc:  # a failing profile never takes the agent down
            log.exception("profiling failed", extra={"device": cmd.device_id})
            error = f"{type(exc).__name__}: {exc}"
        finally:
            await self._stop_all()
        if error:
            log.warning("profiling of %s failed after %d/%d: %s",
                        cmd.device_id, self._tally.completed, self._total, error)
        else:
            log.info("profiling of %s done: %d measurements in %.1f s", cmd.device_id, self._total,
                     time.monotonic() - started)
        self._send(done=True, error=error)
        return ProfileResult(tuple(self._tally.samples), tuple(self._tally.colocations), error)

    async def _profile_partition(self, device: DeviceInfo, partition: int, steps: list[Measurement]) -> None:
        by_name = {v.name: v for v in self.cmd.variants}
        if not (steps := self._loadable(steps)):
            return
        home = await self._start(device, partition, 0, [by_name[n] for n in _names(s.variant for s in steps)])
        steps = self._loadable(steps)
        solo: dict[Solo, float] = {}
        other: ProfilerProcess | None = None
        for step in steps:
            if isinstance(step, Shared) and other is None:  # the first co-location: its co-runner starts
                if short := self._memory_short(device, home):  # the rest of this partition's steps are Shared
                    self._total -= sum(isinstance(s, Shared) for s in steps)
                    log.warning("profiling %s: co-location not measured: memory lacks %d MiB for a co-runner beside "
                                "the workers and the profiler", describe(device.kind, device.device_id, partition),
                                max(1, short >> 20))
                    break
                corunners = [by_name[n] for n in _names(s.other for s in steps if isinstance(s, Shared))]
                other = await self._start(device, step.other_partition, partition, corunners)
            if self._unmeasurable(step):  # a variant the co-runner could not load
                self._total -= 1
                continue
            if isinstance(step, Solo):
                answer = await self._measure(home, step.variant, step.batch)
                solo[step] = answer["p50_ms"]
                self._record_solo(device, step, answer)
                continue
            assert other is not None
            await other.call({"op": "load", "variant": step.other, "batch": step.other_batch}, "loading",
                             self.limits.step_s)
            answer = await self._measure(home, step.variant, step.batch)
            self._record_shared(device, step, solo[step.solo], answer)
        # On failure or cancellation they stay live and run() stops them all at once.
        for proc in (other, home):
            if proc is not None:
                await proc.close(self.limits.stop_s)
                self._live.remove(proc)

    def _unmeasurable(self, step: Measurement) -> bool:
        return step.variant in self._unloadable or (
            isinstance(step, Shared) and (step.other in self._unloadable or step.other in self._not_beside))

    def _loadable(self, steps: list[Measurement]) -> list[Measurement]:
        """``steps`` without those of a variant a profiler could not load; the run's total shrinks by them."""
        kept = [s for s in steps if not self._unmeasurable(s)]
        self._total -= len(steps) - len(kept)
        return kept

    def _set_aside(self, ready: dict[str, Any], identity: str, label: str, corunner: bool) -> None:
        """Variants the profiler could not load, though others loaded: the controller sets each aside
        (as on a worker's report) and this run measures the rest, where one would fail it all. A
        co-runner failing one the measuring profiler holds says more of the moment than of the
        variant: only the co-locations beside it are left out, and nothing is reported."""
        unloadable = ready.get("unloadable")
        for name, reason in sorted(unloadable.items() if isinstance(unloadable, dict) else ()):
            if name in self._unloadable or not any(v.name == name for v in self.cmd.variants):
                continue
            if corunner:
                self._not_beside.add(name)
                log.warning("profiling on %s: co-runner %s did not load, its co-locations are not measured: %s",
                            label, name, reason)
                continue
            self._unloadable.add(name)
            log.error("profiling on %s: variant %s could not be loaded, measuring the rest: %s", label, name, reason)
            try:
                self._emit(VariantLoadFailed(worker_id=identity, variant=name, reason=str(reason)[:MAX_REASON_LEN]))
            except MailboxClosed:  # the agent is stopping, and cancels this run
                log.debug("load failure of %s not passed on: the agent is stopping", name)

    def _memory_short(self, device: DeviceInfo, home: ProfilerProcess) -> int:
        """What the CPU device's memory lacks for a co-runner beside the agent's workers and this
        run's live profilers (see agents.profile_memory); GPU memory is not what a process holds."""
        pids = [*self._neighbours(), *(p.proc.pid for p in self._live)]
        return corunner_shortfall_now(device.memory_bytes, pids, home.proc.pid) if device.kind == "cpu" else 0

    async def _start(self, device: DeviceInfo, partition: int, offset: int,
                     variants: list[VariantSpec]) -> ProfilerProcess:
        cores = self.cores[offset:offset + partition] if device.kind != "cuda" else ()
        if beside := sorted(set(cores) & self._held):
            # The usual case on a fresh mesh (its first workers serve while it profiles): said, not warned.
            log.info("profiling %s on cores %s beside the workers serving there: these profiles may read slow",
                     describe(device.kind, device.device_id, partition), beside)
        spec = ProfilerSpec(
            controller=self.controller,
            identity=f"profiler:{self.agent_id}:{self.cmd.request_id}.{self._spawned}",
            device="cuda" if device.kind == "cuda" else "cpu",
            cache_dir=str(self.cache_dir),
            variants=tuple(variants),
            fetch_timeout_s=self.limits.fetch_timeout_s,
        )
        self._spawned += 1
        env = profiler_environment(spec, kind=device.kind, device_id=device.device_id, partition=partition, cores=cores)
        env.update(self._extra_env)
        label = describe(device.kind, device.device_id, partition)
        proc = await ProfilerProcess.spawn(env, label)
        self._live.append(proc)
        ready = await proc.wait_ready(self.limits.start_s)
        if cores and sorted(ready.get("cores", ())) != sorted(cores):
            raise ProfileFailed(f"profiler on {label} runs on cores {ready.get('cores')}, not {list(cores)}")
        self._set_aside(ready, spec.identity, label, corunner=offset > 0)
        return proc

    async def _measure(self, proc: ProfilerProcess, variant: str, batch: int) -> dict[str, Any]:
        command = {"op": "measure", "variant": variant, "batch": batch, "repeats": max(1, self.cmd.repeats),
                   "warmup": self.limits.warmup_runs}
        answer = await proc.call(command, "measured", self.limits.step_s)
        if not (0 < answer["p50_ms"] <= answer["p99_ms"]):
            raise ProfileFailed(f"profiler on {proc.label} measured {variant} batch {batch} as {answer}")
        return answer

    def _record_solo(self, device: DeviceInfo, step: Solo, answer: dict[str, Any]) -> None:
        self._tally.samples.append(ProfileSample(
            variant=step.variant, device_kind=device.kind, partition=step.partition, batch=step.batch,
            p50_ms=float(answer["p50_ms"]), p99_ms=float(answer["p99_ms"]), runs=int(answer["runs"]),
        ))
        self._tally.unsent += 1
        size = describe(device.kind, device.device_id, step.partition)
        self._advance(f"profiling {step.variant} batch {step.batch} on {size}")

    def _record_shared(self, device: DeviceInfo, step: Shared, solo_p50: float, answer: dict[str, Any]) -> None:
        self._tally.colocations.append(ColocationSample(
            device_kind=device.kind, variant=step.variant, partition=step.partition, batch=step.batch,
            other=step.other, other_partition=step.other_partition, other_batch=step.other_batch,
            solo_p50_ms=solo_p50, shared_p50_ms=float(answer["p50_ms"]),
        ))
        self._tally.unsent_colocations += 1
        mine = describe(device.kind, device.device_id, step.partition)
        theirs = describe(device.kind, device.device_id, step.other_partition)
        self._advance(f"profiling {step.variant} batch {step.batch} on {mine} next to {step.other} on {theirs}")

    def _advance(self, what: str) -> None:
        self._tally.completed += 1
        log.info("%s: %d/%d", what, self._tally.completed, self._total)
        if self._tally.unsent + self._tally.unsent_colocations >= max(1, self.limits.progress_every):
            self._send(done=False)

    def _send(self, *, done: bool, error: str = "") -> None:
        tally = self._tally
        samples = tuple(tally.samples[len(tally.samples) - tally.unsent:])
        colocations = tuple(tally.colocations[len(tally.colocations) - tally.unsent_colocations:])
        tally.unsent = tally.unsent_colocations = 0
        progress = ProfileProgress(
            request_id=self.cmd.request_id, agent_id=self.agent_id, device_kind=self._kind,
            completed=tally.completed, total=self._total, samples=samples, colocations=colocations,
            done=done, error=error,
        )
        try:
            self._emit(progress)
        except MailboxClosed:  # the agent is stopping, and cancels this run; a restart is asked afresh
            log.debug("profiling progress of %s dropped: the agent is stopping", self.cmd.device_id)
        except Exception:
            log.warning("profiling progress could not be passed on", exc_info=True)

    async def _stop_all(self) -> None:
        """Terminate every live process; SIGKILL whatever outlives the grace, even when cancelled."""
        live, self._live = self._live, []
        for proc in live:
            if proc.proc.returncode is None:
                try:
                    proc.proc.terminate()
                except ProcessLookupError:
                    pass
        try:
            async with asyncio.timeout(self.limits.stop_s):
                await asyncio.gather(*(p.proc.wait() for p in live))
        except TimeoutError:
            pass
        finally:
            for proc in live:
                proc.kill()
        await asyncio.gather(*(p.reap() for p in live))


def _names(names: Iterable[str]) -> list[str]:
    """Distinct names in first-seen order."""
    return list(dict.fromkeys(names))
