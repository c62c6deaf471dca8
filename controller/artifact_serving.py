"""Artifacts served to agents and workers, a chunk per request (``FetchArtifact``): a range past the
file or a file no longer readable is an error reply, never silence.

The files are held open from when the repository was read (:class:`ArtifactFiles`): ``letmesh repo
add --replace`` swaps a variant's folder for a new one, and a worker started after that still
fetches, by the digest the controller's plan names, the bytes that digest is of (read by path, the
new file's bytes came under the old digest, and every host without it cached set the variant aside).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from controller.repository import Variant
from protocol.codec import ARTIFACT_CHUNK_BYTES
from protocol.message import ArtifactChunkReply, ErrorReply

log = logging.getLogger("controller.control_plane")  # the controller's log: one name for what it says


class ArtifactFiles:
    """The repository's artifact files, held open by digest. Not thread-safe; the actor owns it."""

    def __init__(self, variants: Iterable[Variant]) -> None:
        self._fds: dict[str, int] = {}
        for v in variants:
            if v.sha256 in self._fds:
                continue
            try:
                self._fds[v.sha256] = os.open(v.artifact, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:  # gone since it was read: served by path, which says it cannot be read
                log.warning("artifact of %s cannot be held open: %s", v.name, exc)

    def read(self, variant: Variant, offset: int, length: int) -> bytes:
        fd = self._fds.get(variant.sha256)
        return _read_path(variant, offset, length) if fd is None else os.pread(fd, length, offset)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def artifact_chunk(variant: Variant | None, sha: str, offset: int, length: int,
                   files: ArtifactFiles | None = None) -> ArtifactChunkReply | ErrorReply:
    """The chunk of ``variant``'s artifact (the one whose digest is ``sha``) at ``offset``."""
    if variant is None:
        return ErrorReply(code="unknown_artifact", message=f"no variant in the repository has artifact {sha}")
    if not 0 <= offset <= variant.size_bytes or length <= 0:
        return ErrorReply(code="bad_range", message=f"bad range {offset}+{length} of {variant.size_bytes} bytes")
    try:
        length = min(length, ARTIFACT_CHUNK_BYTES)
        data = files.read(variant, offset, length) if files is not None else _read_path(variant, offset, length)
    except OSError as exc:
        log.warning("artifact of %s cannot be read: %s", variant.name, exc)
        return ErrorReply(code="unknown_artifact", message=f"artifact {sha} of {variant.name} cannot be read now")
    return ArtifactChunkReply(sha256=sha, offset=offset, total_size=variant.size_bytes, data=data)


def _read_path(variant: Variant, offset: int, length: int) -> bytes:
    with variant.artifact.open("rb") as f:
        f.seek(offset)
        return f.read(length)
