"""``letmesh demo``: start a local mesh, send it held-out digits as an HTTP client would, report.

The demo is a client of the mesh: it speaks the Open Inference Protocol over HTTP (JSON and
Triton's binary tensors) and asks the controller for status; it never imports controller,
agents or gateway. Turning outcomes into the report (``format_report``) is pure.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from letmesh.launcher import LaunchError, LocalMesh
from letmesh.status import StatusUnavailable, fetch_status
from letmesh.zoo import DIGITS_FAMILY, HELDOUT

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_EVERY = 4  # one request in four goes as Triton binary tensors
SAMPLE_SEED = 7
REQUEST_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 180.0


class DemoError(Exception):
    """The repository or the running mesh lacks what the demo needs (held-out set, digits family)."""


# --- what one request came back with ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    request_id: str
    model: str  # the name in the URL: the family, or one concrete variant
    binary: bool
    image: np.ndarray  # [64] float32
    label: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """Exactly one per request sent. ``status`` 0 means no HTTP response arrived at all."""

    model: str
    binary: bool
    label: int
    status: int
    latency_s: float
    error: str = ""
    variant: str = ""
    predicted: int = -1
    slo_status: str = ""
    queue_us: int | None = None
    compute_us: int | None = None
    batch_size: int | None = None

    @property
    def answered(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def correct(self) -> bool:
        return self.answered and self.predicted == self.label


@dataclass(frozen=True, slots=True, kw_only=True)
class Family:
    """What the repository index and model metadata say about the digits family."""

    name: str
    variants: tuple[str, ...]  # most accurate first, as the index lists them
    accuracy: Mapping[str, float]  # each variant's accuracy from its manifest
    input_name: str
    input_width: int
    output_name: str


# --- request and response bodies ----------------------------------------------------------------


def json_request(job: Job, family: Family) -> tuple[bytes, dict[str, str]]:
    body = {
        "id": job.request_id,
        "inputs": [{"name": family.input_name, "datatype": "FP32", "shape": [1, family.input_width],
                    "data": job.image.tolist()}],
        "outputs": [{"name": family.output_name}],
    }
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def binary_request(job: Job, family: Family) -> tuple[bytes, dict[str, str]]:
    tensor = InferInput(family.input_name, [1, family.input_width], "FP32")
    tensor.set_data_from_numpy(job.image.reshape(1, -1), binary_data=True)
    wanted = InferRequestedOutput(family.output_name, binary_data=True)
    body, header_length = InferenceServerClient.generate_request_body(
        [tensor], outputs=[wanted], request_id=job.request_id
    )
    return body, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(header_length)}


class UnreadableResponse(Exception):
    """A 200 response whose body does not hold the output the demo asked for."""


def read_response(body: bytes, header_length: str | None, output_name: str) -> tuple[dict[str, Any], np.ndarray]:
    """(the JSON header, the output as an array), whichever dialect the response came in."""
    try:
        if header_length is None:
            response = json.loads(body)
            tensor = next((o for o in response.get("outputs", ()) if o.get("name") == output_name), None)
            array = None if tensor is None else np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        else:
            result = InferenceServerClient.parse_response_body(body, header_length=int(header_length))
            response = result.get_response()
            array = result.as_numpy(output_name)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableResponse(f"unreadable response body: {exc}") from None
    if not isinstance(response, dict) or array is None:
        raise UnreadableResponse(f"response has no output {output_name!r}")
    return response, array


def error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace") or "(empty body)"


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def outcome_of_response(job: Job, status: int, body: bytes, header_length: str | None,
                        latency_s: float, output_name: str) -> Outcome:
    base = {"model": job.model, "binary": job.binary, "label": job.label, "status": status, "latency_s": latency_s}
    if status != 200:
        return Outcome(**base, error=error_message(body))
    try:
        response, probabilities = read_response(body, header_length, output_name)
    except UnreadableResponse as exc:
        return Outcome(**base, error=str(exc))
    if response.get("id") != job.request_id:
        return Outcome(**base, error=f"response id {response.get('id')!r} does not match {job.request_id!r}")
    if probabilities.shape != (1, 10):
        return Outcome(**base, error=f"output has shape {list(probabilities.shape)}, expected [1, 10]")
    params = response.get("parameters") or {}
    return Outcome(
        **base,
        variant=str(params.get("letmesh_variant", "")),
        predicted=int(np.argmax(probabilities[0])),
        slo_status=str(params.get("letmesh_slo_status", "")),
        queue_us=_int_or_none(params.get("letmesh_queue_us")),
        compute_us=_int_or_none(params.get("letmesh_compute_us")),
        batch_size=_int_or_none(params.get("letmesh_batch_size")),
    )


# --- the report (pure) -------------------------------------------------------------------------


def _quantile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _median(values: Sequence[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _us_as_ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def _fraction(part: int, whole: int) -> str:
    return "-" if whole == 0 else f"{part / whole:.3f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Plain-text columns: the first left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return indent + "  ".join([f"{first:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(rest, widths[1:]))])

    return [line(header), *(line(r) for r in rows)]


def format_report(
    *,
    family: Family,
    family_outcomes: Sequence[Outcome],
    variant_outcomes: Sequence[Outcome],
    family_elapsed_s: float,
) -> str:
    """The demo's summary: the family phase, then each variant on the same images, then errors."""
    lines: list[str] = []
    sent = len(family_outcomes)
    ok = [o for o in family_outcomes if o.answered]
    binary = sum(o.binary for o in family_outcomes)
    correct = sum(o.correct for o in ok)
    latencies = [o.latency_s for o in ok]
    met = sum(o.slo_status == "met" for o in ok)
    rate = f", {sent / family_elapsed_s:.0f} requests/s" if family_elapsed_s > 0 else ""
    lines += [
        "",
        f"family {family.name!r}: {sent} requests ({sent - binary} JSON, {binary} binary tensors){rate}",
        f"  answered     {len(ok)} of {sent} (HTTP 200), errors {sent - len(ok)}",
        f"  accuracy     {_fraction(correct, len(ok))} ({correct}/{len(ok)} correct against the true labels)",
        f"  latency      p50 {_ms(_quantile(latencies, 50))} ms, p99 {_ms(_quantile(latencies, 99))} ms "
        f"(client side, end to end)",
        f"  server       median compute {_us_as_ms(_median([o.compute_us for o in ok]))} ms, "
        f"median queue {_us_as_ms(_median([o.queue_us for o in ok]))} ms, SLO met {met} of {len(ok)}",
    ]
    served = Counter(o.variant for o in ok)
    lines.append("  served by    " + (", ".join(f"{v} {n}" for v, n in served.most_common()) or "none"))

    per_variant = len(variant_outcomes) // max(1, len(family.variants))
    lines += ["", f"each variant asked directly ({per_variant} requests each, the same images):"]
    rows = []
    for name in family.variants:
        direct = [o for o in variant_outcomes if o.model == name]
        answered = [o for o in direct if o.answered]
        rows.append([
            name,
            f"{family.accuracy.get(name, float('nan')):.3f}",
            _fraction(sum(o.correct for o in answered), len(answered)),
            f"{len(answered)}/{len(direct)}",
            _ms(_quantile([o.latency_s for o in answered], 50)),
            _us_as_ms(_median([o.compute_us for o in answered])),
            "-" if not answered else f"{_median([o.batch_size for o in answered]) or 0:g}",
            str(served.get(name, 0)),
        ])
    lines += table(["variant", "manifest acc", "measured acc", "answered", "p50 ms", "compute ms",
                    "median batch", "via family"], rows)

    failures = Counter(
        (o.status, o.model, o.error) for o in [*family_outcomes, *variant_outcomes] if not o.answered
    )
    total = len(family_outcomes) + len(variant_outcomes)
    lines.append("")
    if failures:
        lines.append(f"errors ({sum(failures.values())} of {total} requests):")
        for (status, model, error), count in failures.most_common():
            code = f"HTTP {status}" if status else "no response"
            lines.append(f"  {count:>4} x {code} from {model}: {error[:160]}")
    else:
        lines.append(f"errors: none; all {total} requests answered with HTTP 200")
    return "\n".join(lines)


def exit_code(outcomes: Sequence[Outcome]) -> int:
    return 0 if all(o.answered for o in outcomes) else 1


# --- talking to the mesh -----------------------------------------------------------------------


async def discover_family(http: aiohttp.ClientSession, name: str) -> Family:
    async with http.post("/v2/repository/index", json={}) as resp:
        resp.raise_for_status()
        index = await resp.json()
    entry = next((e for e in index if e.get("kind") == "family" and e.get("name") == name), None)
    if entry is None:
        raise DemoError(f"the mesh serves no {name!r} family")
    accuracy = {e["name"]: float(e["accuracy"]) for e in index
                if e.get("kind") == "variant" and e.get("family") == name}
    async with http.get(f"/v2/models/{name}") as resp:
        resp.raise_for_status()
        metadata = await resp.json()
    (tensor_in,), (tensor_out,) = metadata["inputs"], metadata["outputs"]
    return Family(
        name=name,
        variants=tuple(entry["variants"]),
        accuracy=accuracy,
        input_name=tensor_in["name"],
        input_width=int(tensor_in["shape"][-1]),
        output_name=tensor_out["name"],
    )


def count_workers(controller: str, variants: Sequence[str]) -> int | None:
    """Ready workers hosting any of ``variants``; None when the controller does not answer."""
    try:
        status = fetch_status(controller)
    except StatusUnavailable:
        return None
    return sum(1 for w in status.workers if w.state == "ready" and set(w.variants) & set(variants))


async def send_one(http: aiohttp.ClientSession, job: Job, family: Family) -> Outcome:
    body, headers = binary_request(job, family) if job.binary else json_request(job, family)
    started = time.perf_counter()
    try:
        async with http.post(f"/v2/models/{job.model}/infer", data=body, headers=headers) as resp:
            payload = await resp.read()
            status, header_length = resp.status, resp.headers.get(HEADER_LENGTH)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(model=job.model, binary=job.binary, label=job.label, status=0,
                       latency_s=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    latency_s = time.perf_counter() - started
    return outcome_of_response(job, status, payload, header_length, latency_s, family.output_name)


async def send_all(http: aiohttp.ClientSession, jobs: Sequence[Job], family: Family, concurrency: int) -> list[Outcome]:
    """Send every job, ``concurrency`` at a time; outcomes come back in job order."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    pending = iter(enumerate(jobs))

    async def pump() -> None:
        for i, job in pending:  # one shared iterator: each job is taken by exactly one pump
            outcomes[i] = await send_one(http, job, family)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(jobs))):
            group.create_task(pump())
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def load_heldout(repository: Path) -> tuple[np.ndarray, np.ndarray]:
    path = repository / HELDOUT
    try:
        with np.load(path) as data:
            return np.asarray(data["images"], dtype=np.float32), np.asarray(data["labels"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise DemoError(f"cannot read the held-out digits at {path}: {exc}") from None


def make_jobs(model: str, order: np.ndarray, images: np.ndarray, labels: np.ndarray, count: int,
              prefix: str) -> list[Job]:
    return [
        Job(request_id=f"{prefix}-{n}", model=model, binary=n % BINARY_EVERY == BINARY_EVERY - 1,
            image=images[order[n % len(order)]], label=int(labels[order[n % len(order)]]))
        for n in range(count)
    ]


async def run_session(mesh: LocalMesh, images: np.ndarray, labels: np.ndarray, *,
                      requests: int, concurrency: int, per_variant: int) -> int:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(mesh.http_url, timeout=timeout, connector=connector) as http:
        family = await discover_family(http, DIGITS_FAMILY)
        workers = await asyncio.to_thread(count_workers, mesh.controller_address, family.variants)
        on = "an unknown number of" if workers is None else str(workers)
        print(f"mesh ready at {mesh.http_url}: {len(family.variants)} digit variants on {on} workers", flush=True)
        for name in family.variants:
            print(f"  {name:<16} manifest accuracy {family.accuracy.get(name, float('nan')):.3f}", flush=True)

        order = np.random.default_rng(SAMPLE_SEED).permutation(len(labels))
        jobs = make_jobs(family.name, order, images, labels, requests, "family")
        print(f"sending {requests} held-out digits to {family.name!r} (the mesh picks the variant), "
              f"{concurrency} at a time, one in {BINARY_EVERY} as binary tensors ...", flush=True)
        started = time.perf_counter()
        family_outcomes = await send_all(http, jobs, family, concurrency)
        family_elapsed_s = time.perf_counter() - started

        print(f"sending the same {per_variant} digits to each variant ...", flush=True)
        variant_outcomes: list[Outcome] = []
        for name in family.variants:  # one variant at a time, so each is measured on its own
            jobs = make_jobs(name, order, images, labels, per_variant, name)
            variant_outcomes += await send_all(http, jobs, family, concurrency)

    print(format_report(family=family, family_outcomes=family_outcomes, variant_outcomes=variant_outcomes,
                        family_elapsed_s=family_elapsed_s), flush=True)
    return exit_code([*family_outcomes, *variant_outcomes])


def run_demo(repository: Path, state_dir: Path, *, requests: int = 300, concurrency: int = 8,
             per_variant: int = 50, config_path: Path | None = None) -> int:
    """Start a mesh, send held-out digits through its HTTP front door, print a report, stop it.

    ``config_path``: a TOML file every role reads (as ``letmesh up --config``); the demo's own
    ports and state directory win over it.

    Returns 0 when every request was answered with HTTP 200, else 1.
    """
    if requests < 1 or concurrency < 1 or per_variant < 0:
        raise ValueError("requests and concurrency must be at least 1, per_variant at least 0")
    repository, state_dir = Path(repository), Path(state_dir)
    try:
        images, labels = load_heldout(repository)
    except DemoError as exc:
        print(f"letmesh demo: {exc}", file=sys.stderr)
        return 1
    mesh = LocalMesh(repository=repository, state_dir=state_dir, config_path=config_path)
    print("starting the mesh (controller, gateway, agent) ...", flush=True)
    try:
        mesh.start(timeout_s=READY_TIMEOUT_S)
        return asyncio.run(run_session(mesh, images, labels, requests=requests, concurrency=concurrency,
                                       per_variant=per_variant))
    except (LaunchError, DemoError, aiohttp.ClientError) as exc:
        print(f"letmesh demo: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the mesh ...", flush=True)
        mesh.stop()
