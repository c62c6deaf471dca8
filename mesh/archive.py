"""What a model archive holds that loading it would run as native code.

A torch.export archive (``.pt2``) may carry an AOTInductor package: a compiled shared library that
torch unpacks and loads with the program, its startup code run in the loading process. The
repository sets such an artifact aside and a worker refuses to load one; plain programs (a graph,
tensor weights and constants) carry none.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

NATIVE_SUFFIXES = (".so", ".dylib", ".dll", ".pyd", ".o", ".cpp", ".cubin", ".ptx", ".fatbin")


def native_code(path: Path | str) -> list[str]:
    """Members of the zip archive at ``path`` that are compiled code or its sources (empty for a
    plain program; ``zipfile.BadZipFile`` or ``OSError`` when it cannot be read)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return [n for n in names if "/data/aotinductor/" in f"/{n}" or n.lower().endswith(NATIVE_SUFFIXES)]
