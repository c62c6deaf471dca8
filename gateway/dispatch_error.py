"""Why a request sent to the data plane got no result: the errors the dispatcher raises, and
the HTTP ``Retry-After`` a client is told when it may come back."""

from __future__ import annotations

import math


class DispatchError(Exception):
    """Root of data-plane failures; ``retry_after_s`` set when the client should come back."""

    retry_after_s: float | None = None


class NoWorkerReady(DispatchError):
    retry_after_s = 1.0


class Overloaded(DispatchError):
    retry_after_s = 1.0

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WorkerLost(DispatchError):
    retry_after_s = 1.0


class DeadlineExceeded(DispatchError):
    """No usable reply before the deadline, or the worker dropped the request as hopeless."""


class WorkerFailed(DispatchError):
    """The worker answered with an error (the model raised, or bad tensors)."""


def retry_after_header(seconds: float | None) -> str:
    """HTTP Retry-After: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds or 1.0)))
