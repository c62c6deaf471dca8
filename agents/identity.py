"""The agent's id: given (``--agent-id``), or a random one kept in the agent's state directory.

A hostname is not an id: cloned hosts share it. A random id saved on first start survives
restarts, and a clone made before the first start (a fresh state directory) gets its own.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ID_FILE = "agent-id"


def persistent_agent_id(state_dir: str | Path) -> str:
    """The id saved in ``state_dir``, made (and saved atomically) on first use."""
    path = Path(state_dir) / ID_FILE
    try:
        saved = path.read_text().strip()
    except FileNotFoundError:
        saved = ""
    if saved:
        return saved
    path.parent.mkdir(parents=True, exist_ok=True)
    made = f"agent-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{ID_FILE}.{os.getpid()}")
    tmp.write_text(made + "\n")
    try:
        os.link(tmp, path)  # fails if another agent saved one first: theirs is the id then
    except FileExistsError:
        return path.read_text().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return made
