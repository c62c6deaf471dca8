"""Bad input for the chaos benchmark: poisoned control messages, poisoned HTTP bodies, and fuzzing.

Everything here is sent the way a peer or a client would: HTTP to the gateway, ZeroMQ frames to the
controller's ROUTER from a DEALER that names itself like a gateway or an agent. Nothing here looks
inside a process; the caller watches the processes. A composition root: may import everything.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import zmq

from mesh.keys import ClientKeys, add_peer, client_keys
from protocol.codec import PROTOCOL_VERSION, encode
from protocol.message import (
    DecisionRecords,
    DemandReport,
    FetchArtifact,
    GetProfiles,
    GetStatus,
    Heartbeat,
    ProfileProgress,
)
from protocol.types import CandidateInfo, DecisionRecord

# --- one-shot HTTP ---------------------------------------------------------------------------


def post(url: str, body: bytes, timeout_s: float = 10.0) -> tuple[int, dict[str, Any]]:
    """(status, JSON body or {}) of one POST; status 0 when no HTTP answer came."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = {}
    return status, parsed if isinstance(parsed, dict) else {}


def deep_context(depth: int) -> dict[str, Any]:
    context: dict[str, Any] = {"app": "chaos"}
    for _ in range(depth):
        context = {"letmesh_context": context}
    return context


def poison_contexts() -> dict[str, dict[str, Any]]:
    """letmesh_context values a client could send: integers no 64-bit field holds, deep nesting."""
    return {
        "huge_int": {"app": "chaos", "n": 2**80},
        "huge_negative_int": {"app": "chaos", "n": -(2**70)},
        "deep_nesting": deep_context(200),
    }


def poison_http(base_url: str, family: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Each poisoned family request, then feedback for its event: what each got back."""
    sent = []
    for label, context in poison_contexts().items():
        poisoned = {**body, "parameters": {**body.get("parameters", {}), "letmesh_context": context}}
        status, reply = post(f"{base_url}/v2/models/{family}/infer", json.dumps(poisoned).encode())
        event_id = reply.get("parameters", {}).get("letmesh_event_id") if status == 200 else None
        feedback = 0
        if isinstance(event_id, str):
            feedback, _ = post(f"{base_url}/v1/feedback", json.dumps({"event_id": event_id, "reward": 1.0}).encode())
        sent.append({"label": label, "infer_status": status, "feedback_status": feedback})
    return sent


# --- control frames ----------------------------------------------------------------------------


def peer_keys(keys_dir: Path, identity: str) -> ClientKeys:
    """A key of the mesh's keyring for ``identity`` (issued on first use, as ``letmesh keys add``
    would): the poisoned messages then come from a peer the mesh let in, which is the case that
    tests validation; a peer without a key does not get past the handshake."""
    kind, _, name = identity.partition(":")
    role, key_name = {"gateway": ("gateway", name), "agent": ("agent", name),
                      "worker": ("agent", name.split(".")[0]), "cli": ("operator", name)}[kind]
    if not (keys_dir / "hosts" / f"{role}-{key_name}").exists():
        add_peer(keys_dir, role, key_name)
    return client_keys(keys_dir, role, key_name)


class ControlPeer:
    """A DEALER on the controller's ROUTER under a chosen identity; synchronous, one thread.

    ``server_key``: another ROUTER's public key (a gateway's data socket) instead of the controller's."""

    def __init__(self, address: str, identity: str, keys_dir: Path | None = None, *,
                 server_key: bytes | None = None) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 2000)  # let queued frames leave before close
        self._sock.setsockopt(zmq.SNDTIMEO, 2000)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.IDENTITY, identity.encode())
        if keys_dir is not None:
            keys = peer_keys(keys_dir, identity)
            self._sock.curve_publickey = keys.public_key
            self._sock.curve_secretkey = keys.secret_key
            self._sock.curve_serverkey = server_key or keys.server_key
        self._sock.connect(address)
        self.sent = 0
        self.refused = 0
        self.replies = 0

    def send(self, frames: Sequence[bytes | memoryview]) -> None:
        try:
            self._sock.send_multipart(list(frames))
            self.sent += 1
        except zmq.Again:
            self.refused += 1
        self.drain()

    def drain(self) -> None:
        while self._sock.poll(0):
            self._sock.recv_multipart()
            self.replies += 1

    def close(self) -> None:
        self.drain()
        self._sock.close()
        self._ctx.term()


def nan_records(family: str, variant: str, count: int = 4) -> DecisionRecords:
    candidate = CandidateInfo(variant=variant, accuracy=0.9, predicted_latency_ms=1.0, p_deadline=1.0, energy_j=0.01)
    return DecisionRecords(records=tuple(
        DecisionRecord(event_id=f"chaos-nan-{i}-{time.monotonic_ns()}", family=family, context={"app": "chaos"},
                       budget_ms=math.nan, load=0.0, candidates=(candidate,), chosen=0, probability=1.0,
                       reward=1.0, source="feedback")
        for i in range(count)))


def invented_demand(names: int = 4096) -> DemandReport:
    return DemandReport(gateway_id="chaos", window_s=0.5, counts={f"invented-{i}": 1 for i in range(names)},
                        missed={})


def send_control(address: str, identity: str, messages: Sequence[object],
                 keys_dir: Path | None = None) -> dict[str, int]:
    peer = ControlPeer(address, identity, keys_dir)
    try:
        for msg in messages:
            peer.send(encode(msg))
        time.sleep(0.2)  # a reply, if any, has time to arrive before the count
        peer.drain()
        return {"sent": peer.sent, "refused": peer.refused, "replies": peer.replies}
    finally:
        peer.close()


# --- fuzzing -----------------------------------------------------------------------------------

NASTY_VALUES: tuple[Any, ...] = (
    2**80, -(2**70), 2**63, -1, 0, 1.5, "", "x" * 10_000, None, True, [], {}, [[[[[[]]]]]],
    {"a": {"b": {"c": {}}}}, [2**40, 2**40], [-1, 16], "\u0000\ud7ff\uffff", "FP64", "BYTES",
)
# msgpack holds integers in [-2**63, 2**64): the extremes it can carry.
MSGPACK_NASTIES: tuple[Any, ...] = tuple(v for v in NASTY_VALUES if not isinstance(v, int) or v in (-1, 0, True)) + (
    2**64 - 1, -(2**63), float("nan"), float("inf"), b"\x00" * 64, [{}] * 100)
RAW_NASTIES = (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"[" * 5000, b"{" * 5000, b"\xff\xfe", b"\"\\ud800\"")


def _mutate_json(obj: Any, rng: random.Random) -> Any:
    """``obj`` with one value somewhere (a dict value or list item) replaced by a nasty one."""
    if isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        if rng.random() < 0.5 and isinstance(obj[key], (dict, list)):
            return {**obj, key: _mutate_json(obj[key], rng)}
        if rng.random() < 0.1:
            return {k: v for k, v in obj.items() if k != key}
        return {**obj, key: rng.choice(NASTY_VALUES)}
    if isinstance(obj, list) and obj:
        i = rng.randrange(len(obj))
        copy = list(obj)
        copy[i] = _mutate_json(obj[i], rng) if rng.random() < 0.5 else rng.choice(NASTY_VALUES)
        return copy
    return rng.choice(NASTY_VALUES)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a byte
            buf[min(i, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert random bytes
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 2:  # delete a span
            del buf[i:i + rng.randint(1, 16)]
        elif op == 3:  # truncate
            del buf[i:]
        elif op == 4:  # splice a raw nasty token in
            buf[i:i] = rng.choice(RAW_NASTIES)
        else:  # duplicate a span
            buf[i:i] = buf[i:i + rng.randint(1, 32)]
    return bytes(buf)


def mutated_body(seed: dict[str, Any], rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return json.dumps(_mutate_json(seed, rng)).encode()
    return mutate_bytes(json.dumps(seed).encode(), rng)


async def fuzz_http(base_url: str, infer_seeds: dict[str, dict[str, Any]], feedback_seed: dict[str, Any], *,
                    bodies: int, concurrency: int = 16, seed: int = 7) -> dict[str, Any]:
    """``bodies`` mutated POSTs, one in five to /v1/feedback, the rest to /v2/models/*/infer."""
    rng = random.Random(seed)
    paths = [f"/v2/models/{name}/infer" for name in infer_seeds] + ["/v2/models/no-such-model/infer"]
    statuses: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []  # the first few bodies answered 500 or not at all, to reproduce
    next_i = 0
    t0 = time.monotonic()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while next_i < bodies:
            next_i += 1
            if rng.random() < 0.2:
                path, body = "/v1/feedback", mutated_body(feedback_seed, rng)
            else:
                path = rng.choice(paths)
                name = path.split("/")[3]
                body = mutated_body(infer_seeds.get(name, next(iter(infer_seeds.values()))), rng)
            content_type = rng.choice(("application/json", "application/json", "application/octet-stream", "text/plain"))
            try:
                async with session.post(base_url + path, data=body, headers={"Content-Type": content_type}) as resp:
                    answer = await resp.read()
                    outcome = str(resp.status)
            except TimeoutError:
                outcome, answer = "timeout", b""
            except aiohttp.ClientError as exc:
                outcome, answer = type(exc).__name__, b""
            statuses[outcome] += 1
            if (not outcome.isdigit() or outcome == "500") and len(samples) < 5:
                samples.append({"path": path, "content_type": content_type, "outcome": outcome,
                                "body": (body if len(body) <= 2048 else body[:1024] + b"..." + body[-1024:])
                                .decode("utf-8", "backslashreplace"),
                                "body_bytes": len(body), "answer": answer[:200].decode("utf-8", "replace")})

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    elapsed = time.monotonic() - t0
    server_errors = sum(n for k, n in statuses.items() if k.isdigit() and int(k) >= 500)
    return {"bodies": sum(statuses.values()), "elapsed_s": elapsed, "statuses": dict(sorted(statuses.items())),
            "http_5xx": server_errors, "http_500": statuses.get("500", 0),
            "no_answer": sum(n for k, n in statuses.items() if not k.isdigit()), "samples": samples}


def control_seeds(family: str, variant: str) -> list[list[bytes]]:
    """Valid frames of the messages a gateway or an agent sends the controller; the mutation starts here."""
    messages = [
        Heartbeat(sender="fuzz", role="gateway", seq=1),
        DemandReport(gateway_id="fuzz", window_s=0.5, counts={variant: 3}, missed={variant: 1}),
        nan_records(family, variant, 1),
        GetStatus(),
        GetProfiles(rerun=False),
        FetchArtifact(sha256="0" * 64, offset=0, length=1024),
        ProfileProgress(request_id=1, agent_id="fuzz", device_kind="cpu", completed=1, total=2),
    ]
    return [[bytes(f) for f in encode(m)] for m in messages]


def _random_envelope(rng: random.Random, tags: Sequence[int]) -> bytes:
    body = {rng.choice(("gateway_id", "counts", "records", "window_s", "seq", "x")): rng.choice(MSGPACK_NASTIES)
            for _ in range(rng.randint(0, 4))}
    envelope = [rng.choice((PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2**33, -1)), rng.choice(tags), body]
    return msgpack.packb(envelope, use_bin_type=True)


def fuzz_control(address: str, family: str, variant: str, *, frames: int, seed: int = 11,
                 keys_dir: Path | None = None) -> dict[str, int]:
    """``frames`` mutated or made-up control messages from peers claiming to be a gateway, an agent,
    a worker and an operator (never the names of the mesh's own peers). Another socket holds each
    name first and stays connected: the frames come on second connections under live identities,
    which the controller must read (and free) like any other."""
    rng = random.Random(seed)
    seeds = control_seeds(family, variant)
    tags = list(range(0, 60)) + [100, 101, 102, 999]
    names = ("gateway:fuzz", "agent:fuzz", "worker:fuzz.w0", "cli:fuzz")
    holders = [ControlPeer(address, name, keys_dir) for name in names]
    for holder in holders:
        holder.send([rng.randbytes(8)])
    time.sleep(0.2)  # each name held before its second connection dials
    peers = [ControlPeer(address, name, keys_dir) for name in names]
    try:
        for i in range(frames):
            roll = rng.random()
            if roll < 0.6:
                frames_out = list(rng.choice(seeds))
                frames_out[0] = mutate_bytes(frames_out[0], rng)
            elif roll < 0.9:
                frames_out = [_random_envelope(rng, tags)]
            else:
                frames_out = [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 3))]
            peers[i % len(peers)].send(frames_out)
            if i % 200 == 199:
                time.sleep(0.01)  # paced, so the count measures the decoder, not a queue's depth
        time.sleep(0.3)
        return {"frames": sum(p.sent for p in peers), "refused": sum(p.refused for p in peers),
                "replies": sum(p.replies for p in peers)}
    finally:
        for p in (*peers, *holders):
            p.close()
