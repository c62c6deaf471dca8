"""The artifact cache's bound (agents.artifact_cache) on real files: what goes, in which order, and
what never does."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from agents import artifact_cache
from agents.artifact_cache import converted_path, in_use, lock_path, prune, signature, verdict_path
from protocol.types import TensorSpec, VariantSpec

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def spec(sha: str, name: str = "x") -> VariantSpec:
    return VariantSpec(name="v", family="f", sha256=sha, size_bytes=100, max_batch=4,
                       inputs=(TensorSpec(name=name, datatype="FP32", shape=(-1, 4)),),
                       outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 2)),))


def put(cache: Path, name: str, nbytes: int, age_s: float) -> Path:
    path = cache / name
    path.write_bytes(b"x" * nbytes)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def convert(cache: Path, variant: VariantSpec, nbytes: int, age_s: float) -> list[Path]:
    """A conversion and its verdict where agents.onnx_upgrade writes them."""
    artifact = cache / variant.sha256
    return [put(cache, converted_path(variant, artifact).name, nbytes, age_s),
            put(cache, verdict_path(variant, artifact).name, 100, age_s)]


def names(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()}


def test_within_the_bound_nothing_goes(tmp_path) -> None:
    put(tmp_path, A, 1000, 50)
    convert(tmp_path, spec(A), 1000, 50)
    assert prune(tmp_path, 10_000, set()) == []
    assert len(names(tmp_path)) == 3


def test_the_least_recently_used_go_first_and_only_until_the_cache_fits(tmp_path) -> None:
    put(tmp_path, A, 1000, 300)
    put(tmp_path, B, 1000, 200)
    put(tmp_path, C, 1000, 100)
    removed = prune(tmp_path, 2000, set())
    assert [e.sha256 for e in removed] == [A]
    assert names(tmp_path) == {B, C}


def test_an_artifact_goes_with_its_conversions_and_lock(tmp_path) -> None:
    put(tmp_path, A, 1000, 300)
    conversions = convert(tmp_path, spec(A), 500, 10) + convert(tmp_path, spec(A, name="renamed"), 500, 10)
    lock_path(tmp_path / A).touch()
    put(tmp_path, B, 1000, 100)
    removed = prune(tmp_path, 1500, set())
    # The conversions are newer than B, but nothing of A's is any use once A is gone.
    assert {(e.sha256, e.signature) for e in removed} == {(A, None), (A, signature(spec(A))),
                                                          (A, signature(spec(A, name="renamed")))}
    assert all(not p.exists() for p in conversions)
    assert names(tmp_path) == {B}


def test_what_runs_stays_whatever_the_bound_and_a_conversion_for_another_manifest_goes(tmp_path) -> None:
    running = spec(A)
    put(tmp_path, A, 5000, 900)  # the oldest file of all
    kept = convert(tmp_path, running, 2000, 900)
    stale = convert(tmp_path, spec(A, name="renamed"), 2000, 10)
    put(tmp_path, B, 1000, 100)
    removed = prune(tmp_path, 1000, in_use([running]))
    assert {(e.sha256, e.signature) for e in removed} == {(A, signature(spec(A, name="renamed"))), (B, None)}
    assert all(p.exists() for p in kept) and (tmp_path / A).exists()
    assert not any(p.exists() for p in stale)


def test_an_artifact_someone_is_converting_is_left_this_time(tmp_path) -> None:
    put(tmp_path, A, 1000, 300)
    put(tmp_path, B, 1000, 200)
    with open(lock_path(tmp_path / A), "a") as held:  # as agents.onnx_upgrade holds it while deciding
        fcntl.flock(held, fcntl.LOCK_EX)
        removed = prune(tmp_path, 1000, set())
    assert [e.sha256 for e in removed] == [B]
    assert A in names(tmp_path)


def test_partial_downloads_and_other_files_are_not_the_cache_s_to_remove(tmp_path) -> None:
    partial = put(tmp_path, f".{A}.{os.getpid()}.part", 5000, 900)
    other = put(tmp_path, "notes.txt", 5000, 900)
    put(tmp_path, B, 1000, 100)
    removed = prune(tmp_path, 0, set())
    assert [e.sha256 for e in removed] == [B]
    assert partial.exists() and other.exists()


def test_touch_makes_an_entry_the_most_recently_used(tmp_path) -> None:
    put(tmp_path, A, 1000, 300)
    put(tmp_path, B, 1000, 100)
    artifact_cache.touch(tmp_path, in_use([spec(A)]))
    assert [e.sha256 for e in prune(tmp_path, 1000, set())] == [B]


@pytest.mark.parametrize("missing", [True, False])
def test_size_counts_what_prune_would_weigh(tmp_path, missing) -> None:
    cache = tmp_path / "artifacts"
    if not missing:
        cache.mkdir()
        put(cache, A, 1234, 10)
        convert(cache, spec(A), 66, 10)
    assert artifact_cache.size(cache) == (0 if missing else 1234 + 66 + 100)
    assert len(prune(cache, 0, set())) == (0 if missing else 2)  # the artifact, and its conversion with it


def test_a_conversion_removed_before_its_artifact_is_counted_once(tmp_path) -> None:
    put(tmp_path, A, 1000, 200)
    convert(tmp_path, spec(A), 500, 300)  # older than its artifact: it goes first
    put(tmp_path, B, 1000, 100)
    removed = prune(tmp_path, 1000, set())
    assert [(e.sha256, e.signature) for e in removed] == [(A, signature(spec(A))), (A, None)]
    assert names(tmp_path) == {B}


def test_what_was_used_lately_stays_though_nothing_here_runs_it(tmp_path) -> None:
    put(tmp_path, A, 1000, 30)  # fetched half a minute ago: another agent's worker may be loading it
    put(tmp_path, B, 1000, 3000)
    put(tmp_path, C, 1000, 900)
    assert [e.sha256 for e in prune(tmp_path, 0, set(), recent_s=600)] == [B, C]
    assert names(tmp_path) == {A}


def test_an_artifact_whose_conversion_was_used_lately_stays_with_it(tmp_path) -> None:
    put(tmp_path, A, 1000, 3000)
    fresh = convert(tmp_path, spec(A), 500, 30)
    removed = prune(tmp_path, 0, set(), recent_s=600)
    assert removed == [] and (tmp_path / A).exists() and all(p.exists() for p in fresh)
