"""Steady open-loop load with one recorded outcome per request.

Request ``i`` is sent at ``start + i / rate`` whether or not earlier ones were answered (a
client population that does not slow down when the server does), each with a unique ``id``.
Every request ends in exactly one ``Outcome``: the HTTP status, or 0 when no answer came
within the client's timeout or the connection failed (unanswered).
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

import aiohttp

IDENTITY_INPUT = [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]


@dataclass(slots=True)
class Outcome:
    rid: str
    sent_at: float  # time.monotonic()
    done_at: float = 0.0
    status: int = 0  # 0: unanswered (client timeout or connection error)
    retry_after: bool = False
    id_matches: bool = True  # a 200's body carries this request's id
    error: str = ""


class OpenLoopLoad:
    """Sends to ``url`` at ``rate_rps`` from ``start()`` until ``stop()``; ``outcomes`` grows as answers come."""

    def __init__(self, url: str, rate_rps: float, *, slo_ms: float = 2000.0, client_timeout_s: float = 15.0,
                 prefix: str = "r") -> None:
        self.url = url
        self.rate_rps = rate_rps
        self.slo_ms = slo_ms
        self.client_timeout_s = client_timeout_s
        self.prefix = prefix
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._runner: asyncio.Task | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="open-loop-load")

    async def stop(self) -> list[Outcome]:
        """Stop sending, wait for every request sent to end (bounded by the client timeout)."""
        self._stop.set()
        assert self._runner is not None
        await asyncio.wait_for(self._runner, self.client_timeout_s + 10)
        return self.outcomes

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.client_timeout_s)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            pending: set[asyncio.Task] = set()
            t0 = time.monotonic()
            i = 0
            while not self._stop.is_set():
                delay = t0 + i / self.rate_rps - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                outcome = Outcome(rid=f"{self.prefix}{i}", sent_at=time.monotonic())
                self.outcomes.append(outcome)
                task = asyncio.create_task(self._one(session, outcome))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
            if pending:
                await asyncio.gather(*pending)

    async def _one(self, session: aiohttp.ClientSession, outcome: Outcome) -> None:
        body = {"id": outcome.rid, "inputs": IDENTITY_INPUT, "parameters": {"letmesh_slo_ms": self.slo_ms}}
        try:
            async with session.post(self.url, json=body) as resp:
                payload = await resp.json(content_type=None)
                outcome.status = resp.status
                outcome.retry_after = "Retry-After" in resp.headers
                if resp.status == 200:
                    outcome.id_matches = isinstance(payload, dict) and payload.get("id") == outcome.rid
                elif isinstance(payload, dict):
                    outcome.error = str(payload.get("error", ""))[:120]
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            outcome.status = 0
            outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.done_at = time.monotonic()


@dataclass(frozen=True, slots=True)
class Tally:
    sent: int
    ok: int  # 200
    failed: int  # answered with another status
    unanswered: int
    statuses: dict[int, int]
    crossed: int  # a 200 whose body carried another request's id
    missing_retry_after: int  # 503s without Retry-After
    errors: dict[str, int]  # "<status> <error message>" of the failed and unanswered requests

    def line(self) -> str:
        per = " ".join(f"{s}:{n}" for s, n in sorted(self.statuses.items()))
        why = "; ".join(f"{n}x {e}" for e, n in sorted(self.errors.items(), key=lambda kv: -kv[1])[:3])
        return (f"sent {self.sent}, 200 {self.ok}, failed {self.failed}, unanswered {self.unanswered} "
                f"(statuses {per or '-'})" + (f" [{why}]" if why else ""))


def tally(outcomes: list[Outcome], since: float = float("-inf"), until: float = float("inf")) -> Tally:
    """Counts over the requests sent in [since, until)."""
    chosen = [o for o in outcomes if since <= o.sent_at < until]
    statuses = collections.Counter(o.status for o in chosen)
    return Tally(
        sent=len(chosen),
        ok=statuses.get(200, 0),
        failed=sum(n for s, n in statuses.items() if s not in (0, 200)),
        unanswered=statuses.get(0, 0),
        statuses=dict(statuses),
        crossed=sum(1 for o in chosen if o.status == 200 and not o.id_matches),
        missing_retry_after=sum(1 for o in chosen if o.status == 503 and not o.retry_after),
        errors=dict(collections.Counter(f"{o.status} {o.error}" for o in chosen if o.status != 200)),
    )


def first_steady_success(outcomes: list[Outcome], after: float) -> float | None:
    """When the requests sent after ``after`` last started succeeding for good: the send time of
    the first request of the final run of 200s, or None if the last request failed."""
    chosen = [o for o in outcomes if o.sent_at >= after]
    if not chosen or chosen[-1].status != 200:
        return None
    t = chosen[-1].sent_at
    for o in reversed(chosen):
        if o.status != 200:
            break
        t = o.sent_at
    return t
