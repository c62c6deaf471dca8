"""Fixtures for controller tests: a small real repository, ZeroMQ peers, controllers on free ports."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import zmq
import zmq.asyncio
from torch import nn

from controller.config import ControllerConfig
from controller.controller_actor import ControllerActor
from letmesh.zoo import build_trivial, quiet_jit
from mesh.clock import FakeClock
from protocol.codec import ARTIFACT_CHUNK_BYTES, decode, encode
from protocol.message import ErrorReply, GetStatus, StatusReply

BOUND_S = 5.0


class Scale(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k


def add_variant(root: Path, name: str, module: nn.Module, width: int, family: str = "") -> None:
    """Script ``module`` into ``root/name`` with a manifest modelled on the zoo's identity variant
    (in its family unless ``family`` names another: a family's variants share their tensors)."""
    buffer = io.BytesIO()
    with quiet_jit():
        torch.jit.save(torch.jit.script(module.eval()), buffer)
    blob = buffer.getvalue()
    template = json.loads((root / "identity" / "manifest.json").read_text())
    folder = root / name
    folder.mkdir()
    (folder / "model.pt").write_bytes(blob)
    tensor = {"datatype": "FP32", "shape": [-1, width]}
    manifest = {
        **template,
        "variant": name,
        "family": family or template["family"],
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size_bytes": len(blob),
        "inputs": [{"name": "x", **tensor}],
        "outputs": [{"name": "y", **tensor}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five variants; "wide" is larger than one artifact chunk."""
    root = tmp_path_factory.mktemp("repo")
    build_trivial(root)
    torch.manual_seed(0)
    for name, k in (("double", 2.0), ("triple", 3.0), ("negate", -1.0)):
        add_variant(root, name, Scale(k), 16)
    add_variant(root, "wide", nn.Linear(384, 384), 384, family="wide")
    assert (root / "wide" / "model.pt").stat().st_size > ARTIFACT_CHUNK_BYTES
    return root


class Peer:
    """An agent, gateway, worker or operator at the edge: a DEALER with a routing identity.

    Messages that arrive while a test waits for another kind are kept, in order, for later
    ``expect`` calls; an unexpected ErrorReply fails the wait at once.
    """

    def __init__(self, ctx: zmq.asyncio.Context, address: str, identity: bytes) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.connect(address)
        self.pending: list[Any] = []
        self.buffers: dict[int, list[bytes]] = {}  # raw frames that came with a message, by id(msg)

    async def send(self, msg: Any) -> None:
        await self.sock.send_multipart(encode(msg))

    async def expect(self, kind: type, where: Callable[[Any], bool] = lambda m: True) -> Any:
        for i, msg in enumerate(self.pending):
            if isinstance(msg, kind) and where(msg):
                return self.pending.pop(i)

        async def wait() -> Any:
            while True:
                msg, buffers = decode(await self.sock.recv_multipart())
                self.buffers[id(msg)] = [bytes(b) for b in buffers]
                if isinstance(msg, kind) and where(msg):
                    return msg
                if isinstance(msg, ErrorReply):
                    raise AssertionError(f"controller answered {msg} while {kind.__name__} was expected")
                self.pending.append(msg)

        return await asyncio.wait_for(wait(), BOUND_S)

    async def sync(self) -> StatusReply:
        """Ask for status: every reply to what this peer sent before is then in ``pending``."""
        await self.send(GetStatus())
        return await self.expect(StatusReply)

    def take(self, kind: type) -> list[Any]:
        taken = [m for m in self.pending if isinstance(m, kind)]
        self.pending = [m for m in self.pending if not isinstance(m, kind)]
        return taken

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
async def peer(ctx: zmq.asyncio.Context) -> AsyncIterator[Callable[[str, bytes], Peer]]:
    made: list[Peer] = []

    def connect(address: str, identity: bytes) -> Peer:
        p = Peer(ctx, address, identity)
        made.append(p)
        return p

    yield connect
    for p in made:
        p.close()


StartController = Callable[..., Awaitable[ControllerActor]]


@pytest.fixture
async def start_controller(ctx: zmq.asyncio.Context, tmp_path: Path, repo: Path) -> AsyncIterator[StartController]:
    started: list[ControllerActor] = []

    async def start(*, state_dir: Path | None = None, repository: Path | None = None,
                    clock: FakeClock | None = None, **config: Any) -> ControllerActor:
        cfg = ControllerConfig(
            bind="tcp://127.0.0.1:0",
            repository=str(repository or repo),
            state_dir=str(state_dir or tmp_path / "state"),
            **{"heartbeat_interval_s": 1.0, **config},
        )
        actor = ControllerActor(cfg, ctx=ctx, clock=clock)
        await asyncio.wait_for(actor.start(), BOUND_S)
        started.append(actor)
        return actor

    yield start
    for actor in started:
        await asyncio.wait_for(actor.stop(), BOUND_S)
    assert [a.failure for a in started] == [None] * len(started)
