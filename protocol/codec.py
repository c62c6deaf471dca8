"""The one codec for every letmesh message: msgpack envelope plus raw tensor frames.

Wire form of one message (a ZeroMQ multipart message, routing frames excluded):

    frame 0:    msgpack [PROTOCOL_VERSION, tag, {field: value}]
    frame 1..n: raw little-endian tensor bytes, in the order of the message's TensorMeta list

Decoding validates everything at the edge: sizes, version, tag, every field's type, tensor
byte counts. No extension types, no pickle. Tensors decode into numpy arrays that view the
frame buffers without copying. Imports nothing of ours beyond ``protocol``; no zmq, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

import protocol.message  # noqa: F401  (registers every message tag with the decoder)
from protocol.error import FrameTooLarge, MalformedFrame, UnknownMessage, VersionMismatch
from protocol.schema import from_plain, message_type, to_plain
from protocol.types import DATATYPES, TensorMeta

PROTOCOL_VERSION = 1


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 1 << 20
    max_tensor_bytes: int = 64 << 20
    max_total_bytes: int = 128 << 20
    max_tensors: int = 64
    max_rank: int = 8
    max_str_len: int = 1 << 16
    max_array_len: int = 1 << 16
    max_map_len: int = 1 << 12


DEFAULT_LIMITS = Limits()

# The artifact chunk is the one message whose header carries a large byte string.
ARTIFACT_CHUNK_BYTES = 512 << 10


def _no_ext(code: int, data: bytes) -> Any:
    raise MalformedFrame(f"msgpack extension type {code} is not allowed")


def encode(msg: Any, tensors: Sequence[np.ndarray] = ()) -> list[bytes | memoryview]:
    """Message (+ tensors, matching its TensorMeta list) -> frames ready for send_multipart."""
    tag = getattr(type(msg), "TAG", None)
    if tag is None:
        raise TypeError(f"{type(msg).__name__} is not a registered message")
    header = msgpack.packb([PROTOCOL_VERSION, tag, to_plain(msg)], use_bin_type=True)
    frames: list[bytes | memoryview] = [header]
    for array in tensors:
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        frames.append(memoryview(array).cast("B") if array.size else b"")
    return frames


def tensor_meta(name: str, array: np.ndarray) -> TensorMeta:
    """The TensorMeta describing ``array`` under ``name``."""
    return TensorMeta(name=name, datatype=datatype_of(array.dtype), shape=tuple(array.shape))


_BY_DTYPE = {np.dtype(code).newbyteorder("="): name for name, code in DATATYPES.items()}


def datatype_of(dtype: np.dtype) -> str:
    """numpy dtype -> Open Inference Protocol datatype name."""
    name = _BY_DTYPE.get(np.dtype(dtype).newbyteorder("="))
    if name is None:
        raise TypeError(f"dtype {dtype} has no Open Inference Protocol datatype")
    return name


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> tuple[Any, list[memoryview]]:
    """Frames -> (message, raw tensor buffers). Raises a ProtocolError on anything invalid."""
    if not frames:
        raise MalformedFrame("no frames")
    if len(frames) - 1 > limits.max_tensors:
        raise FrameTooLarge(f"{len(frames) - 1} tensor frames, at most {limits.max_tensors}")
    buffers = [memoryview(f.buffer if hasattr(f, "buffer") else f) for f in frames]
    header = buffers[0]
    if header.nbytes > limits.max_header_bytes:
        raise FrameTooLarge(f"header of {header.nbytes} bytes, at most {limits.max_header_bytes}")
    total = sum(b.nbytes for b in buffers)
    if total > limits.max_total_bytes:
        raise FrameTooLarge(f"message of {total} bytes, at most {limits.max_total_bytes}")
    for b in buffers[1:]:
        if b.nbytes > limits.max_tensor_bytes:
            raise FrameTooLarge(f"tensor frame of {b.nbytes} bytes, at most {limits.max_tensor_bytes}")
    try:
        envelope = msgpack.unpackb(
            header,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_no_ext,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_header_bytes,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except MalformedFrame:
        raise
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.exceptions.ExtraData,
            msgpack.exceptions.FormatError, msgpack.exceptions.StackError) as exc:
        raise MalformedFrame(f"bad msgpack header: {exc}") from None
    if not isinstance(envelope, list) or len(envelope) != 3:
        raise MalformedFrame("envelope is not [version, tag, body]")
    version, tag, body = envelope
    if type(version) is not int or type(tag) is not int:
        raise MalformedFrame("envelope version and tag must be integers")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(f"protocol version {version}, this build speaks {PROTOCOL_VERSION}")
    cls = message_type(tag)
    if cls is None:
        raise UnknownMessage(f"no message has tag {tag}")
    msg = from_plain(cls, body)
    return msg, buffers[1:]


def tensors_from_frames(
    metas: Sequence[TensorMeta], buffers: Sequence[memoryview], limits: Limits = DEFAULT_LIMITS
) -> list[np.ndarray]:
    """Raw frames -> numpy arrays viewing them (no copy), checked against their metadata."""
    if len(metas) != len(buffers):
        raise MalformedFrame(f"{len(metas)} tensors described, {len(buffers)} frames sent")
    arrays = []
    for meta, buf in zip(metas, buffers):
        arrays.append(tensor_from_buffer(meta, buf, limits))
    return arrays


def tensor_from_buffer(meta: TensorMeta, buf: memoryview, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    code = DATATYPES.get(meta.datatype)
    if code is None:
        raise MalformedFrame(f"tensor {meta.name!r}: datatype {meta.datatype!r} cannot travel raw")
    if len(meta.shape) > limits.max_rank or any(d < 0 for d in meta.shape):
        raise MalformedFrame(f"tensor {meta.name!r}: bad shape {list(meta.shape)}")
    dtype = np.dtype(code)
    # A zero-size tensor may claim absurd other dimensions that numpy refuses to reshape to.
    if math.prod(d for d in meta.shape if d) * dtype.itemsize > limits.max_tensor_bytes:
        raise MalformedFrame(f"tensor {meta.name!r}: shape {list(meta.shape)} is over the size limit")
    count = math.prod(meta.shape)
    if count * dtype.itemsize != buf.nbytes:
        raise MalformedFrame(
            f"tensor {meta.name!r}: shape {list(meta.shape)} of {meta.datatype} needs "
            f"{count * dtype.itemsize} bytes, frame has {buf.nbytes}"
        )
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(meta.shape)
