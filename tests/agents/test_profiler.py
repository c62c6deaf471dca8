"""Auto-profiling: the plan of measurements, and real profiling processes fetching real models from
a real controller, measuring them alone and side by side, streaming progress, and leaving nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import torch
import zmq
import zmq.asyncio
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from agents.agent_actor import AgentActor
from agents.config import AgentConfig
from agents.error import ModelLoadError
from agents.model_runner import ModelRunner
from agents.probe import probe_devices, usable_cores
from agents.process import CORES_ENV
from agents.profile_runner import ProfileLimits, ProfileResult, ProfileRunner, profiler_environment
from agents.profiler import (
    ProfilerSpec,
    ProfilerSpecError,
    Shared,
    Solo,
    _Commands,
    _load_each,
    _serve,
    batch_menu,
    measurement_plan,
    partition_menu,
)
from controller.config import ControllerConfig
from controller.controller_actor import ControllerActor
from controller.repository import load_repository
from letmesh.zoo import build_trivial, quiet_jit
from protocol.codec import decode, encode
from protocol.message import ProfileDevice, ProfileProgress, RegisterAgent, RegisterAgentReply, VariantLoadFailed
from protocol.types import DeviceInfo, VariantSpec
from tests.agents.held_up import held_up

BOUND_S = 5.0
RUN_S = 60.0  # a whole profiling run: fresh interpreters importing torch on a loaded 2-core machine
CORES = usable_cores()
TWO_CORES = len(CORES) >= 2

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")


def spec(name: str, max_batch: int) -> VariantSpec:
    return VariantSpec(name=name, family="f", sha256=name * 8, size_bytes=1, max_batch=max_batch)


def cpu(cores: int) -> DeviceInfo:
    return DeviceInfo(device_id="cpu0", kind="cpu", name="test", cores=cores, memory_bytes=1 << 30)


def gpu(mps: bool) -> DeviceInfo:
    return DeviceInfo(device_id="cuda1", kind="cuda", name="test", cores=132, memory_bytes=1 << 34, mps=mps)


# --- the plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_batch", "asked", "menu"),
    [
        (32, (1, 2, 4), (1, 2, 4)),
        (3, (1, 2, 4, 8), (1, 2, 3)),  # sizes past the maximum give way to the maximum itself
        (1, (1, 2), (1,)),
        (8, (), (1, 2, 4, 8)),  # nothing asked: the warm-up sizes
        (4, (0, -2, 2), (2,)),
    ],
)
def test_batch_menu_stays_within_the_variant_maximum(max_batch: int, asked: tuple[int, ...], menu) -> None:
    assert batch_menu(max_batch, asked) == menu


@pytest.mark.parametrize(
    ("device", "asked", "menu"),
    [
        (cpu(2), (1, 2), (1, 2)),
        (cpu(2), (1, 2, 4), (1, 2)),
        (cpu(2), (4, 8), (2,)),  # none fits: the whole device
        (gpu(mps=True), (20, 40, 50, 60, 80, 100, 120), (20, 40, 50, 60, 80, 100)),
        (gpu(mps=False), (20, 40, 100), (100,)),  # no MPS daemon: a percentage is not enforced
    ],
)
def test_partition_menu_fits_the_device(device: DeviceInfo, asked: tuple[int, ...], menu) -> None:
    assert partition_menu(device, asked) == menu


def test_plan_on_two_cores_measures_alone_then_side_by_side() -> None:
    plan = measurement_plan([spec("a", 32), spec("b", 1)], (1, 2), (1, 2), True, 2)

    assert plan == [
        Solo("a", 1, 1), Solo("a", 1, 2), Solo("b", 1, 1),
        Shared("a", 1, 1, "a", 1, 1), Shared("a", 1, 2, "a", 1, 2),
        Shared("a", 1, 1, "b", 1, 1), Shared("a", 1, 2, "b", 1, 1),
        Shared("b", 1, 1, "a", 1, 1), Shared("b", 1, 1, "a", 1, 2),
        Shared("b", 1, 1, "b", 1, 1),
        Solo("a", 2, 1), Solo("a", 2, 2), Solo("b", 2, 1),
    ]


@pytest.mark.parametrize(
    ("partitions", "colocation", "capacity"),
    [((1, 2), False, 2), ((1,), True, 1), ((2,), True, 2)],
    ids=["colocation-off", "one-core", "only-whole-device"],
)
def test_no_colocation_without_room_for_two(partitions, colocation: bool, capacity: int) -> None:
    plan = measurement_plan([spec("a", 4)], partitions, (1, 4), colocation, capacity)
    assert plan and all(isinstance(m, Solo) for m in plan)


def test_colocations_are_capped_deterministically_and_spread_over_splits() -> None:
    variants = [spec(n, 32) for n in "abcdef"]
    menu = (20, 40, 50, 60, 80, 100)

    plan = measurement_plan(variants, menu, (1, 8, 32), True, 100, max_pairs=24)

    shared = [m for m in plan if isinstance(m, Shared)]
    assert len(shared) == 24 == len(set(shared))
    assert plan == measurement_plan(variants, menu, (1, 8, 32), True, 100, max_pairs=24)
    assert {m.partition for m in shared} == {20, 40, 50, 60, 80}
    assert {m.variant for m in shared} == set("abcdef")
    assert all(m.partition + m.other_partition == 100 for m in shared)
    assert {(m.batch, m.other_batch) for m in shared} <= {(1, 1), (32, 32)}


@given(
    maxima=st.lists(st.integers(1, 64), min_size=1, max_size=4),
    partitions=st.lists(st.integers(-2, 10), max_size=5),
    batches=st.lists(st.integers(-1, 70), max_size=6),
    colocation=st.booleans(),
    cores=st.integers(1, 8),
    max_pairs=st.integers(0, 12),
)
def test_plan_invariants(maxima, partitions, batches, colocation: bool, cores: int, max_pairs: int) -> None:
    variants = [spec(f"v{i}", m) for i, m in enumerate(maxima)]
    by_name = {v.name: v for v in variants}

    plan = measurement_plan(variants, partitions, batches, colocation, cores, max_pairs=max_pairs)

    solo = [m for m in plan if isinstance(m, Solo)]
    shared = [m for m in plan if isinstance(m, Shared)]
    menu = sorted({p for p in partitions if 0 < p <= cores})
    assert len(set(plan)) == len(plan)
    assert {(m.variant, m.partition, m.batch) for m in solo} == {
        (v.name, p, b) for v in variants for p in menu for b in batch_menu(v.max_batch, batches)
    }
    assert [m.partition for m in plan] == sorted(m.partition for m in plan)  # one partition size at a time
    assert len(shared) <= max_pairs and (colocation or not shared)
    for m in shared:
        assert plan.index(m.solo) < plan.index(m)  # the solo latency is known when the pair runs
        assert m.partition + m.other_partition == cores and m.other_partition > 0
        assert m.other_batch <= by_name[m.other].max_batch


# --- the process environment ------------------------------------------------------------------


def process_spec() -> ProfilerSpec:
    return ProfilerSpec(controller="tcp://127.0.0.1:1", identity="profiler:a1:1.0", device="cpu",
                        cache_dir="/tmp/x", variants=(spec("a", 4),))


def test_cpu_profiler_is_pinned_to_its_cores_with_matching_threads() -> None:
    env = profiler_environment(process_spec(), kind="cpu", device_id="cpu0", partition=2, cores=[3, 5])
    assert env[CORES_ENV] == "3,5"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert ProfilerSpec.from_json(env["LETMESH_PROFILE_SPEC"]) == process_spec()


@pytest.mark.parametrize(
    "raw",
    ["", "[]", '{"controller": "x"}', json.dumps({**json.loads(process_spec().to_json()), "variants": [{"name": 3}]})],
    ids=["empty", "not-an-object", "missing-fields", "bad-variant"],
)
def test_a_bad_process_spec_is_refused_by_name(raw: str) -> None:
    with pytest.raises(ProfilerSpecError):
        ProfilerSpec.from_json(raw)


class _Runner:
    """Stands in for ModelRunner: refuses the variants named in ``refused`` as a runtime refuses an
    artifact, and runs out of memory on those in ``exhausted``."""

    refused: frozenset[str] = frozenset()
    exhausted: frozenset[str] = frozenset()

    def __init__(self, spec: VariantSpec, path: Path, *, device: str, onnx_upgrade: bool) -> None:
        if spec.name in self.refused:
            raise ModelLoadError(f"cannot read {path.name}")
        if spec.name in self.exhausted:
            raise MemoryError("no room for the weights")
        self.spec = spec


@pytest.mark.parametrize("refused", [(), ("double",), ("double", "identity")], ids=["none", "one", "all"])
def test_a_profiler_loads_each_variant_it_can_and_fails_only_when_none_loads(variants, refused) -> None:
    spec = ProfilerSpec(controller="tcp://127.0.0.1:1", identity="profiler:a1:1.0", device="cpu", cache_dir="/nowhere",
                        variants=variants)
    paths = {v.name: Path(f"/nowhere/{v.name}.pt") for v in variants}
    runner = type("Refusing", (_Runner,), {"refused": frozenset(refused)})
    if len(refused) == len(variants):
        with pytest.raises(ModelLoadError, match="cannot read double.pt"):  # the first failure, as before
            _load_each(spec, paths, runner, False)
        return
    runners, unloadable = _load_each(spec, paths, runner, False)
    assert sorted(runners) == sorted(v.name for v in variants if v.name not in refused)
    assert unloadable == {name: f"ModelLoadError: cannot read {name}.pt" for name in refused}


def test_a_profiler_that_runs_out_of_memory_loading_fails_rather_than_blame_the_variant(variants) -> None:
    spec = ProfilerSpec(controller="tcp://127.0.0.1:1", identity="profiler:a1:1.0", device="cpu", cache_dir="/nowhere",
                        variants=variants)
    paths = {v.name: Path(f"/nowhere/{v.name}.pt") for v in variants}
    with pytest.raises(MemoryError):  # the host's fault: the run fails, no variant is set aside
        _load_each(spec, paths, type("Short", (_Runner,), {"exhausted": frozenset({"identity"})}), False)


def test_cuda_profiler_gets_its_mps_share() -> None:
    env = profiler_environment(process_spec(), kind="cuda", device_id="cuda1", partition=40, cores=())
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "40"
    assert CORES_ENV not in env and env["OMP_NUM_THREADS"] == "1"


# --- one measurement -----------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_a_neighbour_taking_turns_on_the_core_does_not_inflate_a_solo_measurement(repo: Path, variants,
                                                                                  monkeypatch, threads: int) -> None:
    """Beside a busy process on its core, wall time read batch 1 at twice its latency; on one
    CPU thread the measurement reads the model's own time, on several (wall time, the only
    latency there) it still reads the median, not the held-up runs."""
    monkeypatch.setattr("agents.model_runner.cpu_threads", lambda: threads)
    identity = next(v for v in variants if v.name == "identity")
    runner = ModelRunner(identity, repo / "identity" / "model.pt")
    held_up(runner, every=1 if threads == 1 else 3, seconds=0.05)
    commands = io.StringIO(json.dumps({"op": "measure", "variant": "identity", "batch": 2, "repeats": 5,
                                       "warmup": 1}) + "\n")
    results = io.StringIO()

    _serve({"identity": runner}, _Commands(commands), results)

    (line,) = results.getvalue().splitlines()
    measured = json.loads(line)
    assert measured["event"] == "measured" and measured["runs"] == 5
    assert measured["p50_ms"] < 25, measured  # the tiny model's own time, not the neighbour's 50 ms


# --- real runs --------------------------------------------------------------------------------


class Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's identity variant (max batch 32) and "double" (max batch 1)."""
    root = tmp_path_factory.mktemp("repo")
    manifest = build_trivial(root)
    buffer = io.BytesIO()
    with quiet_jit():
        torch.jit.save(torch.jit.script(Double().eval()), buffer)
    blob = buffer.getvalue()
    (root / "double").mkdir()
    (root / "double" / "model.pt").write_bytes(blob)
    (root / "double" / "manifest.json").write_text(json.dumps({
        **manifest, "variant": "double", "max_batch": 1, "sha256": hashlib.sha256(blob).hexdigest(),
        "size_bytes": len(blob),
    }))
    return root


@pytest.fixture(scope="module")
def variants(repo: Path) -> tuple[VariantSpec, ...]:
    return tuple(v.spec() for _, v in sorted(load_repository(repo).items()))


def children() -> set[int]:
    """Processes whose parent is this test process, zombies included."""
    mine = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == mine:
            found.add(int(entry))
    return found


def leftovers(state_dir: Path) -> list[str]:
    """Files a run may not leave: partial downloads, or anything but verified artifacts."""
    cache = state_dir / "artifacts"
    files = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    return [f for f in files if f.startswith(".") or len(f) != 64]


async def eventually(condition: Callable[[], bool], timeout_s: float) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)


@pytest.fixture
def no_children() -> object:
    assert not children(), "processes left by an earlier test"
    yield
    left = children()
    assert not left, f"processes left running: {left}"


def add_unloadable(root: Path) -> bytes:
    """A variant "broken" beside "double", its artifact a sound archive with the right sha256 that
    holds no model: it fetches whole and only loading it fails. Returns the artifact."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("broken/data.pkl", b"not a TorchScript module")
    blob = buffer.getvalue()
    (root / "broken").mkdir()
    (root / "broken" / "model.pt").write_bytes(blob)
    manifest = json.loads((root / "double" / "manifest.json").read_text())
    (root / "broken" / "manifest.json").write_text(json.dumps({
        **manifest, "variant": "broken", "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob)}))
    return blob


def runner(cmd: ProfileDevice, address: str, state_dir: Path, emit: Callable[[ProfileProgress], None],
           **limits: int) -> ProfileRunner:
    return ProfileRunner(cmd, agent_id="a1", devices=probe_devices(with_cuda=False), cores=CORES, controller=address,
                         state_dir=state_dir, emit=emit, limits=ProfileLimits(**limits))


async def test_every_partition_and_batch_is_measured_alone_and_side_by_side(
    controller, variants, tmp_path, no_children
) -> None:
    partitions = (1, 2) if TWO_CORES else (1,)
    cmd = ProfileDevice(request_id=7, device_id="cpu0", variants=variants, partitions=partitions, batches=(1, 2),
                        repeats=3, colocation=True)
    progress: list[ProfileProgress] = []

    result: ProfileResult = await asyncio.wait_for(
        runner(cmd, controller.address, tmp_path / "agent", progress.append).run(), RUN_S
    )

    assert result.error == ""
    cells = {(s.variant, s.partition, s.batch) for s in result.samples}
    assert cells == {("identity", p, b) for p in partitions for b in (1, 2)} | {("double", p, 1) for p in partitions}
    assert len(result.samples) == len(cells)
    for s in result.samples:
        assert s.device_kind == "cpu" and s.runs == 3
        assert 0 < s.p50_ms <= s.p99_ms
    if TWO_CORES:
        pairs = {(c.variant, c.batch, c.other, c.other_batch) for c in result.colocations}
        assert pairs == {
            ("identity", 1, "identity", 1), ("identity", 2, "identity", 2), ("identity", 1, "double", 1),
            ("identity", 2, "double", 1), ("double", 1, "identity", 1), ("double", 1, "identity", 2),
            ("double", 1, "double", 1),
        }
        solo = {(s.variant, s.partition, s.batch): s.p50_ms for s in result.samples}
        for c in result.colocations:
            assert (c.device_kind, c.partition, c.other_partition) == ("cpu", 1, 1)
            assert c.solo_p50_ms == solo[(c.variant, 1, c.batch)] and c.shared_p50_ms > 0
    else:
        assert result.colocations == ()

    total = len(result.samples) + len(result.colocations)
    assert [p.done for p in progress] == [False] * (len(progress) - 1) + [True]
    assert progress[0].completed == 0 and progress[-1].completed == progress[-1].total == total
    assert len(progress) >= 3  # progress came while it ran, not only at the end
    assert all(p.request_id == 7 and p.agent_id == "a1" and p.device_kind == "cpu" for p in progress)
    completed = [p.completed for p in progress]
    assert completed == sorted(completed)
    assert tuple(s for p in progress for s in p.samples) == result.samples  # each sample sent once
    assert tuple(c for p in progress for c in p.colocations) == result.colocations
    assert leftovers(tmp_path / "agent") == []


@pytest.mark.skipif(not TWO_CORES, reason="a co-runner needs a core of its own")
async def test_no_co_runner_starts_where_memory_cannot_hold_it_beside_the_agents_workers(
    controller, variants, tmp_path, no_children, caplog
) -> None:
    """768 MiB hold the profiler and a co-runner (~230 MiB each here), not beside a worker holding
    512 MiB: the co-locations go unmeasured rather than have the kernel kill the worker or the run."""
    worker = subprocess.Popen([sys.executable, "-c", "import sys, time\nheld = b'x' * (512 << 20)\n"
                               "print('held', flush=True)\ntime.sleep(600)"], stdout=subprocess.PIPE)
    try:
        assert worker.stdout.readline() == b"held\n"
        cmd = ProfileDevice(request_id=8, device_id="cpu0", variants=variants, partitions=(1, 2), batches=(1, 2),
                            repeats=3, colocation=True)
        devices = tuple(dataclasses.replace(d, memory_bytes=768 << 20) for d in probe_devices(with_cuda=False))
        progress: list[ProfileProgress] = []
        run = ProfileRunner(cmd, agent_id="a1", devices=devices, cores=CORES, controller=controller.address,
                            state_dir=tmp_path / "agent", emit=progress.append, neighbours=lambda: [worker.pid])
        with caplog.at_level(logging.WARNING, logger="agents.profile_runner"):
            result: ProfileResult = await asyncio.wait_for(run.run(), RUN_S)
    finally:
        worker.kill()
        worker.wait()
    assert result.error == "" and result.colocations == ()
    cells = {(s.variant, s.partition, s.batch) for s in result.samples}
    assert cells == {("identity", p, b) for p in (1, 2) for b in (1, 2)} | {("double", p, 1) for p in (1, 2)}
    assert progress[-1].done and progress[-1].completed == progress[-1].total == len(result.samples)
    assert "co-location not measured: memory lacks" in caplog.text


async def test_cancelling_a_run_kills_its_processes(controller, variants, tmp_path, no_children) -> None:
    cmd = ProfileDevice(request_id=8, device_id="cpu0", variants=variants, partitions=(1,), batches=(1, 2, 4, 8),
                        repeats=20000, colocation=False)
    progress: asyncio.Queue[ProfileProgress] = asyncio.Queue()
    task = asyncio.create_task(runner(cmd, controller.address, tmp_path / "agent", progress.put_nowait,
                                      progress_every=1).run())

    async def first_measurement() -> None:
        while (await progress.get()).completed < 1:
            pass

    await asyncio.wait_for(first_measurement(), RUN_S)
    running = children()
    assert running, "the profiling process should be measuring"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND_S)

    assert not running & children()
    assert progress.empty()  # no "done" after a cancellation: whoever cancelled knows
    assert leftovers(tmp_path / "agent") == []


async def test_a_variant_that_cannot_be_fetched_fails_the_run_with_a_reason(
    controller, variants, tmp_path, no_children
) -> None:
    missing = VariantSpec(name="ghost", family="f", sha256="ab" * 32, size_bytes=10, max_batch=1,
                          inputs=variants[0].inputs, outputs=variants[0].outputs)
    cmd = ProfileDevice(request_id=9, device_id="cpu0", variants=(missing,), partitions=(1,), batches=(1,),
                        repeats=3)
    progress: list[ProfileProgress] = []

    result = await asyncio.wait_for(runner(cmd, controller.address, tmp_path / "agent", progress.append).run(), RUN_S)

    assert "abababababab" in result.error and result.samples == ()
    assert progress[-1].done and progress[-1].error == result.error and progress[-1].completed == 0
    assert leftovers(tmp_path / "agent") == []


async def test_a_variant_the_profiler_cannot_load_is_reported_and_the_rest_measured(
    ctx, repo, tmp_path, no_children
) -> None:
    """An artifact that fetches whole but will not load (an archive holding no model, checksummed as it is)
    is named to the controller, and the run measures the others rather than fail on it."""
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    add_unloadable(copy)
    served = tuple(v.spec() for _, v in sorted(load_repository(copy).items()))
    assert "broken" in {v.name for v in served}
    actor = ControllerActor(ControllerConfig(bind="tcp://127.0.0.1:0", repository=str(copy),
                                             state_dir=str(tmp_path / "controller")), ctx=ctx)
    await asyncio.wait_for(actor.start(), BOUND_S)
    try:
        partitions = (1, 2) if TWO_CORES else (1,)
        cmd = ProfileDevice(request_id=11, device_id="cpu0", variants=served, partitions=partitions, batches=(1,),
                            repeats=3, colocation=TWO_CORES)
        said: list[object] = []
        result: ProfileResult = await asyncio.wait_for(
            runner(cmd, actor.address, tmp_path / "agent", said.append).run(), RUN_S)
    finally:
        await asyncio.wait_for(actor.stop(), BOUND_S)

    assert result.error == ""
    assert {(s.variant, s.partition) for s in result.samples} == {(n, p) for n in ("double", "identity")
                                                                 for p in partitions}
    assert all("broken" not in (c.variant, c.other) for c in result.colocations)
    if TWO_CORES:
        assert result.colocations  # the others' co-locations are still measured
    failures = [m for m in said if isinstance(m, VariantLoadFailed)]
    assert [(m.variant, m.worker_id.startswith("profiler:a1:11.")) for m in failures] == [("broken", True)]
    assert failures[0].reason  # why, for the operator
    progress = [m for m in said if isinstance(m, ProfileProgress)]
    assert progress[-1].done and progress[-1].error == ""
    assert progress[-1].completed == progress[-1].total == len(result.samples) + len(result.colocations)


async def test_an_unknown_device_fails_at_once(tmp_path, variants, no_children) -> None:
    cmd = ProfileDevice(request_id=3, device_id="cuda7", variants=variants, partitions=(20,), batches=(1,))
    progress: list[ProfileProgress] = []

    result = await asyncio.wait_for(runner(cmd, "tcp://127.0.0.1:1", tmp_path, progress.append).run(), BOUND_S)

    assert "cuda7" in result.error
    assert [(p.done, p.error) for p in progress] == [(True, result.error)]


async def test_profiles_take_the_cores_no_worker_serves_on_first(controller, variants, tmp_path, no_children,
                                                                 caplog) -> None:
    """Measured beside a serving worker, batch 1 came out twice as slow: a partition that fits on
    free cores is measured there; one that cannot is measured anyway, and the agent says so."""
    if not TWO_CORES:
        pytest.fail("this test needs two usable cores")  # CI's machines have two
    cmd = ProfileDevice(request_id=4, device_id="cpu0", variants=variants, partitions=(1, 2), batches=(1,),
                        repeats=3, colocation=False)
    pinned: dict[int, set[int]] = {}
    run = ProfileRunner(cmd, agent_id="a1", devices=probe_devices(with_cuda=False), cores=CORES,
                        controller=controller.address, state_dir=tmp_path / "agent", emit=lambda p: None,
                        serving=(frozenset(CORES[:1]), frozenset()))
    spawn = run._start

    async def watched(device, partition, offset, chosen):
        proc = await spawn(device, partition, offset, chosen)
        pinned[partition] = set(os.sched_getaffinity(proc.proc.pid))
        return proc

    run._start = watched  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="agents.profile_runner"):
        result = await asyncio.wait_for(run.run(), RUN_S)
    assert result.error == "" and {s.partition for s in result.samples} == {1, 2}
    assert pinned[1] == {CORES[1]}  # the free core, not the serving worker's
    beside = [r.getMessage() for r in caplog.records if "beside the workers" in r.getMessage()]
    assert len(beside) == 1 and "2 cores" in beside[0]  # only the partition that could not avoid it


# --- through the agent ------------------------------------------------------------------------


class EdgeController:
    """A real ROUTER standing in for the controller: it accepts the agent and records what it sends."""

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:0")
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.agent: bytes | None = None
        self.registered = asyncio.Event()
        self.progress: asyncio.Queue[ProfileProgress] = asyncio.Queue()
        self.load_failures: list[VariantLoadFailed] = []
        self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            peer, *frames = await self.sock.recv_multipart()
            msg, _ = decode(frames)
            if isinstance(msg, RegisterAgent):
                self.agent = peer
                await self.send(RegisterAgentReply(agent_id=msg.agent_id, heartbeat_interval_s=1.0,
                                                   controller_epoch=1))
                self.registered.set()
            elif isinstance(msg, ProfileProgress):
                self.progress.put_nowait(msg)
            elif isinstance(msg, VariantLoadFailed):
                self.load_failures.append(msg)

    async def send(self, msg: object) -> None:
        assert self.agent is not None
        await self.sock.send_multipart([self.agent, *encode(msg)])

    async def until(self, request_id: int, where: Callable[[ProfileProgress], bool]) -> list[ProfileProgress]:
        seen: list[ProfileProgress] = []

        async def wait() -> None:
            while True:
                p = await self.progress.get()
                if p.request_id == request_id:
                    seen.append(p)
                    if where(p):
                        return

        await asyncio.wait_for(wait(), RUN_S)
        return seen

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close(linger=0)


@contextlib.asynccontextmanager
async def registered_agent(ctx: zmq.asyncio.Context, state_dir: Path) -> AsyncIterator[tuple[EdgeController, AgentActor]]:
    """A real agent registered with an EdgeController; stopped, and the edge closed, on the way out."""
    edge = EdgeController(ctx)
    agent = AgentActor(AgentConfig(controller=edge.address, agent_id="a1", state_dir=str(state_dir),
                                   heartbeat_interval_s=0.2), ctx=ctx)
    try:
        await asyncio.wait_for(agent.start(), BOUND_S)
        await asyncio.wait_for(edge.registered.wait(), BOUND_S)
        yield edge, agent
    finally:
        await asyncio.wait_for(agent.stop(), BOUND_S * 2)
        await edge.close()


async def test_agent_profiles_on_command_and_its_stop_ends_a_run(ctx, repo, variants, tmp_path, no_children) -> None:
    identity = next(v for v in variants if v.name == "identity")
    cache = tmp_path / "agent" / "artifacts"
    cache.mkdir(parents=True)
    shutil.copy(repo / "identity" / "model.pt", cache / identity.sha256)  # cached: this controller serves none
    endless = ProfileDevice(request_id=1, device_id="cpu0", variants=(identity,), partitions=(1,), batches=(1,),
                            repeats=10**8, colocation=False)
    async with registered_agent(ctx, tmp_path / "agent") as (edge, agent):
        await edge.send(endless)
        await edge.until(1, lambda p: p.completed == 0)
        await eventually(lambda: bool(children()), RUN_S)  # its profiling process is running

        await edge.send(ProfileDevice(request_id=2, device_id="cpu0", variants=(identity,), partitions=(1,),
                                      batches=(1, 2), repeats=3, colocation=False))
        superseded = await edge.until(1, lambda p: p.done)
        assert superseded[-1].error == "superseded by request 2"
        second = await edge.until(2, lambda p: p.done)
        assert second[-1].error == "" and second[-1].completed == second[-1].total == 2
        assert {(s.variant, s.partition, s.batch) for p in second for s in p.samples} == {
            ("identity", 1, 1), ("identity", 1, 2)
        }

        await edge.send(dataclasses.replace(endless, request_id=3))
        await edge.until(3, lambda p: p.completed == 0)
        await eventually(lambda: bool(children()), RUN_S)
    assert agent.failure is None
    assert not children()  # stopping the agent ended the run and its process
    assert leftovers(tmp_path / "agent") == []


async def test_the_agent_names_a_variant_its_profiler_cannot_load_to_the_controller(ctx, repo, tmp_path,
                                                                                  no_children) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    blob = add_unloadable(copy)
    specs = {name: v.spec() for name, v in load_repository(copy).items()}
    cache = tmp_path / "agent" / "artifacts"
    cache.mkdir(parents=True)
    shutil.copy(repo / "identity" / "model.pt", cache / specs["identity"].sha256)  # cached: this controller serves none
    (cache / specs["broken"].sha256).write_bytes(blob)
    async with registered_agent(ctx, tmp_path / "agent") as (edge, agent):
        await edge.send(ProfileDevice(request_id=4, device_id="cpu0", variants=(specs["broken"], specs["identity"]),
                                      partitions=(1,), batches=(1,), repeats=3, colocation=False))
        run = await edge.until(4, lambda p: p.done)
    assert run[-1].error == "" and {s.variant for p in run for s in p.samples} == {"identity"}
    assert [m.variant for m in edge.load_failures] == ["broken"]
    assert agent.failure is None


async def test_onnx_variants_are_not_profiled_on_a_gpu_whose_onnxruntime_cannot_use_it(
    controller, variants, tmp_path, no_children, monkeypatch
) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])  # the default package
    gpu = DeviceInfo(device_id="cuda0", kind="cuda", name="test gpu", cores=132, memory_bytes=1 << 34, sm_count=132)
    onnx_only = tuple(dataclasses.replace(v, backend="onnx") for v in variants)
    cmd = ProfileDevice(request_id=9, device_id="cuda0", variants=onnx_only, partitions=(100,), batches=(1,),
                        repeats=3, colocation=False)
    progress: list[ProfileProgress] = []
    run = ProfileRunner(cmd, agent_id="a1", devices=(gpu,), cores=CORES, controller=controller.address,
                        state_dir=tmp_path / "agent", emit=progress.append)

    result = await asyncio.wait_for(run.run(), RUN_S)

    # Measured there they would time the host CPU as the GPU: nothing is, and no process started.
    assert result.error == "" and result.samples == () and result.colocations == ()
    assert progress[-1].done and progress[-1].total == 0
