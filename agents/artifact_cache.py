"""Keeping an agent's artifact cache within a size: what no worker uses goes, least recently used first.

The cache holds each artifact as ``<sha256>`` and, where the ONNX upgrade converted it,
``<sha256>.<signature>.onnx`` with its verdict (``.onnx.json``) per manifest signature
(agents.onnx_upgrade). Models are replaced by new versions and manifests rename tensors, so without
a bound the folder only grows: on an edge board, until the disk is full.

Entries are removed in two kinds: an artifact (with every conversion of it), or one conversion
whose signature no running variant of a kept artifact has. Nothing that a worker of this agent (or
a profiling run) uses now is removed, whatever the budget, nor anything used lately; an entry was
last used when the agent last started a worker or a profiling run on it (``touch``) or when it was
written (fetched, converted). Removal holds the artifact's conversion lock, taken without waiting:
a process deciding about that artifact keeps it this time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from protocol.types import VariantSpec

log = logging.getLogger(__name__)
_said = {"no_locks": False}  # a file system without locks is said once per process

# <sha256>, <sha256>.<signature>.onnx, <sha256>.<signature>.onnx.json, <sha256>.onnx.lock
_NAME = re.compile(r"(?P<sha>[0-9a-f]{64})(?:\.(?P<sig>[0-9a-f]{12})\.onnx(?:\.json)?|(?P<lock>\.onnx\.lock))?")


def signature(spec: VariantSpec) -> str:
    """What of a manifest an ONNX conversion depends on, as 12 hex digits: the exported graph
    carries the tensor names, types and shapes. (Not the max batch: a worker runs the variant with
    the max batch its plan sets, below the manifest's its profiler judged; the verdict says what it
    covers.)"""
    tensors = [[t.name, t.datatype, list(t.shape)] for t in (*spec.inputs, *spec.outputs)]
    described = json.dumps([len(spec.inputs), tensors], separators=(",", ":"))
    return hashlib.sha256(described.encode()).hexdigest()[:12]


def converted_path(spec: VariantSpec, path: Path) -> Path:
    """Where the conversion of the artifact at ``path`` for ``spec`` is kept."""
    return path.with_name(f"{path.name}.{signature(spec)}.onnx")


def verdict_path(spec: VariantSpec, path: Path) -> Path:
    return path.with_name(f"{path.name}.{signature(spec)}.onnx.json")


def lock_path(path: Path) -> Path:
    """The lock under which the artifact at ``path`` is converted, judged, or removed."""
    return path.with_name(f"{path.name}.onnx.lock")


def in_use(specs: Iterable[VariantSpec]) -> set[tuple[str, str]]:
    """(sha256, signature) of each variant: what ``prune`` keeps and ``touch`` marks."""
    return {(spec.sha256, signature(spec)) for spec in specs}


@dataclass(frozen=True, slots=True)
class Entry:
    """What goes together: an artifact (``signature`` None), or one of its conversions."""

    sha256: str
    signature: str | None
    files: tuple[Path, ...]
    nbytes: int
    used: float  # the latest modification time of its files

    def describe(self) -> str:
        what = f"artifact {self.sha256[:12]}" if self.signature is None else \
            f"ONNX conversion {self.signature} of artifact {self.sha256[:12]}"
        return f"{what} ({self.nbytes / 2**20:.1f} MiB)"


def entries(cache_dir: Path) -> list[Entry]:
    """The cache's entries; files it does not name (partial downloads, anything else) are left out."""
    try:
        listing = list(os.scandir(cache_dir))
    except FileNotFoundError:
        return []
    stats: dict[tuple[str, str | None], list[tuple[Path, os.stat_result]]] = {}
    for item in listing:
        m = _NAME.fullmatch(item.name)
        if m is None or m["lock"] or not item.is_file(follow_symlinks=False):
            continue
        try:
            st = item.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        stats.setdefault((m["sha"], m["sig"]), []).append((Path(item.path), st))
    return [Entry(sha, sig, tuple(p for p, _ in found), sum(st.st_size for _, st in found),
                  max(st.st_mtime for _, st in found))
            for (sha, sig), found in sorted(stats.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))]


def size(cache_dir: Path) -> int:
    return sum(e.nbytes for e in entries(cache_dir))


def touch(cache_dir: Path, used: Collection[tuple[str, str]]) -> None:
    """Mark (sha256, signature) pairs used now: the artifact and that conversion, where present."""
    for sha, sig in used:
        for name in (sha, f"{sha}.{sig}.onnx", f"{sha}.{sig}.onnx.json"):
            with contextlib.suppress(OSError):
                os.utime(cache_dir / name)


def prune(cache_dir: Path, max_bytes: int, keep: Collection[tuple[str, str]], *, recent_s: float = 0.0) -> list[Entry]:
    """Remove entries no one uses, least recently used first, until the cache holds ``max_bytes`` or
    less (or only what is in use is left); the entries removed. ``keep``: (sha256, signature) of
    each variant served or profiled here (``in_use``): an artifact in use keeps its conversions for
    the signatures in use, others of it may go. Entries used within the last ``recent_s`` seconds
    stay too (a process the caller does not know of may be loading them)."""
    found = entries(cache_dir)
    total = sum(e.nbytes for e in found)
    if total <= max_bytes:
        return []
    used_shas = {sha for sha, _ in keep}
    used_pairs = set(keep)
    cutoff = time.time() - recent_s
    candidates = sorted((e for e in found if e.used < cutoff and (
                         e.sha256 not in used_shas
                         or (e.signature is not None and (e.sha256, e.signature) not in used_pairs))),
                        key=lambda e: (e.used, e.signature is None))  # a conversion before its artifact
    removed: list[Entry] = []
    gone: set[str] = set()
    for entry in candidates:
        if total <= max_bytes:
            break
        if entry.sha256 in gone:
            continue  # went with its artifact
        if entry.signature is None:
            group = [e for e in found if e.sha256 == entry.sha256 and e not in removed]
            if any(e.used >= cutoff for e in group):
                continue  # a conversion of it was used lately: the artifact it needs stays with it
        else:
            group = [entry]
        with _try_lock(lock_path(cache_dir / entry.sha256)) as held:
            if not held:
                continue  # a worker or profiler is deciding about this artifact now
            try:
                for e in group:
                    for path in e.files:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                    total -= e.nbytes
                    removed.append(e)
                if entry.signature is None:
                    gone.add(entry.sha256)
                    with contextlib.suppress(FileNotFoundError):
                        lock_path(cache_dir / entry.sha256).unlink()
            except OSError as exc:  # a read-only or failing disk: nothing more can go this time
                log.warning("artifact cache: cannot remove %s: %s", entry.describe(), exc)
                break
    for e in removed:
        log.info("artifact cache: removed %s, last used %s", e.describe(),
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.used)))
    return removed


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    """Whether the lock at ``path`` was taken (without waiting); held until the block ends."""
    try:
        f = open(path, "a")
    except OSError:
        yield False  # no lock file can be made (a read-only cache): nothing can be removed either
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:  # held (EWOULDBLOCK), or no locks on this file system: leave it
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) and not _said["no_locks"]:
                _said["no_locks"] = True
                log.warning("artifact cache: cannot lock %s (%s): nothing is removed from this cache while "
                            "locks fail", path, exc)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
