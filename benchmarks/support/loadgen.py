"""An open-loop Poisson load generator over keep-alive HTTP/1.1 connections, with its own lag measured.

Send times are drawn in advance from a seeded exponential gap distribution; each request's latency
runs from its scheduled send time to the last byte of its reply, so a late send (the generator's
own lag, reported apart) or a slow server both count, and nothing is omitted when the server
falls behind: a request never waits for an earlier one to finish. Bodies are pre-encoded. Each
run starts by settling the garbage collector (:func:`mesh.heap.settle`): the benchmark process has
imported torch, and one full collection over it took ~180 ms here, far past a small model's SLO.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesh import heap

TIMED_OUT, CONNECTION_LOST = -1, 0  # pseudo-statuses
# A letmesh reply's parameters: its batch's compute time and size (gateway.http_app).
_COMPUTE_US = re.compile(rb'"letmesh_compute_us":\s*(\d+)')
_BATCH_SIZE = re.compile(rb'"letmesh_batch_size":\s*(\d+)')


def raw_request(port: int, path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


@dataclass(slots=True)
class _Pool:
    port: int
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    opened: int = 0

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        self.opened += 1
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self.idle.clear()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One request on a keep-alive connection: (status, body); the server answers with Content-Length."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length)
    return int(head[9:12]), body


def model_us(body: bytes) -> float | None:
    """The model's time for one request of a letmesh reply (its batch's compute time over the
    batch's size, from the reply's parameters); None for a reply without them (the baseline's)."""
    compute = _COMPUTE_US.search(body)
    batch = _BATCH_SIZE.search(body)
    if compute is None or batch is None:
        return None
    return int(compute.group(1)) / max(1, int(batch.group(1)))


async def _one(pool: _Pool, request: bytes, scheduled_ns: int, timeout_s: float, out: list, index: int,
               model: list) -> None:
    sent = time.perf_counter_ns()
    conn = None
    try:
        async with asyncio.timeout(timeout_s):
            conn = await pool.get()
            status, body = await exchange(*conn, request)
        out[index] = (status, time.perf_counter_ns() - scheduled_ns, sent - scheduled_ns)
        model[index] = model_us(body) if status == 200 else None
        pool.idle.append(conn)
        return
    except TimeoutError:
        status = TIMED_OUT
    except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        status = CONNECTION_LOST
    out[index] = (status, time.perf_counter_ns() - scheduled_ns, sent - scheduled_ns)
    if conn is not None:  # a half-read reply leaves the connection unusable
        conn[1].close()


async def probe(port: int, request: bytes, timeout_s: float) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
    try:
        return await asyncio.wait_for(exchange(reader, writer, request), timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def open_loop(port: int, request: bytes, *, rate: float, requests: int, seed: int, timeout_s: float,
                    prefill: int = 16) -> dict[str, Any]:
    """Send ``requests`` at Poisson ``rate`` (req/s); every request ends with a status or a pseudo-status."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, requests)
    offsets_ns = (np.cumsum(gaps) * 1e9).astype(np.int64)
    pool = _Pool(port)
    for _ in range(prefill):
        with contextlib.suppress(OSError):
            pool.idle.append(await asyncio.open_connection("127.0.0.1", port))
    out: list = [None] * requests
    model: list = [None] * requests
    tasks = []
    heap.settle()  # what the benchmark holds is never walked again: no long collection mid-run
    cpu_before = _cpu_s()
    start = time.perf_counter_ns() + 20_000_000
    for i, offset in enumerate(offsets_ns.tolist()):
        due = start + offset
        delay = (due - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(pool, request, due, timeout_s, out, i, model)))
    await asyncio.gather(*tasks)
    elapsed_s = (time.perf_counter_ns() - start) / 1e9
    client_cpu_s = _cpu_s() - cpu_before
    await pool.close()
    return {"results": out, "elapsed_s": elapsed_s, "client_cpu_s": client_cpu_s,
            "connections": pool.opened + prefill, "model_us": model}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summarise(run: dict[str, Any], *, rate: float, slo_ms: float, pass_fraction: float) -> dict[str, Any]:
    """One step's figures: statuses, the share answered 200 within the SLO, latency and lag percentiles."""
    results = run["results"]
    statuses = collections.Counter(status for status, _, _ in results)
    latency_ms = np.asarray([lat for _, lat, _ in results], dtype=np.float64) / 1e6
    lag_ms = np.asarray([lag for _, _, lag in results], dtype=np.float64) / 1e6
    ok_ms = np.asarray([lat for status, lat, _ in results if status == 200], dtype=np.float64) / 1e6
    good = int(sum(1 for status, lat, _ in results if status == 200 and lat / 1e6 <= slo_ms))
    sent = len(results)
    model_us = [us for us in run.get("model_us", ()) if us is not None]

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if values.size else float("nan")

    return {
        "rate": rate, "sent": sent, "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "good": good, "good_fraction": good / sent if sent else 0.0,
        "passed": sent > 0 and good >= pass_fraction * sent,
        "p50_ms": pct(latency_ms, 50), "p99_ms": pct(latency_ms, 99), "ok_p50_ms": pct(ok_ms, 50),
        "lag_p50_ms": pct(lag_ms, 50), "lag_p99_ms": pct(lag_ms, 99), "lag_max_ms": float(lag_ms.max(initial=0.0)),
        "duration_s": run["elapsed_s"], "client_cpu_util": run["client_cpu_s"] / max(run["elapsed_s"], 1e-9),
        "connections": run["connections"],
        # The server's own account of its model time per request, where its replies give one.
        "model_ms_per_req": float(np.mean(model_us)) / 1e3 if model_us else None,
    }
