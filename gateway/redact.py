"""What the gateway tells HTTP clients of the hosts behind it: reasons without their file layout.
Pure; imports only the standard library."""

from __future__ import annotations

import re

# An absolute path of two or more folders: the controller's (or an agent's) file layout.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^/\s:,;'\"]+/)+(?=[^/\s:,;'\"]+/[^/\s:,;'\"]+)")


def public_reason(reason: str) -> str:
    """A set-aside variant's reason as HTTP clients see it: absolute paths cut to their last two
    parts (``digits-mlp/manifest.json``), so the hosts' file layout is not told to any client;
    ``letmesh status`` shows the whole reason to operators."""
    return _ABSOLUTE_PATH.sub("", reason)
