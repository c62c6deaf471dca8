"""Fetching artifacts by sha256 into the disk cache, from a real controller or a real ROUTER at the edge."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import zmq
import zmq.asyncio
from torch import nn

from agents.artifact import fetch_artifact, fetch_with_retries, report_load_failure
from agents.error import ArtifactError, FetchInterrupted
from letmesh.zoo import build_trivial, quiet_jit
from mesh.transport import Endpoint, EndpointClosed
from protocol.codec import ARTIFACT_CHUNK_BYTES, decode, encode
from protocol.message import ArtifactChunkReply, ErrorReply, FetchArtifact, Heartbeat, VariantLoadFailed

BOUND_S = 5.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's identity variant plus "wide", whose artifact spans several chunks."""
    root = tmp_path_factory.mktemp("repo")
    manifest = build_trivial(root)
    buffer = io.BytesIO()
    with quiet_jit():
        torch.jit.save(torch.jit.script(nn.Linear(384, 384).eval()), buffer)
    blob = buffer.getvalue()
    assert len(blob) > ARTIFACT_CHUNK_BYTES
    (root / "wide").mkdir()
    (root / "wide" / "model.pt").write_bytes(blob)
    (root / "wide" / "manifest.json").write_text(json.dumps({
        **manifest, "variant": "wide", "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob),
    }))
    return root


def artifact(repo: Path, name: str) -> tuple[str, bytes]:
    data = (repo / name / "model.pt").read_bytes()
    return hashlib.sha256(data).hexdigest(), data


class FakeController:
    """A real ROUTER at the edge that answers each request with what ``answer`` returns, and records it."""

    def __init__(self, ctx: zmq.asyncio.Context, answer: Callable[[Any], list[Any]]) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:0")
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self._answer = answer
        self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            peer, *frames = await self.sock.recv_multipart()
            msg, _ = decode(frames)
            self.received.put_nowait(msg)
            for reply in self._answer(msg):
                await self.sock.send_multipart([peer, *encode(reply)])

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close(linger=0)


@pytest.fixture
async def fake_controller(ctx: zmq.asyncio.Context) -> AsyncIterator[Callable[..., FakeController]]:
    made: list[FakeController] = []

    def make(answer: Callable[[Any], list[Any]]) -> FakeController:
        made.append(FakeController(ctx, answer))
        return made[-1]

    yield make
    for fake in made:
        await fake.close()


class Link:
    """The worker's side: a control DEALER and the receive loop that feeds replies to fetch_artifact."""

    def __init__(self, ctx: zmq.asyncio.Context, address: str) -> None:
        self.endpoint = Endpoint.dealer(ctx, address, "worker:test.w0")
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        while True:
            try:
                incoming = await self.endpoint.recv()
            except EndpointClosed:
                return
            self.replies.put_nowait(incoming.msg)

    async def fetch(self, cache: Path, sha: str, timeout_s: float = BOUND_S) -> Path:
        return await asyncio.wait_for(
            fetch_artifact(self.endpoint, self.replies, cache, sha, timeout_s=timeout_s), BOUND_S * 2
        )

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.endpoint.close()


@pytest.fixture
async def link(ctx: zmq.asyncio.Context) -> AsyncIterator[Callable[[str], Link]]:
    made: list[Link] = []

    def connect(address: str) -> Link:
        made.append(Link(ctx, address))
        return made[-1]

    yield connect
    for each in made:
        await each.close()


def chunk_of(data: bytes, request: FetchArtifact) -> ArtifactChunkReply:
    part = data[request.offset:request.offset + min(request.length, ARTIFACT_CHUNK_BYTES)]
    return ArtifactChunkReply(sha256=request.sha256, offset=request.offset, total_size=len(data), data=part)


@pytest.mark.parametrize("name", ["identity", "wide"])
async def test_download_lands_in_the_cache_verified(controller, link, repo, tmp_path, name: str) -> None:
    sha, data = artifact(repo, name)
    cache = tmp_path / "cache"

    path = await link(controller.address).fetch(cache, sha)

    assert path == cache / sha
    assert path.read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [sha]  # no .part left behind


async def test_cache_hit_does_not_contact_the_controller(fake_controller, link, repo, tmp_path) -> None:
    sha, data = artifact(repo, "identity")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / sha).write_bytes(data)
    fake = fake_controller(lambda msg: [])
    worker = link(fake.address)

    path = await worker.fetch(cache, sha)
    await worker.endpoint.send(Heartbeat(sender="test", role="worker", seq=1))

    assert path == cache / sha
    first = await asyncio.wait_for(fake.received.get(), BOUND_S)
    assert isinstance(first, Heartbeat), f"the controller was asked {first}"


async def test_corrupted_cache_entry_is_downloaded_again(controller, link, repo, tmp_path) -> None:
    sha, data = artifact(repo, "wide")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / sha).write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))

    path = await link(controller.address).fetch(cache, sha)

    assert path.read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [sha]


async def test_wrong_bytes_fail_and_leave_nothing_in_the_cache(fake_controller, link, repo, tmp_path) -> None:
    sha, data = artifact(repo, "wide")
    tampered = bytes(b ^ 0x01 for b in data[:64]) + data[64:]
    fake = fake_controller(lambda msg: [chunk_of(tampered, msg)])
    cache = tmp_path / "cache"

    with pytest.raises(ArtifactError, match="hash"):
        await link(fake.address).fetch(cache, sha)

    assert list(cache.iterdir()) == []


async def test_unknown_artifact_fails_and_leaves_nothing(controller, link, tmp_path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError, match="abababababab"):
        await link(controller.address).fetch(cache, "ab" * 32)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("name", ["/../../escaped", "../" * 3 + "x" * 55, "AB" * 32, ""])
async def test_an_artifact_name_that_is_not_a_digest_is_refused_before_any_file_is_made(controller, link, tmp_path,
                                                                                        name) -> None:
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ArtifactError, match="not a sha256 digest"):
        await link(controller.address).fetch(cache, name)
    assert not (tmp_path / "deep").exists() and not (tmp_path / "escaped").exists()


async def test_silent_controller_fails_within_the_timeout(fake_controller, link, repo, tmp_path) -> None:
    sha, _ = artifact(repo, "identity")
    fake = fake_controller(lambda msg: [])
    cache = tmp_path / "cache"

    with pytest.raises(ArtifactError, match="did not answer"):
        await link(fake.address).fetch(cache, sha, timeout_s=0.2)

    assert list(cache.iterdir()) == []


async def test_empty_chunk_before_the_end_fails(fake_controller, link, repo, tmp_path) -> None:
    sha, data = artifact(repo, "identity")
    fake = fake_controller(
        lambda msg: [ArtifactChunkReply(sha256=sha, offset=msg.offset, total_size=len(data), data=b"")]
    )
    cache = tmp_path / "cache"

    with pytest.raises(ArtifactError, match="empty chunk"):
        await link(fake.address).fetch(cache, sha)

    assert list(cache.iterdir()) == []


async def test_stale_replies_are_skipped(fake_controller, link, repo, tmp_path) -> None:
    sha, data = artifact(repo, "wide")

    def answer(msg: FetchArtifact) -> list[Any]:
        stale = ArtifactChunkReply(sha256="cd" * 32, offset=0, total_size=3, data=b"old")
        late = ArtifactChunkReply(sha256=sha, offset=msg.offset + 1, total_size=len(data), data=b"x")
        return [stale, late, chunk_of(data, msg)]

    fake = fake_controller(answer)
    cache = tmp_path / "cache"

    path = await link(fake.address).fetch(cache, sha)

    assert path.read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [sha]


async def test_error_reply_fails_the_download(fake_controller, link, repo, tmp_path) -> None:
    sha, _ = artifact(repo, "identity")
    fake = fake_controller(lambda msg: [ErrorReply(code="busy", message="try later", retryable=True)])
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError, match="try later"):
        await link(fake.address).fetch(cache, sha)
    assert list(cache.iterdir()) == []


async def test_a_variant_that_cannot_load_is_reported_to_the_controller_with_its_reason(fake_controller,
                                                                                       link) -> None:
    fake = fake_controller(lambda msg: [])
    worker = link(fake.address)
    await report_load_failure(worker.endpoint, "test.w0", "digits-cnn",
                              RuntimeError("PytorchStreamReader failed reading zip archive" + "!" * 1000))
    msg = await asyncio.wait_for(fake.received.get(), BOUND_S)
    assert isinstance(msg, VariantLoadFailed)
    assert (msg.worker_id, msg.variant) == ("test.w0", "digits-cnn")
    assert msg.reason.startswith("RuntimeError: PytorchStreamReader failed") and len(msg.reason) == 512


async def test_a_link_or_host_fault_is_an_interruption_and_a_bad_artifact_is_not(fake_controller, link, repo,
                                                                                  tmp_path) -> None:
    """The worker sets a variant aside mesh-wide only for what is wrong with the artifact; a
    silent or busy controller, or this host's disk, interrupts the fetch and is tried again."""
    sha, data = artifact(repo, "identity")
    silent = link(fake_controller(lambda msg: []).address)
    with pytest.raises(FetchInterrupted):
        await silent.fetch(tmp_path / "a", sha, timeout_s=0.2)
    busy = link(fake_controller(lambda msg: [ErrorReply(code="busy", message="later", retryable=True)]).address)
    with pytest.raises(FetchInterrupted, match="later"):
        await busy.fetch(tmp_path / "b", sha)
    served = link(fake_controller(lambda msg: [chunk_of(data, msg)]).address)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "cache").write_text("a file where the cache folder should be")
    with pytest.raises(FetchInterrupted):
        await served.fetch(tmp_path / "ro" / "cache" / "x", sha)
    for bad, answer in (("unknown", lambda msg: [ErrorReply(code="not_found", message="no such artifact")]),
                        ("wrong", lambda msg: [ArtifactChunkReply(sha256=sha, offset=0, total_size=3, data=b"abc")])):
        with pytest.raises(ArtifactError) as failed:
            await link(fake_controller(answer).address).fetch(tmp_path / bad, sha)
        assert not isinstance(failed.value, FetchInterrupted), bad


async def test_an_interrupted_fetch_is_tried_again_and_gives_up_after_its_attempts(fake_controller, link, repo,
                                                                                 tmp_path) -> None:
    sha, data = artifact(repo, "identity")
    asked: list[int] = []

    def answers_the_second_time(msg: FetchArtifact) -> list[Any]:
        asked.append(msg.offset)
        return [chunk_of(data, msg)] if len(asked) > 1 else []

    flaky = link(fake_controller(answers_the_second_time).address)
    path = await asyncio.wait_for(fetch_with_retries(flaky.endpoint, flaky.replies, tmp_path / "a", sha,
                                                     timeout_s=0.3, backoff_s=0.05), BOUND_S)
    assert path.read_bytes() == data and len(asked) >= 2

    calls: list[int] = []
    silent = link(fake_controller(lambda msg: calls.append(msg.offset) or []).address)
    with pytest.raises(FetchInterrupted):
        await asyncio.wait_for(fetch_with_retries(silent.endpoint, silent.replies, tmp_path / "b", sha,
                                                  timeout_s=0.2, attempts=3, backoff_s=0.05), BOUND_S)
    assert len(calls) == 3
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []
