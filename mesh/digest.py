"""Content hashes of files: artifacts are addressed, fetched and checked by their sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path | str) -> str:
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_fd(fd: int) -> str:
    """The digest of the file open as ``fd``, read from its start (the offset ``fd`` shares moves: read
    the file with ``os.pread`` afterwards)."""
    with os.fdopen(os.dup(fd), "rb") as f:
        f.seek(0)
        return hashlib.file_digest(f, "sha256").hexdigest()
