"""Wire types and the codec every letmesh process speaks. Imports nothing of ours, no zmq, no torch."""

from protocol.codec import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Limits,
    decode,
    decode_all,
    encode,
    encode_bundle,
    tensor_meta,
    tensors_from_frames,
)
from protocol.error import FrameTooLarge, MalformedFrame, ProtocolError, UnknownMessage, VersionMismatch

__all__ = [
    "DEFAULT_LIMITS",
    "PROTOCOL_VERSION",
    "FrameTooLarge",
    "Limits",
    "MalformedFrame",
    "ProtocolError",
    "UnknownMessage",
    "VersionMismatch",
    "decode",
    "decode_all",
    "encode",
    "encode_bundle",
    "tensor_meta",
    "tensors_from_frames",
]
