"""Fetching model artifacts from the controller by sha256, chunk by chunk, into a disk cache.

A cached file is trusted only after its sha256 is checked; a download is written to a temporary
file and renamed into place once complete and verified, so a crash never leaves a bad cache
entry behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from pathlib import Path

from agents.error import ArtifactError, FetchInterrupted
from mesh.digest import sha256_file
from mesh.transport import Endpoint
from protocol.codec import ARTIFACT_CHUNK_BYTES
from protocol.message import ArtifactChunkReply, ErrorReply, FetchArtifact, VariantLoadFailed

MAX_REASON_LEN = 512
FETCH_ATTEMPTS = 3  # a download interrupted by the link or this host is tried this many times
FETCH_BACKOFF_S = 1.0  # before the second attempt; doubled before each later one
_HEX64 = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger(__name__)


async def _next_chunk(replies: asyncio.Queue, sha256: str, offset: int, timeout_s: float) -> ArtifactChunkReply:
    """The reply for (sha256, offset); stale replies to earlier requests are skipped, not re-asked."""
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                reply = await replies.get()
        except TimeoutError:
            raise FetchInterrupted(f"controller did not answer for artifact {sha256[:12]} at {offset}") from None
        if isinstance(reply, ErrorReply):
            error = FetchInterrupted if reply.retryable else ArtifactError
            raise error(f"artifact {sha256[:12]}: {reply.code}: {reply.message}")
        if isinstance(reply, ArtifactChunkReply) and reply.sha256 == sha256 and reply.offset == offset:
            return reply


def _remove_abandoned_parts(cache_dir: Path) -> None:
    """Partial downloads of processes that died (SIGKILL skips their cleanup)."""
    for part in cache_dir.glob(".*.part"):
        try:
            pid = int(part.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            part.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue


def cached(cache_dir: Path, sha256: str) -> Path | None:
    path = cache_dir / sha256
    if path.is_file() and sha256_file(path) == sha256:
        return path
    return None


async def fetch_artifact(
    endpoint: Endpoint, replies: asyncio.Queue, cache_dir: Path, sha256: str, *, timeout_s: float = 10.0
) -> Path:
    """Download ``sha256`` over ``endpoint``; replies arrive on ``replies`` (the caller's receive loop)."""
    if not _HEX64.fullmatch(sha256):  # it names files in the cache: never a path
        raise ArtifactError(f"artifact {sha256[:80]!r} is not a sha256 digest")
    hit = cached(cache_dir, sha256)
    if hit is not None:
        return hit
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_parts(cache_dir)
    except OSError as exc:  # the cache's disk or folder: this host's fault, not the artifact's
        raise FetchInterrupted(f"artifact {sha256[:12]}: cannot write it to {cache_dir}: {exc}") from None
    tmp = cache_dir / f".{sha256}.{os.getpid()}.part"
    digest = hashlib.sha256()
    offset, total = 0, None
    try:
        with tmp.open("wb") as f:
            while total is None or offset < total:
                try:  # a control link queues nothing while down: a send waits for the link, boundedly
                    async with asyncio.timeout(timeout_s):
                        await endpoint.send(FetchArtifact(sha256=sha256, offset=offset, length=ARTIFACT_CHUNK_BYTES))
                except TimeoutError:
                    raise FetchInterrupted(f"artifact {sha256[:12]}: no link to the controller within "
                                           f"{timeout_s:.0f} s") from None
                reply = await _next_chunk(replies, sha256, offset, timeout_s)
                total = reply.total_size
                if not reply.data and offset < total:
                    raise ArtifactError(f"artifact {sha256[:12]}: empty chunk at {offset} of {total}")
                f.write(reply.data)
                digest.update(reply.data)
                offset += len(reply.data)
            f.flush()
            os.fsync(f.fileno())
        if digest.hexdigest() != sha256:
            raise ArtifactError(f"artifact {sha256[:12]}: downloaded bytes hash to {digest.hexdigest()[:12]}")
        final = cache_dir / sha256
        os.replace(tmp, final)
        return final
    except OSError as exc:  # the cache's disk (full, read-only): this host's, not the artifact's
        raise FetchInterrupted(f"artifact {sha256[:12]}: cannot write it to {cache_dir}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


async def fetch_with_retries(
    endpoint: Endpoint, replies: asyncio.Queue, cache_dir: Path, sha256: str, *, timeout_s: float = 10.0,
    attempts: int = FETCH_ATTEMPTS, backoff_s: float = FETCH_BACKOFF_S,
) -> Path:
    """:func:`fetch_artifact`, tried again after an interruption (with a doubling pause); the last
    interruption is raised. Bytes that do not match their digest, or an artifact the controller
    does not have, fail at once."""
    for attempt in range(attempts - 1):
        try:
            return await fetch_artifact(endpoint, replies, cache_dir, sha256, timeout_s=timeout_s)
        except FetchInterrupted as exc:
            pause = backoff_s * 2 ** attempt
            log.warning("fetching artifact %s: %s; trying again in %.0f s", sha256[:12], exc, pause)
            await asyncio.sleep(pause)
            while not replies.empty():  # late answers to the attempt given up must not end the next
                replies.get_nowait()
    return await fetch_artifact(endpoint, replies, cache_dir, sha256, timeout_s=timeout_s)


def load_failure_reason(exc: BaseException) -> str:
    """Why a variant could not be loaded, as a VariantLoadFailed carries it (cut to MAX_REASON_LEN)."""
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON_LEN]


async def report_load_failure(control: Endpoint, worker_id: str, variant: str, exc: BaseException) -> None:
    """Tell the controller that ``variant`` cannot be fetched or loaded here, and why.

    The controller marks it unavailable and re-plans without it; the worker serves its other
    variants meanwhile instead of exiting (which would take them down and crash-loop).
    """
    await control.send(VariantLoadFailed(worker_id=worker_id, variant=variant, reason=load_failure_reason(exc)))
