"""Artifacts served to agents and workers, a chunk per request (``FetchArtifact``): a range past the
file or a file no longer readable (removed or replaced since the repository was read) is an error
reply, never silence."""

from __future__ import annotations

import logging

from controller.repository import Variant
from protocol.codec import ARTIFACT_CHUNK_BYTES
from protocol.message import ArtifactChunkReply, ErrorReply

log = logging.getLogger("controller.control_plane")  # the controller's log: one name for what it says


def artifact_chunk(variant: Variant | None, sha: str, offset: int, length: int) -> ArtifactChunkReply | ErrorReply:
    """The chunk of ``variant``'s artifact (the one whose digest is ``sha``) at ``offset``."""
    if variant is None:
        return ErrorReply(code="unknown_artifact", message=f"no variant in the repository has artifact {sha}")
    if not 0 <= offset <= variant.size_bytes or length <= 0:
        return ErrorReply(code="bad_range", message=f"bad range {offset}+{length} of {variant.size_bytes} bytes")
    try:
        with variant.artifact.open("rb") as f:
            f.seek(offset)
            data = f.read(min(length, ARTIFACT_CHUNK_BYTES))
    except OSError as exc:
        log.warning("artifact of %s cannot be read: %s", variant.name, exc)
        return ErrorReply(code="unknown_artifact", message=f"artifact {sha} of {variant.name} cannot be read now")
    return ArtifactChunkReply(sha256=sha, offset=offset, total_size=variant.size_bytes, data=data)
