"""One controller per state directory: a lock file it holds for its process's life.

Two controllers on one state directory would share its SQLite store, keyring and plan of record
and undo each other's decisions. The lock is an ``flock`` on ``controller.lock`` (released by the
kernel when the process ends, however it ends); the file names the holder's pid for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "controller.lock"


class StateDirInUse(Exception):
    """Another process holds the state directory's controller lock."""


def hold(state_dir: Path | str) -> IO[str]:
    """Take the lock of ``state_dir`` (made if missing) for as long as the returned file stays open."""
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True)
    f = open(path / LOCK_NAME, "a+")  # noqa: SIM115: held open on purpose
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(f)
        f.close()
        raise StateDirInUse(_message(path, holder)) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def check_free(state_dir: Path | str) -> None:
    """Raise :class:`StateDirInUse` when a controller holds ``state_dir`` now; creates nothing."""
    path = Path(state_dir)
    try:
        f = open(path / LOCK_NAME)  # noqa: SIM115
    except OSError:
        return  # no lock file: no controller ever held it (or the folder does not exist yet)
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirInUse(_message(path, _holder(f))) from None
        fcntl.flock(f, fcntl.LOCK_UN)


def _holder(f: IO[str]) -> str:
    f.seek(0)
    return f.read().strip()


def _message(path: Path, holder: str) -> str:
    return (f"state directory {path} is in use by another controller (pid {holder or 'unknown'}); "
            "stop it, or give this one another --state-dir")
