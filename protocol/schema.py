"""Struct base and the tag registry for wire messages.

Every wire type is a frozen, slotted, keyword-only dataclass. A type that travels on its own
(a message) carries a unique integer tag; nested structs (specs, infos) travel inside messages
and need no tag. Imports nothing of ours.

Schema evolution rules: a new field gets a default; a field is never renamed or retyped; a tag
is never reused; an unknown field from a newer peer is ignored on decode.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, ClassVar, TypeVar

from protocol.error import MalformedFrame

T = TypeVar("T")

_BY_TAG: dict[int, type] = {}


def struct(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, slotted, keyword-only dataclass (a nested wire struct)."""
    return dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)


def message(tag: int):
    """Register a wire message under ``tag``; the tag is part of the protocol forever."""

    def wrap(cls: type[T]) -> type[T]:
        if tag in _BY_TAG:
            raise ValueError(f"tag {tag} already used by {_BY_TAG[tag].__name__}")
        made = struct(cls)
        made.TAG = tag  # type: ignore[attr-defined]
        _BY_TAG[tag] = made
        return made

    return wrap


def message_type(tag: int) -> type | None:
    return _BY_TAG.get(tag)


def registered_tags() -> dict[int, type]:
    return dict(_BY_TAG)


class Message:
    """Marker base for typing; concrete messages are made by :func:`message`."""

    TAG: ClassVar[int]


# --- conversion between structs and msgpack-able plain data ------------------------------
#
# Converters are compiled once per type and cached: decoding is on every request's path, so
# type hints are read when a type is first seen, never per message.

_FIELDS: dict[type, tuple[str, ...]] = {}
_CONVERTERS: dict[Any, Any] = {}
_PLAIN_SCALARS = (int, float, str, bytes, bool, type(None))


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def to_plain(obj: Any) -> Any:
    """Struct -> dict of plain values (tuples stay arrays, nested structs become dicts)."""
    if type(obj) in _PLAIN_SCALARS:
        return obj
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj):
        return {name: to_plain(getattr(obj, name)) for name in _field_names(type(obj))}
    if isinstance(obj, (tuple, list)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def from_plain(cls: type[T], data: Any, path: str = "") -> T:
    """Plain data -> struct of type ``cls``, checking every field's type."""
    try:
        return _converter(cls)(data)
    except _Mismatch as exc:
        where = ".".join(p for p in (path, exc.path) if p)
        raise MalformedFrame(f"{where or cls.__name__}: {exc.reason}") from None


class _Mismatch(Exception):
    """Internal: a value does not fit its declared type; ``path`` grows as it unwinds."""

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason = reason
        self.path = path


def _converter(hint: Any):
    conv = _CONVERTERS.get(hint)
    if conv is None:
        conv = _CONVERTERS[hint] = _compile(hint)
    return conv


def _compile(hint: Any):
    origin = typing.get_origin(hint)
    if hint is Any:
        return lambda value: value
    if origin in (typing.Union, types.UnionType):
        return _compile_union(hint)
    if origin is tuple:
        return _compile_tuple(hint)
    if origin is dict:
        return _compile_dict(hint)
    if dataclasses.is_dataclass(hint):
        return _compile_struct(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _compile_enum(hint)
    if hint in (int, str, bytes, bool):
        return _compile_exact(hint)
    if hint is float:
        def to_float(value: Any) -> float:
            kind = type(value)
            if kind is float:
                return value
            if kind is int:
                return float(value)
            raise _Mismatch(f"expected float, got {kind.__name__}")

        return to_float
    raise TypeError(f"unsupported field type {hint}")


def _compile_exact(kind: type):
    # Exact type checks keep bool and int apart both ways.
    def exact(value: Any) -> Any:
        if type(value) is kind:
            return value
        raise _Mismatch(f"expected {kind.__name__}, got {type(value).__name__}")

    return exact


def _compile_enum(kind: type[enum.Enum]):
    # On the wire an enum is its value; a value outside the enum is a malformed frame.
    members = {m.value: m for m in kind}

    def member(value: Any) -> Any:
        try:
            return members[value]
        except (KeyError, TypeError):
            raise _Mismatch(f"expected one of {sorted(map(str, members))}, got {value!r}") from None

    return member


def _compile_union(hint: Any):
    args = typing.get_args(hint)
    optional = type(None) in args
    convs = [_converter(a) for a in args if a is not type(None)]

    def union(value: Any) -> Any:
        if value is None and optional:
            return None
        reasons = []
        for conv in convs:
            try:
                return conv(value)
            except _Mismatch as exc:
                reasons.append(exc.reason)
        raise _Mismatch(f"no variant of {hint} matches ({'; '.join(reasons)})")

    return union


def _compile_tuple(hint: Any):
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        item = _converter(args[0])

        def homogeneous(value: Any) -> tuple:
            if type(value) is not list and type(value) is not tuple:
                raise _Mismatch("expected an array")
            try:
                return tuple([item(v) for v in value])
            except _Mismatch as exc:
                raise _Mismatch(exc.reason, f"[]{'.' + exc.path if exc.path else ''}") from None

        return homogeneous
    convs = [_converter(a) for a in args]

    def fixed(value: Any) -> tuple:
        if type(value) is not list and type(value) is not tuple:
            raise _Mismatch("expected an array")
        if len(value) != len(convs):
            raise _Mismatch(f"expected {len(convs)} items")
        return tuple(conv(v) for conv, v in zip(convs, value))

    return fixed


def _compile_dict(hint: Any):
    key_t, val_t = typing.get_args(hint)
    key_conv, val_conv = _converter(key_t), _converter(val_t)

    def mapping(value: Any) -> dict:
        if type(value) is not dict:
            raise _Mismatch("expected a map")
        out = {}
        for k, v in value.items():
            try:
                out[key_conv(k)] = val_conv(v)
            except _Mismatch as exc:
                raise _Mismatch(exc.reason, f"[{k!r}]{'.' + exc.path if exc.path else ''}") from None
        return out

    return mapping


def _compile_struct(cls: type):
    hints = typing.get_type_hints(cls)
    fields = [(name, None) for name in _field_names(cls)]
    _CONVERTERS[cls] = None  # placeholder so a self-referencing struct does not recurse forever
    fields = [(name, _converter(hints[name])) for name, _ in fields]

    def struct_of(value: Any) -> Any:
        if type(value) is not dict:
            raise _Mismatch(f"expected a map, got {type(value).__name__}")
        kwargs = {}
        for name, conv in fields:
            if name in value:
                try:
                    kwargs[name] = conv(value[name])
                except _Mismatch as exc:
                    raise _Mismatch(exc.reason, f"{name}{'.' + exc.path if exc.path and not exc.path.startswith('[') else exc.path}") from None
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise _Mismatch(str(exc)) from None

    return struct_of
