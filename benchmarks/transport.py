"""ZeroMQ round trips on one core: letmesh's transport against pyzmq's own asyncio sockets.

A ROUTER in this process and a DEALER in a child process, both pinned to one core (a gateway and
a worker sharing an edge board's core), pass an inference request carrying a 3x32x32 float
tensor one way and a reply with 10 floats back, one trip at a time, so that every receive waits.
"letmesh": both ends are ``mesh.transport.Endpoint`` (sends without a future, receives that wait
on ``mesh.readiness``). "pyzmq": both ends are ``zmq.asyncio`` sockets awaiting
``send_multipart`` and ``recv_multipart``, with the same codec (``protocol.encode`` and
``decode_all``): the difference is the transport alone. Both transports stay open in both
processes and run in alternating blocks of round trips (a pair of blocks per round, the order
flipping; a first pair warms up), so a drift in the host's speed moves both. Reported: CPU
microseconds per round trip of each side in each block (process time), median and range, and
the ratio letmesh/pyzmq of the two sides' sum per pair of blocks (below 1: letmesh's transport
costs less). Prints a table, writes JSON, ends with a RESULT line. Asserts nothing about speed.

Run: ``python benchmarks/transport.py [--quick] [--pairs N] [--trips N]``. An entry point: may
import everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import uvloop  # noqa: E402
import zmq  # noqa: E402
import zmq.asyncio  # noqa: E402

from agents.process import die_with_parent  # noqa: E402
from benchmarks.support.report import publish  # noqa: E402
from benchmarks.support.server_under_test import pinned  # noqa: E402
from mesh.transport import Endpoint  # noqa: E402
from protocol import DEFAULT_LIMITS, decode_all, encode  # noqa: E402
from protocol.codec import tensor_meta  # noqa: E402
from protocol.message import InferReply, InferRequest, ReplyStatus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "transport.json"
MODES = ("letmesh", "pyzmq")
IMAGE = np.ones((1, 3, 32, 32), np.float32)
LOGITS = np.ones((1, 10), np.float32)
REQUEST = InferRequest(request_id=1, variant="small", budget_us=100_000, inputs=(tensor_meta("input", IMAGE),))
REPLY = InferReply(request_id=1, variant="small", status=ReplyStatus.OK, outputs=(tensor_meta("logits", LOGITS),))
RUN_TIMEOUT_S = 600.0
LINGER_MS = 1000


def schedule(pairs: int) -> list[str]:
    """The transport of each block: a pair of blocks per round, the order flipping (ABBA...)."""
    return [mode for r in range(pairs) for mode in (MODES if r % 2 == 0 else MODES[::-1])]


class _Ends:
    """One side's two transports, open together, so that blocks of either can alternate."""

    def __init__(self, ctx: zmq.asyncio.Context, addresses: dict[str, str], router: bool) -> None:
        if router:
            self.ep = Endpoint.router(ctx, addresses["letmesh"])
            self.sock = ctx.socket(zmq.ROUTER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.bind(addresses["pyzmq"])
        else:
            self.ep = Endpoint.dealer(ctx, addresses["letmesh"], "worker:bench")
            self.sock = ctx.socket(zmq.DEALER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.connect(addresses["pyzmq"])

    def close(self) -> None:
        # The dealer's last reply may still be queued: a little linger lets it go.
        self.ep.close(linger_ms=LINGER_MS)
        self.sock.close(linger=LINGER_MS)


async def _blocks(ends: _Ends, router: bool, pairs: int, trips: int) -> dict[str, list[float]]:
    """Run the schedule's blocks; this side's CPU microseconds per round trip in each, by transport."""
    ep, sock = ends.ep, ends.sock
    if router:  # each end's first message says who it is
        peer = (await asyncio.wait_for(ep.recv(), 30)).peer
        raw_peer = (await asyncio.wait_for(sock.recv_multipart(copy=False), 30))[0].bytes
    else:
        ep.send_nowait(REPLY, [LOGITS])
        await sock.send_multipart(encode(REPLY, [LOGITS]), copy=False)
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    for block, mode in enumerate(["letmesh", "pyzmq"] + schedule(pairs)):  # a first pair to warm up
        started = time.process_time()
        for _ in range(trips):
            if mode == "letmesh" and router:
                ep.send_nowait(REQUEST, [IMAGE], to=peer)
                await ep.recv()
            elif mode == "letmesh":
                await ep.recv()
                ep.send_nowait(REPLY, [LOGITS])
            elif router:
                await sock.send_multipart([raw_peer, *encode(REQUEST, [IMAGE])], copy=False)
                decode_all((await sock.recv_multipart(copy=False))[1:], DEFAULT_LIMITS)
            else:
                decode_all(await sock.recv_multipart(copy=False), DEFAULT_LIMITS)
                await sock.send_multipart(encode(REPLY, [LOGITS]), copy=False)
        if block >= 2:
            cpu[mode].append((time.process_time() - started) / trips * 1e6)
    return cpu


async def _side(addresses: dict[str, str], router: bool, pairs: int, trips: int,
                child: list[str] | None = None) -> dict[str, Any]:
    ctx = zmq.asyncio.Context()
    ends = _Ends(ctx, addresses, router)
    peer = (subprocess.Popen(child, stdout=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=die_with_parent)
            if child else None)
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):  # a peer gone or a message lost ends the run, never hangs it
            mine = await _blocks(ends, router, pairs, trips)
        if peer is None:
            return {"cpu": mine}
        out, _ = peer.communicate(timeout=120)
        return {"cpu": mine, "peer": json.loads(out.strip().splitlines()[-1])["cpu"]}
    finally:
        if peer is not None and peer.poll() is None:
            peer.kill()
            peer.wait()
        ends.close()
        ctx.term()


def measure(pairs: int, trips: int, core: int) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="lm-trip-")
    addresses = {mode: f"ipc://{folder}/{mode}" for mode in MODES}
    try:
        child = [sys.executable, "-m", "benchmarks.transport", "--peer", json.dumps(addresses),
                 "--pairs", str(pairs), "--trips", str(trips)]
        with pinned(core):  # the child inherits it
            sides = uvloop.run(_side(addresses, True, pairs, trips, child))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    per_block = {mode: [{"router_us": r, "dealer_us": d, "trip_us": r + d}
                        for r, d in zip(sides["cpu"][mode], sides["peer"][mode])] for mode in MODES}
    ratios = [a["trip_us"] / b["trip_us"] for a, b in zip(per_block["letmesh"], per_block["pyzmq"])]
    summary = {mode: {key: _spread([s[key] for s in per_block[mode]]) for key in ("router_us", "dealer_us", "trip_us")}
               for mode in MODES}
    return {"pairs": pairs, "trips": trips, "core": core, "blocks": per_block, "summary": summary, "ratios": ratios,
            "result": {"trip_letmesh_vs_pyzmq": statistics.median(ratios),
                       "below_1": sum(1 for x in ratios if x < 1), "pairs": len(ratios),
                       "letmesh_trip_us": summary["letmesh"]["trip_us"]["median"],
                       "pyzmq_trip_us": summary["pyzmq"]["trip_us"]["median"]}}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['pairs']} pairs of blocks of {report['trips']} round trips, both processes on core {report['core']}",
             "CPU us per round trip, per block: median [min, max]",
             f"{'transport':<10} {'router':>24} {'dealer':>24} {'both':>24}"]
    for mode in MODES:
        s = report["summary"][mode]
        cells = [f"{s[k]['median']:7.1f} [{s[k]['min']:6.1f}, {s[k]['max']:6.1f}]" for k in ("router_us", "dealer_us", "trip_us")]
        lines.append(f"{mode:<10} " + " ".join(f"{c:>24}" for c in cells))
    result = report["result"]
    lines.append(f"letmesh/pyzmq per pair of blocks, both sides: median {result['trip_letmesh_vs_pyzmq']:.3f}, "
                 f"range {min(report['ratios']):.3f}-{max(report['ratios']):.3f}, "
                 f"below 1 in {result['below_1']} of {result['pairs']}")
    return "\n".join(lines)


def result_line(result: dict[str, Any]) -> str:
    return (f"RESULT trip_letmesh_vs_pyzmq={result['trip_letmesh_vs_pyzmq']:.3f} "
            f"letmesh_trip_us={result['letmesh_trip_us']:.1f} pyzmq_trip_us={result['pyzmq_trip_us']:.1f} "
            f"below_1={result['below_1']}/{result['pairs']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="6 pairs of blocks of 500 trips instead of 20 of 2,000")
    p.add_argument("--pairs", type=int, help="pairs of blocks, one block of each transport")
    p.add_argument("--trips", type=int, help="round trips a block")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--peer", help=argparse.SUPPRESS)  # the child's side: the two transports' addresses
    a = p.parse_args(argv)
    pairs = a.pairs or (6 if a.quick else 20)
    trips = a.trips or (500 if a.quick else 2_000)
    if a.peer:
        print(json.dumps(uvloop.run(_side(json.loads(a.peer), False, pairs, trips))), flush=True)
        return 0
    report = measure(pairs, trips, min(os.sched_getaffinity(0)))
    report["out"] = str(a.out)
    return publish(report, a.out, render, result_line)


if __name__ == "__main__":
    raise SystemExit(main())
