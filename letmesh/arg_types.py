"""Argument types for the command line: a number out of its range (a negative timeout, a port past
65535, NaN or infinity) is a usage error naming the flag's rule, not a hang or a traceback later."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(lo: float, hi: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """A finite float from ``lo`` (or above it, with ``above``) to ``hi``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value > hi or value < lo or (above and value == lo):
            bound = (f"above {lo:g}" if above else f"at least {lo:g}") + ("" if hi == math.inf else f" and at most {hi:g}")
            raise argparse.ArgumentTypeError(f"{text!r}: a finite number {bound} is needed")
        return value
    return parse


def whole(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """A whole number from ``lo`` to ``hi``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text!r}: from {lo} to {hi} is needed" if hi is not None
                                             else f"{text!r}: at least {lo} is needed")
        return value
    return parse


SECONDS = number(0.0, above=True)
PORT = whole(1, 65535)
