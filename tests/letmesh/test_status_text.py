"""What ``letmesh status`` prints for a controller's reply."""

from __future__ import annotations

from letmesh.status import format_status
from protocol.message import StatusReply
from protocol.types import ModelStatus


def test_the_table_version_is_counted_within_the_epoch_and_an_unavailable_model_says_why() -> None:
    reply = StatusReply(
        controller_epoch=3, routing_version=(3 << 32) + 7, gateways=(), agents=(), workers=(),
        models=(ModelStatus(name="fast", family="f", accuracy=0.9, state="READY", workers=("w1",)),
                ModelStatus(name="wide", family="f", accuracy=0.95, state="UNAVAILABLE", workers=(),
                            reason="not placed: the current plan runs it on no worker")),
        unavailable={"broken": "sha256 of model.pt is 9f..., manifest says 00..."},
    )
    text = format_status(reply)
    assert text.startswith("controller epoch 3, routing table v7, gateways: none")
    lines = text.splitlines()
    assert any(line.split()[:1] == ["fast"] and line.rstrip().endswith("READY       w1") for line in lines)
    assert any(line.split()[:1] == ["wide"] and line.rstrip().endswith(
        "UNAVAILABLE not placed: the current plan runs it on no worker") for line in lines)
    (broken,) = [line for line in lines if line.split()[:1] == ["broken"]]
    (wide,) = [line for line in lines if line.split()[:1] == ["wide"]]
    assert broken.endswith("UNAVAILABLE set aside: sha256 of model.pt is 9f..., manifest says 00...")
    # in the same columns as the other models
    assert broken.index("accuracy") == wide.index("accuracy") and broken.index("UNAVAILABLE") == wide.index("UNAVAILABLE")
