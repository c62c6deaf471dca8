"""Bad input at the gateway's edge: how many random bodies get an undeliberate answer (500).

Starts a real gateway (HTTP, data socket, controller link to nowhere) with a routing table of one
family and no worker, posts random inference and feedback bodies whose parameters hold the values
that once broke it (ints past float, NaN, deep or wide context, over-long strings), and counts the
answers by status, plus requests left in flight. Prints a table, writes JSON, ends with one
``RESULT`` line. Asserts nothing.

Run: ``python benchmarks/edge_fuzz.py [--quick] [--bodies N] [--seed S]``. An entry point: may import everything.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from benchmarks.support.report import write_json  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from gateway.service import GatewayService  # noqa: E402
from protocol.message import RoutingTable  # noqa: E402
from protocol.types import ModelInfo, TensorSpec  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "edge_fuzz.json"
SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
MODELS = tuple(ModelInfo(name=n, family="fam", accuracy=a, max_batch=8, default_slo_ms=100.0, inputs=SPEC,
                         outputs=SPEC) for n, a in (("fam-small", 0.8), ("fam-large", 0.95)))
PARAMETERS = ("timeout", "letmesh_slo_ms", "letmesh_min_accuracy", "letmesh_max_energy_j", "letmesh_context")
FEEDBACK = ("reward", "rating", "scale")


def value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.25:
        return rng.choice([10**309, 10**400, 1e17, 10**30, -1, 0, 0.5, 50, 1e300])
    if r < 0.45:
        return rng.randint(-10**6, 10**6)
    if r < 0.6:
        return rng.uniform(-1e6, 1e6)
    if r < 0.7:
        return "x" * rng.randint(0, 400)
    if r < 0.8 and depth < 6:
        return {f"k{i}": value(rng, depth + 1) for i in range(rng.randint(0, 40))}
    if r < 0.85 and depth < 6:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice([True, None, float("nan"), float("inf")])


def body(rng: random.Random, i: int) -> tuple[str, bytes]:
    if i % 4 == 3:
        return "/v1/feedback", json.dumps({"event_id": "e", rng.choice(FEEDBACK): value(rng)}).encode()
    parameters = {rng.choice(PARAMETERS): value(rng) for _ in range(rng.randint(1, 3))}
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
           "parameters": parameters}
    return f"/v2/models/{rng.choice(['fam', 'fam-small'])}/infer", json.dumps(doc).encode()


async def measure(bodies: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    service = GatewayService(GatewayConfig(controller="tcp://127.0.0.1:1", gateway_id="edge-fuzz", http_port=0,
                                           data_bind="tcp://127.0.0.1:*"))
    await service.start()
    service.dispatcher.apply_routing(RoutingTable(version=1, models=MODELS, workers=()))
    statuses: collections.Counter[int] = collections.Counter()
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(bodies):
                path, raw = body(rng, i)
                async with session.post(service.http_url + path, data=raw) as resp:
                    statuses[resp.status] += 1
        in_flight = service.dispatcher.outstanding()
    finally:
        await service.stop()
    return {"bodies": bodies, "seed": seed, "seconds": time.perf_counter() - started,
            "statuses": dict(sorted(statuses.items())), "status_500": statuses[500], "in_flight_after": in_flight}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller run (2,000 bodies), same code path")
    p.add_argument("--bodies", type=int, help="bodies to post (default 20,000, quick 2,000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    a = p.parse_args(argv)
    bodies = a.bodies or (2_000 if a.quick else 20_000)
    report = asyncio.run(measure(bodies, a.seed))
    write_json(a.out, report)
    print(f"{report['bodies']} random bodies (seed {report['seed']}) in {report['seconds']:.1f} s, one run")
    print("status  count")
    for status, count in report["statuses"].items():
        print(f"{status:>6}  {count}")
    print(f"requests in flight afterwards: {report['in_flight_after']}")
    print(f"JSON: {a.out}")
    print(f"RESULT bodies={report['bodies']} status_500={report['status_500']} "
          f"in_flight_after={report['in_flight_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
