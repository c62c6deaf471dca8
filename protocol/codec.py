"""The one codec for every letmesh message: msgpack envelope plus raw tensor frames.

Wire form of one message (a ZeroMQ multipart message, routing frames excluded):

    frame 0:    msgpack [PROTOCOL_VERSION, tag, {field: value}]
    frame 1..n: raw little-endian tensor bytes, in the order of the message's TensorMeta list

A bundle carries several messages to one peer in one multipart send (one wake-up of the
sender's and receiver's I/O threads instead of one per message):

    frame 0:    msgpack [PROTOCOL_VERSION, BUNDLE_TAG, [frames of message 1, frames of message 2, ...]]
    frame 1..:  the messages' own frames, one after another

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
BUNDLE_TAG = 0  # not a message: the header of a bundle of messages


@dataclass(frozen=True, slots=True)
class Limits:
    # The status and the routing table of a fleet of thousands of gpu-lets (~370 and ~200 bytes a
    # worker) are the largest headers: 16 MiB holds tens of thousands.
    max_header_bytes: int = 16 << 20
    max_tensor_bytes: int = 64 << 20
    max_total_bytes: int = 128 << 20
    max_tensors: int = 64
    max_rank: int = 8
    max_str_len: int = 1 << 16
    max_array_len: int = 1 << 16
    max_map_len: int = 1 << 12
    max_bundle: int = 256

    @property
    def max_frames(self) -> int:
        """The most frames one send may carry: a bundle header and max_bundle messages of
        max_tensors tensors each."""
        return 1 + self.max_bundle * (self.max_tensors + 1)


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


def encode_bundle(items: Sequence[tuple[Any, Sequence[np.ndarray]]]) -> list[bytes | memoryview]:
    """Several (message, tensors) -> the frames of one bundle; a single message is sent plain."""
    if len(items) == 1:
        return encode(*items[0])
    frames: list[bytes | memoryview] = [b""]
    counts = []
    for msg, tensors in items:
        part = encode(msg, tensors)
        counts.append(len(part))
        frames.extend(part)
    frames[0] = msgpack.packb([PROTOCOL_VERSION, BUNDLE_TAG, counts], use_bin_type=True)
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
    buffers = _buffers(frames, limits)
    _, tag, body = _envelope(buffers[0], limits)
    if tag == BUNDLE_TAG:
        raise MalformedFrame("a bundle of messages where one message was expected")
    return _message(tag, body), buffers[1:]


def decode_all(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> list[tuple[Any, list[memoryview]]]:
    """Frames of one message or of a bundle -> [(message, raw tensor buffers)], in send order.

    A bundle is checked whole (header, counts, total size) before anything in it is decoded;
    a message inside it that is invalid raises like ``decode`` (the whole bundle is refused).
    """
    if not frames:
        raise MalformedFrame("no frames")
    if len(frames) > limits.max_frames:
        raise FrameTooLarge(f"{len(frames)} frames in one send")
    buffers = _buffers(frames, limits)
    _, tag, body = _envelope(buffers[0], limits)
    if tag != BUNDLE_TAG:
        if len(buffers) - 1 > limits.max_tensors:
            raise FrameTooLarge(f"{len(buffers) - 1} tensor frames, at most {limits.max_tensors}")
        return [(_message(tag, body), buffers[1:])]
    if (not isinstance(body, list) or not body or len(body) > limits.max_bundle
            or any(type(n) is not int or not 1 <= n <= limits.max_tensors + 1 for n in body)):
        raise MalformedFrame(f"bad bundle header: at most {limits.max_bundle} messages of "
                             f"1..{limits.max_tensors + 1} frames each")
    if sum(body) != len(buffers) - 1:
        raise MalformedFrame(f"bundle header counts {sum(body)} frames, {len(buffers) - 1} were sent")
    out = []
    at = 1
    for n in body:
        part = buffers[at:at + n]
        at += n
        _, inner_tag, inner = _envelope(part[0], limits)
        if inner_tag == BUNDLE_TAG:
            raise MalformedFrame("a bundle inside a bundle")
        out.append((_message(inner_tag, inner), part[1:]))
    return out


def _buffers(frames: Sequence[Any], limits: Limits) -> list[memoryview]:
    buffers = [memoryview(f.buffer if hasattr(f, "buffer") else f) for f in frames]
    total = sum(b.nbytes for b in buffers)
    if total > limits.max_total_bytes:
        raise FrameTooLarge(f"message of {total} bytes, at most {limits.max_total_bytes}")
    for b in buffers[1:]:
        if b.nbytes > limits.max_tensor_bytes:
            raise FrameTooLarge(f"tensor frame of {b.nbytes} bytes, at most {limits.max_tensor_bytes}")
    return buffers


def _envelope(header: memoryview, limits: Limits) -> tuple[int, int, Any]:
    if header.nbytes > limits.max_header_bytes:
        raise FrameTooLarge(f"header of {header.nbytes} bytes, at most {limits.max_header_bytes}")
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
    return version, tag, body


def _message(tag: int, body: Any) -> Any:
    cls = message_type(tag)
    if cls is None:
        raise UnknownMessage(f"no message has tag {tag}")
    return from_plain(cls, body)


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
