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
import resource
from collections.abc import Iterable

from controller.repository import Variant
from mesh.digest import sha256_fd
from protocol.codec import ARTIFACT_CHUNK_BYTES
from protocol.message import ArtifactChunkReply, ErrorReply

log = logging.getLogger("controller.control_plane")  # the controller's log: one name for what it says


class ArtifactFiles:
    """The repository's artifact files, held open by digest. Not thread-safe; the actor owns it.

    ``read_ns``: when the repository was read (``time.time_ns()`` before the scan). A file changed
    since (a swap in between) is checked against its digest through the descriptor held, and not
    served if it no longer matches.
    """

    def __init__(self, variants: Iterable[Variant], read_ns: int = 0) -> None:
        self._fds: dict[str, int] = {}
        variants = list(variants)
        _allow_open_files(len(variants))
        for v in variants:
            if v.sha256 in self._fds:
                continue
            try:
                fd = os.open(v.artifact, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                log.warning("artifact of %s cannot be held open: %s", v.name, exc)
                continue
            st = os.fstat(fd)
            if read_ns and max(st.st_mtime_ns, st.st_ctime_ns) >= read_ns and sha256_fd(fd) != v.sha256:
                log.warning("artifact of %s changed on disk while the repository was read; restart the "
                            "controller to serve the new one", v.name)
                os.close(fd)
                continue
            self._fds[v.sha256] = fd

    def read(self, variant: Variant, offset: int, length: int) -> bytes | None:
        """The bytes at ``offset`` (None: the artifact read under this digest is not held)."""
        fd = self._fds.get(variant.sha256)
        return None if fd is None else os.pread(fd, length, offset)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def artifact_chunk(variant: Variant | None, sha: str, offset: int, length: int,
                   files: ArtifactFiles) -> ArtifactChunkReply | ErrorReply:
    """The chunk of ``variant``'s artifact (the one whose digest is ``sha``) at ``offset``."""
    if variant is None:
        return ErrorReply(code="unknown_artifact", message=f"no variant in the repository has artifact {sha}")
    if not 0 <= offset <= variant.size_bytes or length <= 0:
        return ErrorReply(code="bad_range", message=f"bad range {offset}+{length} of {variant.size_bytes} bytes")
    length = min(length, ARTIFACT_CHUNK_BYTES)
    try:
        data = files.read(variant, offset, length)
    except OSError as exc:  # an I/O error of this host, now: the worker tries again
        log.warning("artifact of %s cannot be read: %s", variant.name, exc)
        return ErrorReply(code="unreadable_artifact", message=f"artifact {sha} of {variant.name} cannot be read now",
                          retryable=True)
    if data is None:
        return ErrorReply(code="unknown_artifact", message=f"artifact {sha} of {variant.name} is no longer on disk "
                          "as the controller read it (restart the controller to serve what is there now)")
    return ArtifactChunkReply(sha256=sha, offset=offset, total_size=variant.size_bytes, data=data)


def _allow_open_files(artifacts: int) -> None:
    """Raise the soft limit on open files (to at most the hard one) so that holding the artifacts
    leaves the sockets of the mesh their room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = artifacts + 4096
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
