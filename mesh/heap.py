"""The garbage collector in a long-running serving process.

CPython's cyclic collector walks every tracked object of a generation when it collects it. A
worker that imported torch and loaded a model holds some 170,000 tracked objects that live as
long as the process; a full collection walks them all (about 90 ms on this project's reference
VM, a stall in the middle of a batch), and the youngest generations are collected every few
hundred allocations on the request path. :func:`settle` moves what the process holds once it is
set up into the permanent generation (:func:`gc.freeze`), so collections walk only what serving
allocates since, and spaces young collections further apart. Cycles made while serving are
still collected. Must not import asyncio, ZeroMQ or role packages.
"""

from __future__ import annotations

import gc

# Allocations (net of frees) between two collections of the youngest generation; CPython's
# default is 700. Requests allocate a few hundred objects each, nearly all freed by reference
# counting; a larger figure collects the same garbage in fewer, slightly longer passes.
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Collect once, freeze what survives, and space young collections (call when set up)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
