"""Auto-profiling: which measurements to take (pure), and the profiling process that takes them.

``python -m agents.profiler`` runs on one partition, like a worker: it pins itself to its core
set before numpy or torch start a thread, fetches its variants' artifacts from the controller,
loads them, says ``ready``, then obeys JSON commands read line by line on stdin — ``measure`` a
(variant, batch), or ``load``: run one in a loop until the next command, the co-runner of a
co-location measurement. Every command gets one JSON line on stdout; progress goes to stderr.

The agent imports the plan from here, so nothing at module level may import torch; only the
process itself pins (when run as ``__main__``).
"""

from __future__ import annotations

import os

# Pin before numpy (imported through protocol below) or torch create their thread pools:
# threads inherit the affinity of the thread that creates them.
if __name__ == "__main__":
    _CORES = os.environ.get("LETMESH_WORKER_CORES")
    if _CORES:
        os.sched_setaffinity(0, {int(c) for c in _CORES.split(",")})

import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import queue  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402
import zmq.asyncio  # noqa: E402

from agents.artifact import fetch_artifact, load_failure_reason  # noqa: E402
from agents.error import AgentError, ModelLoadError  # noqa: E402
from mesh.latency import warmup_batches  # noqa: E402
from mesh.keys import client_keys_from_env  # noqa: E402
from mesh.transport import Endpoint, EndpointClosed  # noqa: E402
from protocol.error import ProtocolError  # noqa: E402
from protocol.schema import from_plain, to_plain  # noqa: E402
from protocol.types import DeviceInfo, VariantSpec  # noqa: E402

if TYPE_CHECKING:
    from agents.model_runner import ModelRunner

log = logging.getLogger(__name__)

SPEC_ENV = "LETMESH_PROFILE_SPEC"
CUDA_CAPACITY = 100  # a CUDA device is shared by MPS active-thread percentages
DEFAULT_MAX_PAIRS = 32
DEFAULT_WARMUP_RUNS = 3


class ProfilerSpecError(AgentError):
    """The profiling process was started without a valid spec."""


# --- the plan (pure) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Solo:
    """Time ``variant`` at ``batch`` alone on a partition of ``partition`` units (cores or MPS %)."""

    variant: str
    partition: int
    batch: int


@dataclass(frozen=True, slots=True)
class Shared:
    """Time ``variant`` on its partition while ``other`` runs in a loop on the rest of the device."""

    variant: str
    partition: int
    batch: int
    other: str
    other_partition: int
    other_batch: int

    @property
    def solo(self) -> Solo:
        """The solo measurement this one is compared with."""
        return Solo(self.variant, self.partition, self.batch)


Measurement = Solo | Shared


def device_capacity(device: DeviceInfo) -> int:
    """A device's size in partition units: usable cores on a CPU or edge board, 100 on CUDA."""
    return CUDA_CAPACITY if device.kind == "cuda" else max(1, device.cores)


def partition_menu(device: DeviceInfo, requested: Iterable[int]) -> tuple[int, ...]:
    """The requested partition sizes this device can hold; the whole device when none fits.

    A CUDA device without an MPS daemon cannot enforce a percentage: it has one partition, 100.
    """
    capacity = device_capacity(device)
    if device.kind == "cuda" and not device.mps:
        return (capacity,)
    menu = sorted({p for p in requested if 0 < p <= capacity})
    return tuple(menu) or (capacity,)


def batch_menu(max_batch: int, batches: Sequence[int]) -> tuple[int, ...]:
    """The requested batch sizes a variant takes: those up to its maximum, plus the maximum itself
    when a larger one was asked; the warm-up sizes (1, 2, 4, ... max) when none was asked."""
    top = max(1, max_batch)
    if not batches:
        return tuple(warmup_batches(top))
    chosen = {b for b in batches if 1 <= b <= top}
    if any(b > top for b in batches):
        chosen.add(top)
    return tuple(sorted(chosen)) or (1,)


def measurement_plan(
    variants: Sequence[VariantSpec],
    partitions: Iterable[int],
    batches: Sequence[int],
    colocation: bool,
    cores: int,
    *,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> list[Measurement]:
    """Every measurement of one profiling run, in the order it is taken.

    ``cores`` is the device's capacity in partition units (usable cores; 100 on CUDA). For each
    partition size, smallest first: every (variant, batch) alone, then the co-locations whose
    measured side has that size — it shares the device with ``other`` on the rest of it
    (``cores - partition``), both at their smallest batch, then both at their largest. Co-locations
    are capped at ``max_pairs``, taken evenly spaced from the full list so that every split and
    variant stays represented. Same input, same plan; a Shared entry always follows its Solo.
    """
    specs: list[VariantSpec] = []
    for spec in variants:
        if spec.name not in {s.name for s in specs}:
            specs.append(spec)
    menu = sorted({p for p in partitions if 0 < p <= cores})
    sizes = {s.name: batch_menu(s.max_batch, batches) for s in specs}
    shared = _colocations(specs, menu, sizes, cores, max_pairs) if colocation else []
    plan: list[Measurement] = []
    for p in menu:
        plan.extend(Solo(s.name, p, b) for s in specs for b in sizes[s.name])
        plan.extend(m for m in shared if m.partition == p)
    return plan


def _colocations(
    specs: Sequence[VariantSpec], menu: Sequence[int], sizes: dict[str, tuple[int, ...]], cores: int, max_pairs: int
) -> list[Shared]:
    full: list[Shared] = []
    seen: set[Shared] = set()
    for p in menu:
        if p >= cores:
            continue  # nothing left of the device for a co-runner
        for a in specs:
            for b in specs:
                for pick in (0, -1):  # both at their smallest batch, then both at their largest
                    entry = Shared(a.name, p, sizes[a.name][pick], b.name, cores - p, sizes[b.name][pick])
                    if entry not in seen:
                        seen.add(entry)
                        full.append(entry)
    if len(full) <= max_pairs:
        return full
    return [full[i * len(full) // max_pairs] for i in range(max(0, max_pairs))]


# --- the process spec -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProfilerSpec:
    """What one profiling process needs; travels as JSON in its environment."""

    controller: str
    identity: str  # DEALER routing identity towards the controller
    device: str  # "cpu" | "cuda"
    cache_dir: str
    variants: tuple[VariantSpec, ...]
    fetch_timeout_s: float = 10.0

    def to_json(self) -> str:
        return json.dumps({
            "controller": self.controller,
            "identity": self.identity,
            "device": self.device,
            "cache_dir": self.cache_dir,
            "variants": [to_plain(v) for v in self.variants],
            "fetch_timeout_s": self.fetch_timeout_s,
        })

    @classmethod
    def from_json(cls, raw: str) -> ProfilerSpec:
        try:
            data = json.loads(raw)
            return cls(
                controller=str(data["controller"]),
                identity=str(data["identity"]),
                device=str(data["device"]),
                cache_dir=str(data["cache_dir"]),
                variants=tuple(from_plain(VariantSpec, v) for v in data["variants"]),
                fetch_timeout_s=float(data.get("fetch_timeout_s", 10.0)),
            )
        except (ValueError, TypeError, KeyError, ProtocolError) as exc:
            raise ProfilerSpecError(f"bad profiler spec: {exc!r}") from None


# --- the process ------------------------------------------------------------------------------


class _Commands:
    """Commands read from stdin by a daemon thread, so a load loop can poll for the next one."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(stream,), name="profiler-stdin", daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if not line.strip():
                continue
            try:
                command = json.loads(line)
            except ValueError:
                command = None
            self._queue.put(command if isinstance(command, dict) else {"op": "invalid", "line": line[:200]})
        self._queue.put(None)  # end of input: the agent is done with this process

    def next(self) -> dict[str, Any] | None:
        return self._queue.get()

    def pending(self) -> bool:
        return not self._queue.empty()


def _claim_stdout() -> IO[str]:
    """The results stream: the real stdout; anything else printing to fd 1 lands on stderr."""
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return results


def _write(results: IO[str], event: dict[str, Any]) -> None:
    results.write(json.dumps(event) + "\n")
    results.flush()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds, so partial downloads are removed


async def _fetch_all(spec: ProfilerSpec) -> dict[str, Path]:
    ctx = zmq.asyncio.Context()
    endpoint = Endpoint.dealer(ctx, spec.controller, spec.identity, security=client_keys_from_env(), control=True)
    replies: asyncio.Queue[Any] = asyncio.Queue()

    async def receive() -> None:
        while True:
            try:
                incoming = await endpoint.recv()
            except EndpointClosed:
                return
            replies.put_nowait(incoming.msg)

    receiver = asyncio.create_task(receive())
    try:
        paths = {}
        for variant in spec.variants:
            paths[variant.name] = await fetch_artifact(
                endpoint, replies, Path(spec.cache_dir), variant.sha256, timeout_s=spec.fetch_timeout_s
            )
        return paths
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        endpoint.close()
        ctx.term()


def _measure(runner: ModelRunner, batch: int, repeats: int, warmup: int) -> dict[str, Any]:
    inputs = runner.example_inputs(batch)
    for _ in range(max(1, warmup)):  # the first run compiles and allocates
        runner.run(inputs)
    # The runner's own clock: on one CPU thread, CPU time. A serving worker or a starting process
    # that shares the core takes turns with this one, and wall time counted its turns too (beside
    # a process running the medium goodput model on its core, batch 1 of it read 21.4 ms against
    # 10.1 ms of CPU time). A co-runner on other cores still shows, in the cycles this thread
    # stalls on shared caches and memory.
    clock = runner.clock()
    times = []
    for _ in range(max(1, repeats)):
        start = clock()
        runner.run(inputs)
        times.append(clock() - start)
    ms = np.asarray(times) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "runs": len(times)}


def _serve(runners: dict[str, ModelRunner], commands: _Commands, results: IO[str]) -> None:
    command = commands.next()
    while command is not None:
        op, name = command.get("op"), command.get("variant")
        runner = runners.get(name) if isinstance(name, str) else None
        try:
            batch = int(command.get("batch", 1))
            if op not in ("measure", "load"):
                raise ValueError(f"unknown command {command!r}")
            if runner is None:
                raise ValueError(f"variant {name!r} is not loaded in this profiler")
            if op == "measure":
                stats = _measure(runner, batch, int(command.get("repeats", 20)),
                                 int(command.get("warmup", DEFAULT_WARMUP_RUNS)))
                log.info("%s batch %d: p50 %.3f ms, p99 %.3f ms over %d runs",
                         name, batch, stats["p50_ms"], stats["p99_ms"], stats["runs"])
                _write(results, {"event": "measured", "variant": name, "batch": batch, **stats})
            else:
                inputs = runner.example_inputs(batch)
                runner.run(inputs)
                _write(results, {"event": "loading", "variant": name, "batch": batch})
                log.info("looping %s batch %d as a co-runner", name, batch)
                while not commands.pending():
                    runner.run(inputs)
        except Exception as exc:  # a failing command is reported as data; the agent decides
            _write(results, {"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        command = commands.next()


def _load_each(spec: ProfilerSpec, paths: dict[str, Path], runner: type, onnx_upgrade: bool,
               ) -> tuple[dict[str, Any], dict[str, str]]:
    """Each variant's runner, and why each whose artifact its runtime refuses (ModelLoadError) did
    not load. Such a variant is named rather than failing the others. Anything else (memory ran
    out, a device fault) is the host's and is raised, as is the first refusal when none loads: the
    host, not every variant, is then likely at fault."""
    runners: dict[str, Any] = {}
    unloadable: dict[str, str] = {}
    first: ModelLoadError | None = None
    for v in spec.variants:
        try:
            runners[v.name] = runner(v, paths[v.name], device=spec.device, onnx_upgrade=onnx_upgrade)
        except ModelLoadError as exc:
            first = first or exc
            unloadable[v.name] = load_failure_reason(exc)
            log.warning("could not load %s: %s", v.name, unloadable[v.name])
    if first is not None and not runners:
        raise first
    return runners, unloadable


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("LETMESH_LOG_LEVEL", "INFO"),
        format="%(asctime)s profiler %(levelname)s: %(message)s",
    )
    results = _claim_stdout()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        spec = ProfilerSpec.from_json(os.environ.get(SPEC_ENV, ""))
    except ProfilerSpecError as exc:
        _write(results, {"event": "error", "message": str(exc)})
        return 2
    try:
        paths = asyncio.run(_fetch_all(spec))
        # torch only now: the agent imports this module for the plan and must not pay for it.
        import torch

        from agents.model_runner import ModelRunner

        cores = sorted(os.sched_getaffinity(0))
        if spec.device == "cpu":
            torch.set_num_threads(len(cores))
        from agents.onnx_upgrade import enabled_from_env

        runners, unloadable = _load_each(spec, paths, ModelRunner, enabled_from_env())
    except Exception as exc:
        _write(results, {"event": "error", "message": f"loading failed: {type(exc).__name__}: {exc}"})
        return 1
    log.info("loaded %s on cores %s with %d threads", ", ".join(runners), cores, torch.get_num_threads())
    _write(results, {"event": "ready", "variants": list(runners), "unloadable": unloadable, "cores": cores,
                     "threads": torch.get_num_threads()})
    _serve(runners, _Commands(sys.stdin), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
