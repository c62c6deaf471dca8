"""Fuzzing the decoder: whatever arrives, decode returns a well-typed message or raises a
ProtocolError, never any other exception."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from protocol.codec import PROTOCOL_VERSION, Limits, decode, encode, tensors_from_frames
from protocol.error import ProtocolError
from protocol.schema import registered_tags, to_plain
from protocol.types import DATATYPES, TensorMeta

from .test_codec import TAGS, WIRE_INTS, struct_values, wire

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def conforms(hint: Any, value: Any) -> bool:
    """Whether ``value`` has exactly the type its field's hint promises (bool is not an int)."""
    supertype = getattr(hint, "__supertype__", None)
    if supertype is not None:
        return conforms(supertype, value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(args[0], v) for v in value)
        return len(args) == len(value) and all(conforms(a, v) for a, v in zip(args, value))
    if origin is dict:
        return isinstance(value, dict) and all(
            conforms(args[0], k) and conforms(args[1], v) for k, v in value.items()
        )
    if origin in (typing.Union, types.UnionType):
        return any(value is None if a is type(None) else conforms(a, value) for a in args)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return type(value) is hint and all(
            conforms(hints[f.name], getattr(value, f.name)) for f in dataclasses.fields(hint)
        )
    return type(value) is hint


def decodes_or_refuses(frames: list[bytes], limits: Limits = Limits()) -> None:
    """The fuzz property: a ProtocolError, or a message that is valid through and through."""
    try:
        msg, buffers = decode(frames, limits)
    except ProtocolError as exc:
        event(f"refused: {type(exc).__name__}")  # shown by --hypothesis-show-statistics
        return
    event("decoded")
    cls = type(msg)
    assert registered_tags().get(getattr(cls, "TAG", None)) is cls
    assert conforms(cls, msg)
    assert len(buffers) == len(frames) - 1
    # A message the decoder accepted encodes again and decodes to the same bytes.
    again, _ = decode(wire(encode(msg)))
    assert encode(again)[0] == encode(msg)[0]


# --- random frames ---------------------------------------------------------------------------

# A valid start of an envelope ([version, tag, ...) so random tails reach the schema checks.
envelope_starts = st.sampled_from(TAGS).map(lambda tag: b"\x93" + msgpack.packb(PROTOCOL_VERSION) + msgpack.packb(tag))
first_frames = st.one_of(
    st.binary(max_size=256),
    st.tuples(envelope_starts, st.binary(max_size=128)).map(b"".join),
)
extra_frames = st.lists(st.binary(max_size=32), max_size=4)
small_limits = st.builds(
    Limits,
    max_header_bytes=st.integers(0, 512),
    max_tensor_bytes=st.integers(0, 64),
    max_total_bytes=st.integers(0, 1024),
    max_tensors=st.integers(0, 4),
    max_rank=st.integers(0, 8),
    max_str_len=st.integers(0, 64),
    max_array_len=st.integers(0, 16),
    max_map_len=st.integers(0, 16),
)
limits = st.one_of(st.just(Limits()), small_limits)


@FUZZ
@given(first=first_frames, rest=extra_frames, limits=limits)
@example(first=b"", rest=[], limits=Limits())
@example(first=b"\x93\x01\x02\xc0", rest=[], limits=Limits())  # nil body
@example(first=b"\x91" * 5000, rest=[], limits=Limits())  # deeply nested arrays
def test_random_frames_decode_or_raise_a_protocol_error(first: bytes, rest: list[bytes], limits: Limits) -> None:
    decodes_or_refuses([first, *rest], limits)


# --- mutated valid headers -------------------------------------------------------------------

mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(1, 255)),
        st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.integers(0, 255)),
        st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.just(0)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, byte in edits:
        if kind == "insert":
            buf.insert(pos % (len(buf) + 1), byte)
        elif buf and kind == "flip":
            buf[pos % len(buf)] ^= byte
        elif buf and kind == "delete":
            del buf[pos % len(buf)]
    return bytes(buf)


@FUZZ
@given(data=st.data(), tag=st.sampled_from(TAGS), edits=mutations, rest=extra_frames)
def test_mutated_valid_headers_decode_or_raise_a_protocol_error(
    data: st.DataObject, tag: int, edits: list[tuple[str, int, int]], rest: list[bytes]
) -> None:
    msg = data.draw(struct_values(registered_tags()[tag]))
    decodes_or_refuses([mutate(bytes(encode(msg)[0]), edits), *rest])


# --- well-formed msgpack with the wrong shape ------------------------------------------------

plain_values = st.recursive(
    st.none() | st.booleans() | WIRE_INTS | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=24,
)


def envelope(tag: int, body: Any) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, tag, body], use_bin_type=True)


DELETE = object()


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in a plain structure, the root included."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, prefix + (i,))
    return found


def replaced(node: Any, path: tuple, value: Any) -> Any:
    """A copy of ``node`` with the item at ``path`` replaced (or removed, for DELETE)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(node) if isinstance(node, dict) else list(node)
    if not rest and value is DELETE:
        del copy[head]
    else:
        copy[head] = replaced(node[head], rest, value)
    return copy


@st.composite
def bodies(draw: st.DrawFn, cls: type) -> Any:
    """A body for ``cls``'s tag: anything at all, a map keyed mostly by its real field names, or
    a valid body with one part (a leaf, a container, a key) replaced or removed."""
    shape = draw(st.sampled_from(["anything", "field-names", "one-part-replaced"]))
    if shape == "anything":
        return draw(plain_values)
    if shape == "field-names":
        names = [f.name for f in dataclasses.fields(cls)]
        keys = st.sampled_from(names) | st.text(max_size=8) if names else st.text(max_size=8)
        return draw(st.dictionaries(keys, plain_values, max_size=len(names) + 2))
    body = to_plain(draw(struct_values(cls)))
    where = draw(st.sampled_from(paths(body)))
    return replaced(body, where, draw(plain_values | st.just(DELETE)) if where else draw(plain_values))


@FUZZ
@given(data=st.data(), tag=st.sampled_from(TAGS))
def test_any_msgpack_body_for_every_tag_decodes_or_raises_a_protocol_error(data: st.DataObject, tag: int) -> None:
    decodes_or_refuses([envelope(tag, data.draw(bodies(registered_tags()[tag])))])


# --- tensor metadata against frames ----------------------------------------------------------

datatypes = st.sampled_from(sorted(DATATYPES)) | st.text(max_size=6)


def tensors_or_refusal(metas: list[TensorMeta], frames: list[bytes]) -> None:
    try:
        arrays = tensors_from_frames(metas, [memoryview(f) for f in frames])
    except ProtocolError:
        return
    assert len(arrays) == len(metas)
    for meta, frame, array in zip(metas, frames, arrays):
        assert array.shape == meta.shape
        assert array.nbytes == len(frame)


small_metas = st.lists(
    st.builds(
        TensorMeta,
        name=st.text(max_size=4),
        datatype=datatypes,
        shape=st.lists(st.integers(-3, 16), max_size=10).map(tuple),
    ),
    max_size=3,
)


@FUZZ
@given(metas=small_metas, frames=st.lists(st.binary(max_size=96), max_size=3))
def test_tensor_metadata_and_frames_give_arrays_or_a_protocol_error(
    metas: list[TensorMeta], frames: list[bytes]
) -> None:
    tensors_or_refusal(metas, frames)


@FUZZ
@given(datatype=datatypes, shape=st.lists(st.integers(-3, 8), max_size=4).map(tuple), fill=st.integers(0, 255))
def test_a_frame_sized_for_its_shape_gives_an_array_of_that_shape(
    datatype: str, shape: tuple[int, ...], fill: int
) -> None:
    # Frames of exactly the right size, so the success path is exercised as often as the refusals.
    itemsize = np.dtype(DATATYPES.get(datatype, "|u1")).itemsize
    count = 1
    for d in shape:
        count *= max(d, 0)
    tensors_or_refusal([TensorMeta(name="x", datatype=datatype, shape=shape)], [bytes([fill]) * (count * itemsize)])


@FUZZ
@given(shape=st.lists(WIRE_INTS, max_size=8).map(tuple))
@example(shape=(0, 2**63))
def test_tensor_shapes_over_the_whole_wire_range_give_arrays_or_a_protocol_error(shape: tuple[int, ...]) -> None:
    tensors_or_refusal([TensorMeta(name="x", datatype="FP32", shape=shape)], [b""])
