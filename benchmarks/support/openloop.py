"""An open-loop HTTP load client that records exactly one outcome per request it schedules.

Requests are sent at fixed times whatever the server does (a slow server does not slow the
client down, unlike a closed loop), on an aiohttp session in a thread of its own with its own
event loop, so the caller's thread stays free to inject faults. Latency counts from the
*scheduled* send time, so a client that fell behind is charged to the figures, not hidden.

Starting a run settles the garbage collector as the serving roles do (:func:`mesh.heap.settle`):
the process that drives it has usually imported torch and built models, and a full collection
over all of that stalled the client's loop by up to ~280 ms, counted as late sends.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from mesh import heap

# What a request can end as, besides an HTTP status.
TIMEOUT = "timeout"  # no answer within the client timeout: unanswered (the client was left hanging)
DISCONNECTED = "disconnected"  # the connection closed before an answer: dropped (the client knows at once)
REFUSED = "refused"  # could not connect: the client knows at once, nothing was accepted
CLIENT_ERROR = "client_error"  # anything else aiohttp raised (counted, never expected)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stream:
    """One steady request stream: ``rate_rps`` POSTs of ``body`` to ``path``."""

    label: str
    path: str
    body: bytes
    rate_rps: float
    start_s: float = 0.0  # offset into the run of its first request
    duration_s: float | None = None  # None: until the run ends
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one scheduled request. Times are ``time.monotonic()`` seconds."""

    stream: str
    scheduled: float
    lag_s: float  # how late the client actually sent it
    status: int  # 0 when no HTTP answer came
    end: str  # "http" or one of TIMEOUT, DISCONNECTED, REFUSED, CLIENT_ERROR
    latency_s: float  # scheduled send -> answer (or -> failure)
    retry_after: bool


@dataclass(slots=True)
class LoadRun:
    """Sends every stream for ``duration_s`` from ``start()``; ``join()`` returns the outcomes.

    The thread owns its event loop and session; nothing else touches them. ``stop()`` ends the
    sending early (requests already sent still get their outcome).
    """

    base_url: str
    streams: tuple[Stream, ...]
    duration_s: float
    client_timeout_s: float = 10.0
    t0: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, lead_s: float = 0.2) -> float:
        """Start sending ``lead_s`` from now; returns the monotonic time the first request is due."""
        heap.settle()  # what exists now is never walked again: no long collection mid-run
        self.t0 = time.monotonic() + lead_s
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self._thread.start()
        return self.t0

    def stop(self) -> None:
        self._stop.set()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout_s: float | None = None) -> list[Outcome]:
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("the load client did not finish")
        if self.error is not None:
            raise self.error
        return self.outcomes

    def _run(self) -> None:
        try:
            asyncio.run(self._drive())
        except BaseException as exc:  # reported to the joining thread
            self.error = exc

    def schedule(self) -> list[tuple[float, Stream]]:
        """(offset from t0, stream) of every request, in sending order: the request count is fixed."""
        plan = []
        for s in self.streams:
            span = min(self.duration_s - s.start_s, s.duration_s if s.duration_s is not None else self.duration_s)
            n = max(0, int(s.rate_rps * span))
            plan += [(s.start_s + i / s.rate_rps, s) for i in range(n)]
        plan.sort(key=lambda item: item[0])
        return plan

    async def _drive(self) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=self.client_timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = []
            for offset, stream in self.schedule():
                if self._stop.is_set():
                    break
                due = self.t0 + offset
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._one(session, stream, due)))
            self.outcomes = list(await asyncio.gather(*tasks))

    async def _one(self, session: aiohttp.ClientSession, stream: Stream, due: float) -> Outcome:
        sent = time.monotonic()
        status, end, retry = 0, "http", False
        try:
            async with session.post(self.base_url + stream.path, data=stream.body, headers=dict(stream.headers)) as resp:
                await resp.read()
                status, retry = resp.status, "Retry-After" in resp.headers
        except TimeoutError:
            end = TIMEOUT
        except aiohttp.ClientConnectorError:
            end = REFUSED
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError):
            end = DISCONNECTED
        except aiohttp.ClientError:
            end = CLIENT_ERROR
        return Outcome(stream=stream.label, scheduled=due, lag_s=sent - due, status=status, end=end,
                       latency_s=time.monotonic() - due, retry_after=retry)


def summarise(outcomes: list[Outcome], *, fault_at: float | None, deadline_ms: float, grace_ms: float = 50.0,
              streak: int = 20) -> dict:
    """The figures of one phase: every outcome counted once, by status or by how it failed.

    ``recovery_s``: from the fault to the first of ``streak`` consecutive 200s (in sending order,
    among requests scheduled at or after the fault); None when the phase never got there.
    ``settled_s``: from the fault to the start of the run of 200s that lasts to the end of the phase
    (at least ``streak`` long), so a second dip after a first recovery (a restarted role rejoining)
    counts; None when the phase ends without such a run.
    """
    limit_s = (deadline_ms + grace_ms) / 1000.0
    statuses: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.end == "http" else o.end
        statuses[key] = statuses.get(key, 0) + 1
    answered = [o for o in outcomes if o.end == "http"]
    ok = [o.latency_s for o in answered if o.status == 200]
    shed = [o for o in answered if o.status in (429, 503)]
    lags = np.asarray([o.lag_s for o in outcomes]) * 1000.0
    return {
        "sent": len(outcomes),
        "statuses": dict(sorted(statuses.items())),
        "ok": len(ok),
        "unanswered": statuses.get(TIMEOUT, 0),
        "dropped": statuses.get(DISCONNECTED, 0),
        "refused": statuses.get(REFUSED, 0),
        "client_errors": statuses.get(CLIENT_ERROR, 0),
        "late_200": sum(1 for lat in ok if lat > limit_s),
        "late_answers": sum(1 for o in answered if o.latency_s > limit_s),
        # The same bound counted from when the client actually sent: a request the client itself sent
        # late (its loop starved of CPU) is late above but may not be here.
        "late_from_send": sum(1 for o in answered if o.latency_s - max(o.lag_s, 0.0) > limit_s),
        "max_answer_s": max((o.latency_s for o in answered), default=None),
        "shed_without_retry_after": sum(1 for o in shed if not o.retry_after),
        "p50_200_ms": float(np.percentile(ok, 50) * 1000.0) if ok else None,
        "p99_200_ms": float(np.percentile(ok, 99) * 1000.0) if ok else None,
        "client_lag_p99_ms": float(np.percentile(lags, 99)) if lags.size else None,
        "client_lag_max_ms": float(lags.max()) if lags.size else None,
        "recovery_s": None if fault_at is None else recovery_s(outcomes, fault_at, streak),
        "settled_s": None if fault_at is None else settled_s(outcomes, fault_at, streak),
    }


def recovery_s(outcomes: list[Outcome], fault_at: float, streak: int = 20) -> float | None:
    run = 0
    for o in sorted((o for o in outcomes if o.scheduled >= fault_at), key=lambda o: o.scheduled):
        run = run + 1 if o.end == "http" and o.status == 200 else 0
        if run == 1:
            first = o.scheduled
        if run == streak:
            return max(0.0, first - fault_at)
    return None


def settled_s(outcomes: list[Outcome], fault_at: float, streak: int = 20) -> float | None:
    after = sorted((o for o in outcomes if o.scheduled >= fault_at), key=lambda o: o.scheduled)
    run = 0
    for o in reversed(after):
        if o.end != "http" or o.status != 200:
            break
        run += 1
    if run < streak:
        return None
    return max(0.0, after[len(after) - run].scheduled - fault_at)
