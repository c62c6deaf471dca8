"""Fetching model artifacts from the controller by sha256, chunk by chunk, into a disk cache.

A cached file is trusted only after its sha256 is checked; a download is written to a temporary
file and renamed into place once complete and verified, so a crash never leaves a bad cache
entry behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from agents.error import ArtifactError
from mesh.transport import Endpoint
from protocol.codec import ARTIFACT_CHUNK_BYTES
from protocol.message import ArtifactChunkReply, ErrorReply, FetchArtifact


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached(cache_dir: Path, sha256: str) -> Path | None:
    path = cache_dir / sha256
    if path.is_file() and sha256_file(path) == sha256:
        return path
    return None


async def fetch_artifact(
    endpoint: Endpoint, replies: asyncio.Queue, cache_dir: Path, sha256: str, *, timeout_s: float = 10.0
) -> Path:
    """Download ``sha256`` over ``endpoint``; replies arrive on ``replies`` (the caller's receive loop)."""
    hit = cached(cache_dir, sha256)
    if hit is not None:
        return hit
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{sha256}.{os.getpid()}.part"
    digest = hashlib.sha256()
    offset, total = 0, None
    try:
        with tmp.open("wb") as f:
            while total is None or offset < total:
                await endpoint.send(FetchArtifact(sha256=sha256, offset=offset, length=ARTIFACT_CHUNK_BYTES))
                try:
                    reply = await asyncio.wait_for(replies.get(), timeout_s)
                except TimeoutError:
                    raise ArtifactError(f"controller did not answer for artifact {sha256[:12]} at {offset}") from None
                if isinstance(reply, ErrorReply):
                    raise ArtifactError(f"artifact {sha256[:12]}: {reply.message}")
                if not isinstance(reply, ArtifactChunkReply) or reply.sha256 != sha256 or reply.offset != offset:
                    continue  # a stale reply to an earlier, timed-out request
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
    finally:
        tmp.unlink(missing_ok=True)
