"""Profiling runs in flight, as `letmesh profile` and `letmesh up` report them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from controller.profiling import (ProfileWait, ProfilingRuns, awaited_kinds, first_run_id, measured_as, partition_menu,
                                 remeasured, run_epoch, unprofiled)
from controller.repository import scan_repository
from letmesh.zoo import build_trivial
from protocol.types import DeviceInfo, ProfileSample

CPU = DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=2, memory_bytes=2**30)


def test_a_run_reads_starting_until_its_agent_reports_then_its_progress_then_nothing(tmp_path: Path) -> None:
    build_trivial(tmp_path)
    runs = ProfilingRuns()
    (command,) = runs.commands("local", (CPU,), list(scan_repository(tmp_path).variants.values()), ())
    assert runs.describe() == ("local: starting",)
    runs.progress("local", command.request_id, 3, 14, done=False)
    assert runs.describe() == ("local: 3/14",)
    runs.progress("local", command.request_id, 14, 14, done=True)
    assert runs.describe() == ()


GPU = DeviceInfo(device_id="cuda0", kind="cuda", name="gpu", cores=132, memory_bytes=80 << 30, sm_count=132, mps=True)


def _samples(variants, kind: str) -> tuple[ProfileSample, ...]:
    return tuple(ProfileSample(variant=v.name, device_kind=kind, partition=1, batch=1, p50_ms=1.0, p99_ms=1.2, runs=3)
                 for v in variants)


def test_a_hosts_devices_are_profiled_one_after_another(tmp_path: Path) -> None:
    build_trivial(tmp_path)
    variants = list(scan_repository(tmp_path).variants.values())
    runs = ProfilingRuns()
    (first,) = runs.commands("local", (CPU, GPU), variants, ())
    assert first.device_id == "cpu0"
    # The agent runs one profiling run at a time: asking again while it runs hands out nothing.
    assert runs.commands("local", (CPU, GPU), variants, ()) == []
    assert runs.next_commands("local", (CPU, GPU), variants, ()) == []
    runs.progress("local", first.request_id, 4, 4, done=True)
    (second,) = runs.next_commands("local", (CPU, GPU), variants, _samples(variants, "cpu"))
    assert second.device_id == "cuda0" and second.partitions == (20, 40, 50, 60, 80, 100)
    runs.progress("local", second.request_id, 4, 4, done=True)
    assert runs.next_commands("local", (CPU, GPU), variants, _samples(variants, "cpu") + _samples(variants, "cuda")) == []


def test_a_failed_device_is_not_asked_again_until_a_rerun_or_a_retry(tmp_path: Path) -> None:
    build_trivial(tmp_path)
    variants = list(scan_repository(tmp_path).variants.values())
    runs = ProfilingRuns()
    (first,) = runs.commands("local", (GPU,), variants, ())
    runs.progress("local", first.request_id, 0, 4, done=True, failed=True)
    assert runs.commands("local", (GPU,), variants, ()) == []  # would fail the same way, again and again
    assert runs.next_commands("local", (GPU,), variants, ()) == []
    (rerun,) = runs.commands("local", (GPU,), variants, (), everything=True)
    assert rerun.device_id == "cuda0"
    runs.progress("local", rerun.request_id, 0, 4, done=True, failed=True)
    runs.retry_failed("local")
    (retry,) = runs.commands("local", (GPU,), variants, ())
    assert retry.device_id == "cuda0"


def test_an_operators_rerun_covers_every_device_in_turn(tmp_path: Path) -> None:
    build_trivial(tmp_path)
    variants = list(scan_repository(tmp_path).variants.values())
    profiled = _samples(variants, "cpu") + _samples(variants, "cuda")
    runs = ProfilingRuns()
    (first,) = runs.commands("local", (CPU, GPU), variants, profiled, everything=True)
    runs.progress("local", first.request_id, 4, 4, done=True)
    (second,) = runs.next_commands("local", (CPU, GPU), variants, profiled)
    assert (first.device_id, second.device_id) == ("cpu0", "cuda0")
    assert len(second.variants) == len(variants)  # everything, though all were profiled


def test_a_gpu_without_an_mps_daemon_is_profiled_whole() -> None:
    assert partition_menu(GPU) == (20, 40, 50, 60, 80, 100)
    assert partition_menu(DeviceInfo(device_id="cuda0", kind="cuda", name="gpu", cores=132, memory_bytes=1,
                                     sm_count=132)) == (100,)


def test_only_a_variant_new_to_a_device_kind_counts_as_grown(tmp_path: Path) -> None:
    build_trivial(tmp_path)
    variants = list(scan_repository(tmp_path).variants.values())
    runs = ProfilingRuns(profiled={(v.name, "cpu") for v in variants})
    runs.measured(_samples(variants, "cpu"))  # measured again: nothing a plan could newly use
    assert runs.take_grew() is False
    runs.measured(_samples(variants[:1], "cuda"))
    assert runs.take_grew() is True
    assert runs.take_grew() is False  # taken once


def test_the_kinds_being_profiled_are_those_of_running_and_queued_devices(tmp_path: Path) -> None:
    build_trivial(tmp_path)
    variants = list(scan_repository(tmp_path).variants.values())
    runs = ProfilingRuns()
    devices = {"a1": (CPU, GPU), "a2": (CPU,)}
    runs.commands("a1", devices["a1"], variants, ())
    assert runs.pending_kinds(devices) == {("a1", "cpu"), ("a1", "cuda")}
    runs.forget_agent("a1")
    assert runs.pending_kinds(devices) == frozenset()


def test_a_device_asked_for_while_it_is_measured_is_not_run_again_after_failing(tmp_path: Path) -> None:
    build_trivial(tmp_path)
    variants = list(scan_repository(tmp_path).variants.values())
    runs = ProfilingRuns()
    (first,) = runs.commands("local", (GPU,), variants, ())
    assert runs.commands("local", (GPU,), variants, ()) == []  # a registration again, say, mid-run
    assert runs.in_flight("local") == [first]  # what is asked again of an agent that comes back
    runs.progress("local", first.request_id, 0, 4, done=True, failed=True)
    assert runs.next_commands("local", (GPU,), variants, ()) == []
    assert runs.in_flight("local") == []


def test_a_gpu_with_mps_is_profiled_though_one_without_was_measured_whole(tmp_path: Path) -> None:
    build_trivial(tmp_path)
    variants = list(scan_repository(tmp_path).variants.values())
    whole = DeviceInfo(device_id="cuda0", kind="cuda", name="gpu", cores=132, memory_bytes=1, sm_count=132)
    measured_whole = tuple(ProfileSample(variant=v.name, device_kind="cuda", partition=100, batch=1, p50_ms=1.0,
                                         p99_ms=1.1, runs=3) for v in variants)
    assert unprofiled(variants, whole, measured_whole) == []
    # Planned from the whole GPU's figures alone, its shares would be guesses (100 % scaled down).
    assert unprofiled(variants, GPU, measured_whole) == sorted(variants, key=lambda v: v.name)
    (command,) = ProfilingRuns().commands("a2", (GPU,), variants, measured_whole)
    assert command.partitions == (20, 40, 50, 60, 80, 100)


def test_a_replan_waits_only_for_kinds_being_measured_that_lack_profiles_and_not_for_ever() -> None:
    agents = {"a1": (CPU, GPU), "a2": (CPU,)}
    cpu_only = tuple(ProfileSample(variant="v", device_kind="cpu", partition=cores, batch=1, p50_ms=1.0, p99_ms=1.0,
                                   runs=3) for cores in (1, 2))
    assert awaited_kinds(agents, ["v"], cpu_only, {("a1", "cuda")}) == {"cuda"}
    assert awaited_kinds(agents, ["v"], cpu_only, {("a2", "cpu")}) == frozenset()  # measured already
    # A run's first partition size in: the run goes on, and a plan made now would be made again.
    assert awaited_kinds(agents, ["v"], cpu_only[:1], {("a2", "cpu")}) == {"cpu"}
    assert awaited_kinds({"a2": (CPU,)}, ["v"], cpu_only, {("a1", "cuda")}) == frozenset()  # a1 not placeable

    wait = ProfileWait(max_s=60.0)
    assert wait.hold(frozenset({"cuda"}), now=0.0) and wait.hold(frozenset({"cuda"}), now=59.0)
    assert not wait.released({("a1", "cuda")})
    assert wait.released(set())  # the run ended, profiles or none: the held re-plan is due
    assert not wait.hold(frozenset({"cuda"}), now=61.0)  # waited long enough: plan with what is known
    assert wait.waiting_for == frozenset() and not wait.released(set())


def test_a_variant_is_measured_again_when_its_artifact_backend_or_precision_changed(tmp_path: Path) -> None:
    build_trivial(tmp_path)
    (identity,) = [v for v in scan_repository(tmp_path).variants.values() if v.name == "identity"]
    was = measured_as(identity)
    assert measured_as(dataclasses.replace(identity, sha256="0" * 64)) != was
    assert measured_as(dataclasses.replace(identity, backend="onnx")) != was
    assert measured_as(dataclasses.replace(identity, backend="openvino", precision="bf16")) != was
    assert measured_as(dataclasses.replace(identity, accuracy=0.5, max_batch=2)) == was  # the same computation
    assert remeasured({"a": "x", "b": "y"}, {"a": "x", "b": "z", "c": "w"}) == ["b"]  # c: nothing stored of it


def test_a_run_id_says_which_controller_process_began_the_run() -> None:
    runs = ProfilingRuns(next_id=first_run_id(7))
    assert run_epoch(runs.next_id) == 7 and run_epoch(first_run_id(8) - 2) == 7 and run_epoch(first_run_id(8)) == 8
    assert run_epoch(100_001) == 0  # numbered by an older controller: before any change this one records


def test_a_run_asked_again_is_queued_as_it_was_asked_not_marked_failed(tmp_path: Path) -> None:
    """A run that failed on a variant set aside while it ran goes again without it: an operator's
    re-run of every variant as such (the profiles on record would leave a gap-filling run nothing
    to do), the other devices' failures left as they were."""
    build_trivial(tmp_path)
    (identity,) = scan_repository(tmp_path).variants.values()
    variants = [dataclasses.replace(identity, name="bad"), identity]
    measured = tuple(dataclasses.replace(s, partition=p) for s in _samples(variants, "cpu") for p in (1, 2))
    runs = ProfilingRuns()
    (gpu,) = runs.commands("local", (GPU,), variants, ())
    runs.progress("local", gpu.request_id, 0, 4, done=True, failed=True)  # CUDA out of memory, say
    (whole,) = runs.commands("local", (CPU, GPU), variants, measured, everything=True)
    assert whole.device_id == "cpu0"
    runs.progress("local", whole.request_id, 1, 9, done=True, failed=True, again=True)
    assert runs.failed == set()  # the re-run cleared the GPU's; the CPU's is not one
    kept = [identity]  # "bad" was set aside
    (again,) = runs.next_commands("local", (CPU, GPU), kept, measured)
    assert (again.device_id, [v.name for v in again.variants]) == ("cpu0", [v.name for v in kept])
    runs.progress("local", again.request_id, 9, 9, done=True)
    (gpu_rerun,) = runs.next_commands("local", (CPU, GPU), kept, measured)  # the re-run's turn of the GPU
    assert gpu_rerun.device_id == "cuda0"
    runs.progress("local", gpu_rerun.request_id, 0, 4, done=True, failed=True)
    assert runs.failed == {("local", "cuda0")}  # a failure not asked again stays one
