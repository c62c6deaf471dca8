"""Struct base and the tag registry for wire messages.

Every wire type is a frozen, slotted, keyword-only dataclass. A type that travels on its own
(a message) carries a unique integer tag; nested structs (specs, infos) travel inside messages
and need no tag. Imports nothing of ours.

Schema evolution rules: a new field gets a default; a field is never renamed or retyped; a tag
is never reused; an unknown field from a newer peer is ignored on decode.
"""

from __future__ import annotations

import dataclasses
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

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        hints = _HINTS[cls]
    return hints


def to_plain(obj: Any) -> Any:
    """Struct -> dict of plain values (tuples stay arrays, nested structs become dicts)."""
    if dataclasses.is_dataclass(obj):
        return {name: to_plain(getattr(obj, name)) for name in _hints(type(obj))}
    if isinstance(obj, (tuple, list)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def from_plain(cls: type[T], data: Any, path: str = "") -> T:
    """Plain data -> struct of type ``cls``, checking every field's type."""
    if not isinstance(data, dict):
        raise MalformedFrame(f"{path or cls.__name__}: expected a map, got {type(data).__name__}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, hint in hints.items():
        if name in data:
            kwargs[name] = _convert(hint, data[name], f"{path}.{name}" if path else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise MalformedFrame(f"{path or cls.__name__}: {exc}") from None


_SCALARS = {int: (int,), float: (float, int), str: (str,), bool: (bool,), bytes: (bytes,)}


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except MalformedFrame as exc:
                errors.append(str(exc))
        raise MalformedFrame(f"{path}: no variant of {hint} matches ({'; '.join(errors)})")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise MalformedFrame(f"{path}: expected an array")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise MalformedFrame(f"{path}: expected {len(args)} items")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict):
            raise MalformedFrame(f"{path}: expected a map")
        return {
            _convert(key_t, k, f"{path}<key>"): _convert(val_t, v, f"{path}[{k!r}]")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return from_plain(hint, value, path)
    accepted = _SCALARS.get(hint)
    if accepted is None:
        raise MalformedFrame(f"{path}: unsupported field type {hint}")
    # bool is an int subclass: keep the two apart both ways.
    if hint is not bool and isinstance(value, bool):
        raise MalformedFrame(f"{path}: expected {hint.__name__}, got bool")
    if not isinstance(value, accepted):
        raise MalformedFrame(f"{path}: expected {hint.__name__}, got {type(value).__name__}")
    if hint is float:
        return float(value)
    return value
