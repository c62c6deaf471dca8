"""Errors raised by the protocol layer. Imports nothing of ours."""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every protocol failure: the bytes on the wire are not a valid message."""


class MalformedFrame(ProtocolError):
    """The frames do not decode as a letmesh envelope or message."""


class FrameTooLarge(ProtocolError):
    """A frame or the whole message is over the codec's size limits."""


class UnknownMessage(ProtocolError):
    """The envelope names a tag no message type is registered under."""


class VersionMismatch(ProtocolError):
    """The peer speaks a protocol version this build does not."""
