"""The codec: every message round-trips, tensors arrive as zero-copy views, bad frames are refused
with the error named by their condition."""

from __future__ import annotations

import dataclasses
import enum
import pathlib
import subprocess
import sys
import types
import typing
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol.message
from protocol.codec import (
    PROTOCOL_VERSION,
    Limits,
    datatype_of,
    decode,
    decode_all,
    encode,
    encode_bundle,
    tensor_meta,
    tensors_from_frames,
)
from protocol.error import FrameTooLarge, MalformedFrame, ProtocolError, UnknownMessage, VersionMismatch
from protocol.message import ArtifactChunkReply, Heartbeat, InferReply, InferRequest, WorkerReady
from protocol.schema import message, registered_tags
from protocol.types import DATATYPES, ReplyStatus, TensorMeta

# --- strategies built from the dataclasses' own type hints -----------------------------------

# msgpack carries integers in [-2**63, 2**64).
WIRE_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
# NaN is legal on the wire but never equal to itself, which would hide real round-trip bugs.
WIRE_FLOATS = st.floats(allow_nan=False)
WIRE_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)

_SCALAR_VALUES: dict[Any, st.SearchStrategy] = {
    int: WIRE_INTS,
    float: WIRE_FLOATS,
    str: WIRE_TEXT,
    bool: st.booleans(),
    bytes: st.binary(max_size=64),
}


def values_for(hint: Any) -> st.SearchStrategy:
    """Values a field annotated ``hint`` may legally hold, as the schema understands hints."""
    supertype = getattr(hint, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return values_for(supertype)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(values_for(args[0]), max_size=3).map(tuple)
        return st.tuples(*(values_for(a) for a in args))
    if origin is dict:
        return st.dictionaries(values_for(args[0]), values_for(args[1]), max_size=3)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else values_for(a) for a in args))
    if dataclasses.is_dataclass(hint):
        return struct_values(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(list(hint))
    return _SCALAR_VALUES[hint]


def struct_values(cls: type) -> st.SearchStrategy:
    """Instances of a wire struct or message with every field drawn from its type hint."""
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: values_for(hints[f.name]) for f in dataclasses.fields(cls)})


TAGS = sorted(registered_tags())


def wire(frames: list) -> list[bytes]:
    """What a peer receives: every frame as its own bytes object."""
    return [bytes(f) for f in frames]


def header(*envelope: Any) -> bytes:
    return msgpack.packb(list(envelope), use_bin_type=True)


# --- registry --------------------------------------------------------------------------------


def test_every_message_in_the_message_module_is_registered_under_its_own_tag() -> None:
    declared = [
        obj for obj in vars(protocol.message).values()
        if isinstance(obj, type) and obj.__module__ == protocol.message.__name__
    ]
    assert declared, "protocol.message declares no messages"
    assert all(hasattr(cls, "TAG") for cls in declared)
    assert len({cls.TAG for cls in declared}) == len(declared)
    assert registered_tags() == {cls.TAG: cls for cls in declared}


def test_a_tag_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="already used"):

        @message(Heartbeat.TAG)
        class Duplicate:
            x: int

    assert registered_tags()[Heartbeat.TAG] is Heartbeat


def test_the_codec_alone_decodes_every_message_in_a_fresh_interpreter() -> None:
    frame = header(PROTOCOL_VERSION, Heartbeat.TAG, {"sender": "agent-1", "role": "agent"})
    program = f"import protocol; msg, _ = protocol.decode([{frame!r}]); print(type(msg).__name__)"
    project_root = pathlib.Path(protocol.message.__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=project_root
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Heartbeat"


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("tag", TAGS, ids=lambda t: registered_tags()[t].__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_message_type_round_trips(tag: int, data: st.DataObject) -> None:
    cls = registered_tags()[tag]
    msg = data.draw(struct_values(cls))

    decoded, buffers = decode(wire(encode(msg)))

    assert type(decoded) is cls
    assert decoded == msg  # tuples come back as tuples, nested structs as structs
    assert buffers == []


def test_an_int_on_the_wire_is_accepted_for_a_float_field_and_becomes_a_float() -> None:
    body = {"worker_id": "w", "agent_id": "a", "variants": ["v"], "pid": 3, "batch_latency_ms": {"v": [1, 2.5]}}
    decoded, _ = decode([header(PROTOCOL_VERSION, WorkerReady.TAG, body)])
    assert decoded.batch_latency_ms == {"v": (1.0, 2.5)}
    assert all(type(x) is float for x in decoded.batch_latency_ms["v"])


def test_a_field_from_a_newer_peer_is_ignored_and_a_missing_defaulted_field_takes_its_default() -> None:
    body = {"sender": "gw-1", "role": "gateway", "added_in_v9": [1, 2, 3]}
    decoded, _ = decode([header(PROTOCOL_VERSION, Heartbeat.TAG, body)])
    assert decoded == Heartbeat(sender="gw-1", role="gateway", seq=0)


def test_byte_strings_survive_as_bytes() -> None:
    chunk = ArtifactChunkReply(sha256="ab" * 32, offset=0, total_size=3, data=b"\x00\xff\x10")
    decoded, _ = decode(wire(encode(chunk)))
    assert decoded.data == b"\x00\xff\x10"
    assert type(decoded.data) is bytes


def test_encode_refuses_an_object_that_is_not_a_message() -> None:
    with pytest.raises(TypeError):
        encode(TensorMeta(name="x", datatype="FP32", shape=(1,)))


# --- tensors ---------------------------------------------------------------------------------

SHAPES = [(), (0,), (5,), (2, 3), (2, 0, 4), (1, 2, 3, 2)]


def sample(dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(size=shape) * 100).astype(dtype)


def request_with(arrays: list[np.ndarray]) -> InferRequest:
    metas = tuple(tensor_meta(f"input_{i}", a) for i, a in enumerate(arrays))
    return InferRequest(request_id=1, variant="resnet18-fp16", budget_us=50_000, inputs=metas)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_tensors_of_every_datatype_round_trip_as_views_of_their_frames(datatype: str) -> None:
    dtype = np.dtype(DATATYPES[datatype])
    arrays = [sample(dtype, shape, np.random.default_rng(7)) for shape in SHAPES]

    frames = wire(encode(request_with(arrays), arrays))
    decoded, buffers = decode(frames)
    out = tensors_from_frames(decoded.inputs, buffers)

    assert [m.datatype for m in decoded.inputs] == [datatype] * len(arrays)
    for sent, frame, got in zip(arrays, frames[1:], out):
        assert got.dtype == dtype
        assert got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)
        if got.size:
            assert not got.flags.owndata
            assert np.shares_memory(got, np.frombuffer(frame, dtype=np.uint8))


def test_tensors_decoded_from_zmq_frames_view_the_frame_memory() -> None:
    array = np.arange(24, dtype=np.float32).reshape(4, 6)
    frames = [zmq.Frame(bytes(f)) for f in encode(request_with([array]), [array])]

    decoded, buffers = decode(frames)
    (got,) = tensors_from_frames(decoded.inputs, buffers)

    np.testing.assert_array_equal(got, array)
    assert not got.flags.owndata
    assert np.shares_memory(got, np.frombuffer(frames[1].buffer, dtype=np.uint8))


def test_big_endian_and_strided_arrays_travel_as_little_endian_contiguous_values() -> None:
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    strided = np.arange(12, dtype=np.float64).reshape(3, 4).T
    frames = wire(encode(request_with([big, strided]), [big, strided]))

    decoded, buffers = decode(frames)
    got_big, got_strided = tensors_from_frames(decoded.inputs, buffers)

    assert [m.datatype for m in decoded.inputs] == ["INT32", "FP64"]
    assert got_big.dtype == np.dtype("<i4")
    np.testing.assert_array_equal(got_big, big)
    np.testing.assert_array_equal(got_strided, strided)
    assert frames[1] == np.arange(6, dtype="<i4").tobytes()


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_datatype_names_map_both_ways_for_either_byte_order(datatype: str) -> None:
    dtype = np.dtype(DATATYPES[datatype])
    assert datatype_of(dtype) == datatype
    assert datatype_of(dtype.newbyteorder(">")) == datatype


@pytest.mark.parametrize("dtype", [np.complex64, np.object_, np.dtype("U4"), np.dtype("M8[s]")])
def test_a_dtype_without_an_inference_protocol_datatype_is_refused(dtype: Any) -> None:
    with pytest.raises(TypeError):
        datatype_of(np.dtype(dtype))


# --- refused frames --------------------------------------------------------------------------

HEARTBEAT = {"sender": "agent-1", "role": "agent", "seq": 4}


def test_no_frames_at_all_is_malformed() -> None:
    with pytest.raises(MalformedFrame):
        decode([])


def test_another_protocol_version_is_a_version_mismatch() -> None:
    with pytest.raises(VersionMismatch):
        decode([header(PROTOCOL_VERSION + 1, Heartbeat.TAG, HEARTBEAT)])


def test_an_unregistered_tag_is_an_unknown_message() -> None:
    unused = max(registered_tags()) + 1000
    with pytest.raises(UnknownMessage):
        decode([header(PROTOCOL_VERSION, unused, HEARTBEAT)])


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({**HEARTBEAT, "sender": 5}, id="int-for-str"),
        pytest.param({**HEARTBEAT, "seq": "4"}, id="str-for-int"),
        pytest.param({**HEARTBEAT, "seq": 4.0}, id="float-for-int"),
        pytest.param({**HEARTBEAT, "seq": None}, id="nil-for-int"),
        pytest.param({**HEARTBEAT, "sender": b"agent-1"}, id="bin-for-str"),
        pytest.param({**HEARTBEAT, "seq": True}, id="bool-for-int"),
        pytest.param({"role": "agent"}, id="required-field-missing"),
        pytest.param(["agent-1", "agent", 4], id="body-not-a-map"),
    ],
)
def test_a_body_that_does_not_match_the_schema_is_malformed(body: Any) -> None:
    with pytest.raises(MalformedFrame):
        decode([header(PROTOCOL_VERSION, Heartbeat.TAG, body)])


@pytest.mark.parametrize(
    "tag, body",
    [
        pytest.param(protocol.message.ErrorReply.TAG, {"code": "x", "message": "y", "retryable": 1}, id="int-for-bool"),
        pytest.param(WorkerReady.TAG, {"worker_id": "w", "agent_id": "a", "variants": "v", "pid": 1,
                                       "batch_latency_ms": {}}, id="str-for-tuple"),
        pytest.param(WorkerReady.TAG, {"worker_id": "w", "agent_id": "a", "variants": [], "pid": 1,
                                       "batch_latency_ms": {"v": [1.0, "x"]}}, id="str-in-float-tuple"),
        pytest.param(WorkerReady.TAG, {"worker_id": "w", "agent_id": "a", "variants": [], "pid": 1,
                                       "batch_latency_ms": {b"v": [1.0]}}, id="bin-map-key-for-str"),
        pytest.param(InferRequest.TAG, {"request_id": 1, "variant": "v", "budget_us": 1,
                                        "inputs": [{"name": "x", "datatype": "FP32"}]}, id="nested-field-missing"),
        pytest.param(InferRequest.TAG, {"request_id": 1, "variant": "v", "budget_us": 1,
                                        "inputs": ["x"]}, id="nested-not-a-map"),
    ],
)
def test_nested_and_container_fields_are_checked_too(tag: int, body: Any) -> None:
    with pytest.raises(MalformedFrame):
        decode([header(PROTOCOL_VERSION, tag, body)])


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(header(PROTOCOL_VERSION, Heartbeat.TAG, HEARTBEAT)[:-3], id="truncated"),
        pytest.param(header(PROTOCOL_VERSION, Heartbeat.TAG, HEARTBEAT) + b"\x00", id="trailing-bytes"),
        pytest.param(msgpack.packb({"v": 1}), id="envelope-not-an-array"),
        pytest.param(header(PROTOCOL_VERSION, Heartbeat.TAG), id="envelope-too-short"),
        pytest.param(header(PROTOCOL_VERSION, Heartbeat.TAG, HEARTBEAT, 0), id="envelope-too-long"),
        pytest.param(header(True, Heartbeat.TAG, HEARTBEAT), id="bool-version"),
        pytest.param(header(PROTOCOL_VERSION, "2", HEARTBEAT), id="str-tag"),
        pytest.param(msgpack.packb([1, 2, {1: "x"}]), id="int-map-key"),
    ],
)
def test_a_header_that_is_not_an_envelope_is_malformed(frame: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode([frame])


@pytest.mark.parametrize(
    "ext",
    [
        pytest.param(msgpack.ExtType(1, b"payload"), id="with-data"),
        pytest.param(msgpack.ExtType(5, b""), id="empty"),
        pytest.param(msgpack.Timestamp(seconds=1, nanoseconds=5), id="timestamp"),
    ],
)
def test_an_extension_type_anywhere_in_the_header_is_malformed(ext: Any) -> None:
    in_body = header(PROTOCOL_VERSION, Heartbeat.TAG, {**HEARTBEAT, "sender": ext})
    in_unknown_field = header(PROTOCOL_VERSION, Heartbeat.TAG, {**HEARTBEAT, "extra": [ext]})
    for frame in (in_body, in_unknown_field):
        with pytest.raises(MalformedFrame):
            decode([frame])


def test_a_header_over_the_limit_is_too_large() -> None:
    frame = header(PROTOCOL_VERSION, Heartbeat.TAG, {**HEARTBEAT, "sender": "a" * 200})
    with pytest.raises(FrameTooLarge):
        decode([frame], Limits(max_header_bytes=128))
    decode([frame], Limits(max_header_bytes=len(frame)))  # exactly at the limit is fine


def test_too_many_tensor_frames_is_too_large() -> None:
    arrays = [np.zeros(2, np.float32) for _ in range(3)]
    frames = wire(encode(request_with(arrays), arrays))
    with pytest.raises(FrameTooLarge):
        decode(frames, Limits(max_tensors=2))
    decode(frames, Limits(max_tensors=3))


def test_a_tensor_frame_or_a_whole_message_over_the_limit_is_too_large() -> None:
    arrays = [np.zeros(64, np.uint8), np.zeros(64, np.uint8)]
    frames = wire(encode(request_with(arrays), arrays))
    with pytest.raises(FrameTooLarge):
        decode(frames, Limits(max_tensor_bytes=63))
    with pytest.raises(FrameTooLarge):
        decode(frames, Limits(max_total_bytes=len(frames[0]) + 127))
    decode(frames, Limits(max_tensor_bytes=64, max_total_bytes=len(frames[0]) + 128))


def test_strings_and_arrays_over_their_limits_are_malformed() -> None:
    long_name = header(PROTOCOL_VERSION, Heartbeat.TAG, {**HEARTBEAT, "sender": "s" * 100})
    many = header(PROTOCOL_VERSION, protocol.message.GatewayListChanged.TAG, {"gateways": ["g"] * 100})
    with pytest.raises(MalformedFrame):
        decode([long_name], Limits(max_str_len=99))
    with pytest.raises(MalformedFrame):
        decode([many], Limits(max_array_len=99))


def metas(*shapes: tuple[int, ...], datatype: str = "FP32") -> tuple[TensorMeta, ...]:
    return tuple(TensorMeta(name=f"t{i}", datatype=datatype, shape=s) for i, s in enumerate(shapes))


def test_a_tensor_frame_whose_size_does_not_match_its_shape_is_malformed() -> None:
    sent = np.zeros(5, np.float32)
    lying = InferReply(request_id=1, variant="v", status=ReplyStatus.OK, outputs=metas((2, 3)))
    decoded, buffers = decode(wire(encode(lying, [sent])))
    with pytest.raises(MalformedFrame, match="needs 24 bytes"):
        tensors_from_frames(decoded.outputs, buffers)


@pytest.mark.parametrize(
    "described, frames",
    [
        pytest.param(metas((2,)), [], id="described-but-not-sent"),
        pytest.param(metas(), [b"\x00" * 4], id="sent-but-not-described"),
        pytest.param(metas((-1, 2)), [b""], id="negative-dimension"),
        pytest.param(metas((-2, -2)), [b"\x00" * 16], id="negatives-whose-product-fits"),
        pytest.param(metas((1,) * 9), [b"\x00" * 4], id="rank-over-limit"),
        pytest.param(metas((2,), datatype="BYTES"), [b"\x00" * 8], id="datatype-not-raw"),
        pytest.param(metas((2,), datatype="fp32"), [b"\x00" * 8], id="datatype-wrong-case"),
    ],
)
def test_tensor_metadata_that_cannot_describe_its_frames_is_malformed(
    described: tuple[TensorMeta, ...], frames: list[bytes]
) -> None:
    with pytest.raises(MalformedFrame):
        tensors_from_frames(described, [memoryview(f) for f in frames])


def test_a_zero_size_tensor_with_absurd_dimensions_is_malformed() -> None:
    with pytest.raises(MalformedFrame):
        tensors_from_frames(metas((0, 2**63)), [memoryview(b"")])


# --- frozen structs --------------------------------------------------------------------------


@pytest.mark.parametrize("tag", TAGS, ids=lambda t: registered_tags()[t].__name__)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_messages_are_frozen(tag: int, data: st.DataObject) -> None:
    msg = data.draw(struct_values(registered_tags()[tag]))
    for field in dataclasses.fields(msg):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, field.name, getattr(msg, field.name))
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        msg.not_a_field = 1  # type: ignore[attr-defined]


def test_nested_structs_are_frozen_and_fields_are_keyword_only() -> None:
    meta = TensorMeta(name="x", datatype="FP32", shape=(1,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.shape = (2,)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Heartbeat("agent-1", "agent")  # type: ignore[misc]


def test_every_refusal_is_a_protocol_error() -> None:
    for error in (MalformedFrame, FrameTooLarge, UnknownMessage, VersionMismatch):
        assert issubclass(error, ProtocolError)


def test_reply_status_travels_as_its_value_and_unknown_values_are_rejected():
    from protocol.message import InferReply
    from protocol.types import ReplyStatus

    frames = encode(InferReply(request_id=7, variant="v", status=ReplyStatus.LATE))
    msg, _ = decode(frames)
    assert msg.status is ReplyStatus.LATE
    plain = msgpack.unpackb(bytes(frames[0]))
    assert "late" in str(plain)
    bad = msgpack.packb(_replace_value(plain, "late", "exploded"))
    with pytest.raises(MalformedFrame, match="status"):
        decode([bad])


def _replace_value(obj, old, new):
    if obj == old:
        return new
    if isinstance(obj, list):
        return [_replace_value(v, old, new) for v in obj]
    if isinstance(obj, dict):
        return {k: _replace_value(v, old, new) for k, v in obj.items()}
    return obj


# --- bundles: several messages to one peer in one send ----------------------------------------


def _request(rid: int, x: np.ndarray) -> tuple[InferRequest, list[np.ndarray]]:
    return InferRequest(request_id=rid, variant="v", budget_us=1000, inputs=(tensor_meta("x", x),)), [x]


def test_a_bundle_carries_its_messages_and_their_tensors_in_send_order() -> None:
    items = [_request(i, np.full((1, 3), i, np.float32)) for i in range(5)]
    items.insert(2, (Heartbeat(sender="g", role="gateway", seq=9), []))
    frames = encode_bundle(items)
    decoded = decode_all([bytes(f) for f in frames])
    assert [m for m, _ in decoded] == [m for m, _ in items]
    for (msg, buffers), (_, tensors) in zip(decoded, items):
        got = tensors_from_frames(msg.inputs, buffers) if isinstance(msg, InferRequest) else buffers
        assert len(got) == len(tensors)
        for a, b in zip(got, tensors):
            np.testing.assert_array_equal(a, b)


def test_a_bundle_of_one_is_sent_as_the_plain_message() -> None:
    item = _request(1, np.ones((1, 3), np.float32))
    frames = encode_bundle([item])
    assert [bytes(f) for f in frames] == [bytes(f) for f in encode(*item)]
    assert decode(frames)[0] == item[0]
    assert [m for m, _ in decode_all(frames)] == [item[0]]


def test_decode_refuses_a_bundle_where_one_message_is_expected() -> None:
    frames = encode_bundle([_request(i, np.ones((1, 3), np.float32)) for i in range(2)])
    with pytest.raises(MalformedFrame, match="bundle"):
        decode(frames)


def _bundle_header(counts: Any) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, 0, counts])


@pytest.mark.parametrize("counts", [[], [0, 2], [2, -1], [1.0, 1], "2", [2, 2], [2] * 300, [66]])
def test_a_bundle_whose_counts_do_not_describe_its_frames_is_malformed(counts: Any) -> None:
    inner = encode(*_request(1, np.ones((1, 3), np.float32)))  # 2 frames
    with pytest.raises(ProtocolError):
        decode_all([_bundle_header(counts), *inner])


def test_a_bundle_inside_a_bundle_and_a_bad_message_inside_one_are_refused_whole() -> None:
    inner = encode_bundle([_request(i, np.ones((1, 3), np.float32)) for i in range(2)])
    with pytest.raises(MalformedFrame, match="inside"):
        decode_all([_bundle_header([len(inner)]), *inner])
    good = encode(*_request(1, np.ones((1, 3), np.float32)))
    with pytest.raises(UnknownMessage):
        decode_all([_bundle_header([2, 1]), *good, msgpack.packb([PROTOCOL_VERSION, 65535, {}])])


def test_a_bundle_over_the_total_size_limit_is_too_large() -> None:
    big = np.zeros((1, 1024), np.float32)
    frames = encode_bundle([_request(i, big) for i in range(4)])
    with pytest.raises(FrameTooLarge):
        decode_all(frames, Limits(max_total_bytes=3 * 4096))
    assert len(decode_all(frames, Limits(max_total_bytes=5 * 4096))) == 4


def test_the_status_and_routing_table_of_a_fleet_of_thousands_of_gpu_lets_decode() -> None:
    """128 hosts of 8 GPUs split in 4 gpu-lets: 4,096 workers (a 1 MiB header limit refused the
    status at about 2,900)."""
    from protocol.message import RoutingTable, StatusReply
    from protocol.types import AgentStatus, DeviceInfo, ModelStatus, Partition, WorkerRoute, WorkerState, WorkerStatus

    gpus = tuple(DeviceInfo(device_id=f"cuda{g}", kind="cuda", name="NVIDIA H100 80GB HBM3", cores=132,
                            memory_bytes=80 << 30) for g in range(8))
    agents = tuple(AgentStatus(agent_id=f"gpu-node-{a:04d}", hostname=f"gpu-node-{a:04d}.cluster.local", alive=True,
                               devices=gpus, last_seen_s=0.4) for a in range(128))
    variants = ("resnet50-fp16", "resnet18-int8")
    workers = tuple(WorkerStatus(worker_id=f"{a.agent_id}.g1003.w{i}", agent_id=a.agent_id, state=WorkerState.READY,
                                 partition=Partition(device_id=f"cuda{i // 4}", kind="cuda", mps_percent=25),
                                 variants=variants, pid=123456, slowdown=dict.fromkeys(variants, 1.05),
                                 runtimes=dict.fromkeys(variants, "onnxruntime-cuda"))
                    for a in agents for i in range(32))
    status = StatusReply(controller_epoch=3, routing_version=5, agents=agents, workers=workers,
                         models=tuple(ModelStatus(name=v, family="cls", accuracy=0.9, state="READY",
                                                  workers=tuple(w.worker_id for w in workers)) for v in variants),
                         gateways=("tcp://gw:1",))
    routes = RoutingTable(version=9, models=(), workers=tuple(
        WorkerRoute(worker_id=w.worker_id, variants=variants, latency_ms=dict.fromkeys(variants, (1.0, 1.6, 2.9, 5.5)),
                    weights=dict.fromkeys(variants, 1 / 4096)) for w in workers))
    for msg in (status, routes):
        frames = encode(msg)
        assert len(frames[0]) > 1 << 20
        assert decode(frames)[0] == msg
