"""Build a process's one frozen config object from defaults, a TOML file, env and flags.

Precedence, lowest first: the dataclass defaults < the TOML file < ``LETMESH_*`` environment
variables < command-line flags. Must not import ZeroMQ, protocol or role packages.

Environment names: field ``http_port`` is read from ``LETMESH_HTTP_PORT``; when a
``section`` is given (``"gateway"``) only ``LETMESH_GATEWAY_HTTP_PORT`` is read, so roles
sharing one environment never pick up each other's settings.

Values are checked where they enter: a field typed ``Literal["a", "b"]`` takes only those values,
one typed ``Annotated[float, Range(gt=0)]`` (or an alias below: ``PositiveFloat``, ``Port``, ...)
only numbers within the range. Every error names the key (``gateway.selection``) and the source.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

T = TypeVar("T")

ENV_PREFIX = "LETMESH_"

_SCALARS: tuple[type, ...] = (str, int, float, bool, Path)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(Exception):
    """A configuration source holds an unknown key or a value that does not fit its field.

    ``str()`` reads ``<key>: <problem> (from <source>)``; ``key`` is empty for a problem with a
    whole file (unreadable, not TOML) and ``source`` empty when no one source is to blame.
    """

    def __init__(self, problem: str, *, key: str = "", source: str = "") -> None:
        self.problem = problem
        self.key = key
        self.source = source
        text = f"{key}: {problem}" if key else problem
        super().__init__(f"{text} (from {source})" if source else text)


@dataclass(frozen=True, slots=True)
class Range:
    """Bounds of a number field, as in ``Annotated[float, Range(gt=0)]``; None: no bound on that side."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def problem(self, value: float) -> str | None:
        if self.gt is not None and not value > self.gt:
            return f"must be greater than {self.gt:g}, got {value!r}"
        if self.ge is not None and not value >= self.ge:
            return f"must be at least {self.ge:g}, got {value!r}"
        if self.le is not None and not value <= self.le:
            return f"must be at most {self.le:g}, got {value!r}"
        return None


_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class ZmqAddress:
    """A ZeroMQ endpoint field, as in ``Annotated[str, ZmqAddress()]``: ``tcp://HOST:PORT`` (``*`` for
    any host or port where binding), ``ipc://PATH`` or ``inproc://NAME``, optionally followed by the
    server key a peer presents (`` curve=KEY``); ``empty``: "" is allowed too (not set)."""

    empty: bool = False

    def problem(self, value: str) -> str | None:
        bare = value.partition(" curve=")[0].strip()
        if not bare:
            return None if self.empty else "expected a ZeroMQ address such as tcp://127.0.0.1:5555, got ''"
        scheme, sep, rest = bare.partition("://")
        if not sep or scheme not in ("tcp", "ipc", "inproc"):
            hint = f"; did you mean tcp://{bare}?" if not sep and ":" in bare else ""
            return f"expected tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {value!r}{hint}"
        if scheme != "tcp":
            return None if rest else f"{scheme}:// needs a name after it, got {value!r}"
        host, colon, port = rest.rpartition(":")
        # 0 and * bind any free port; ASCII digits only (str.isdigit also takes "²" and "٣")
        if not colon or not host or not (port == "*" or (_PORT.fullmatch(port) and int(port) <= 65535)):
            return f"expected tcp://HOST:PORT with a port from 0 to 65535 (or *), got {value!r}"
        return None


PositiveInt = Annotated[int, Range(gt=0)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Port = Annotated[int, Range(ge=0, le=65535)]  # 0: any free port
Address = Annotated[str, ZmqAddress()]
OptionalAddress = Annotated[str, ZmqAddress(empty=True)]  # "": not set


@dataclass(frozen=True, slots=True)
class _FieldType:
    base: type
    is_tuple: bool
    optional: bool
    choices: tuple[Any, ...] = ()  # from Literal[...]: the only values allowed
    bound: Range | ZmqAddress | None = None

    def check(self, value: Any, key: str, source: str) -> Any:
        """``value`` (already of the field's base type) when allowed, else ConfigError."""
        items = value if self.is_tuple else (value,)
        for item in items:
            if self.choices and item not in self.choices:
                raise _bad(key, source, f"{item!r} is not one of {', '.join(map(str, self.choices))}")
            if self.bound is not None and (problem := self.bound.problem(item)) is not None:
                raise _bad(key, source, problem)
        return value


def env_var_name(field: str, section: str | None = None) -> str:
    """The environment variable read for ``field`` (in ``section``, when given)."""
    parts = [ENV_PREFIX.rstrip("_")]
    if section:
        parts.append(section)
    parts.append(field)
    return "_".join(parts).upper().replace("-", "_")


def load_config(
    cls: type[T],
    *,
    toml_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    section: str | None = None,
) -> T:
    """Return ``cls`` built from its defaults overlaid by TOML, environment and flags.

    ``cls`` is a frozen dataclass whose init fields all have defaults and are of type
    str, int, float, bool, Path, ``tuple[<one of those>, ...]`` or any of these ``| None``.
    ``env`` defaults to ``os.environ``. Flags whose value is None are ignored (argparse
    defaults), as are flag names that are not fields (``vars(args)`` carries subcommand
    state); dashes in flag names count as underscores. String values from the environment
    or flags are parsed: bools accept 1/0/true/false/yes/no/on/off, tuples are
    comma-separated, and an empty string means None for an optional field.

    Fields may also be ``Literal[...]`` of str or int (the allowed values) and carry a
    :class:`Range` through ``Annotated``.

    Raises :class:`ConfigError` naming the key and source for an unknown TOML key, a bad
    value (wrong type, not among the choices, out of range), an unreadable file, or a value the
    dataclass itself rejects; ``TypeError`` when ``cls`` is not a config dataclass as described.
    """
    fields = _config_fields(cls)
    values: dict[str, Any] = {}

    if toml_path is not None:
        values.update(_from_toml(fields, Path(toml_path), section))

    environ = os.environ if env is None else env
    for name, ftype in fields.items():
        var = env_var_name(name, section)
        if var in environ:
            source = f"environment variable {var}"
            values[name] = _from_text(ftype, environ[var], _key(name, section), source)
    if section is not None:  # a misspelt variable would otherwise be ignored, as a misspelt key is not
        prefix = env_var_name("", section)
        known = {env_var_name(name, section): name for name in fields}
        for var in environ:
            if var.startswith(prefix) and var not in known:
                hint = difflib.get_close_matches(var, list(known), n=1)
                also = f"; did you mean {hint[0]}?" if hint else ""
                raise ConfigError(f"unknown setting{also}", key=_key(var.removeprefix(prefix).lower(), section),
                                  source=f"environment variable {var}")

    for key, value in (flags or {}).items():
        name = key.replace("-", "_")
        if value is None or name not in fields:
            continue
        source = f"flag --{name.replace('_', '-')}"
        if isinstance(value, str):
            values[name] = _from_text(fields[name], value, _key(name, section), source)
        else:
            values[name] = _from_native(fields[name], value, _key(name, section), source)

    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{exc} ({section or cls.__name__})") from exc


def _key(name: str, section: str | None) -> str:
    """How errors name a field: its TOML key, under its table when there is one."""
    return f"{section}.{name}" if section else name


def _config_fields(cls: type) -> dict[str, _FieldType]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} must be a frozen dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, _FieldType] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name} has no default")
        fields[field.name] = _field_type(cls.__name__, field.name, hints[field.name])
    return fields


def _field_type(owner: str, name: str, annotation: Any) -> _FieldType:
    bound, annotation = _range_of(annotation)
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(annotation)) != 2:
            raise TypeError(f"{owner}.{name}: unsupported union {annotation!r}")
        optional = True
        inner_bound, annotation = _range_of(args[0])
        bound = bound or inner_bound
        origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS:
            return _FieldType(args[0], True, optional, bound=bound)
        raise TypeError(f"{owner}.{name}: only tuple[X, ...] of a simple type, got {annotation!r}")
    if origin is Literal:
        choices = typing.get_args(annotation)
        kinds = {type(c) for c in choices}
        if len(kinds) != 1 or not kinds <= {str, int}:
            raise TypeError(f"{owner}.{name}: a Literal of str or of int values, got {annotation!r}")
        return _FieldType(kinds.pop(), False, optional, choices=choices, bound=bound)
    if annotation in _SCALARS:
        if isinstance(bound, Range) and annotation not in (int, float):
            raise TypeError(f"{owner}.{name}: a Range on a {annotation.__name__} field")
        if isinstance(bound, ZmqAddress) and annotation is not str:
            raise TypeError(f"{owner}.{name}: a ZmqAddress on a {annotation.__name__} field")
        return _FieldType(annotation, False, optional, bound=bound)
    raise TypeError(f"{owner}.{name}: unsupported config type {annotation!r}")


def _range_of(annotation: Any) -> tuple[Range | ZmqAddress | None, Any]:
    """``Annotated[X, Range(...)]`` (or ``ZmqAddress()``) -> (that check, X); anything else -> (None, itself)."""
    if typing.get_origin(annotation) is not Annotated:
        return None, annotation
    inner, *extras = typing.get_args(annotation)
    return next((e for e in extras if isinstance(e, (Range, ZmqAddress))), None), inner


# The tables of a config file shared by the roles: one per role.
SECTIONS = frozenset({"agent", "controller", "gateway"})


def _from_toml(fields: Mapping[str, _FieldType], path: Path, section: str | None) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc

    where = str(path)
    table: Any = document
    if section is not None:
        for name in document:  # a misspelt table would otherwise be ignored, and its settings with it
            if name not in SECTIONS:
                hint = difflib.get_close_matches(name, sorted(SECTIONS), n=1)
                also = f"; did you mean [{hint[0]}]?" if hint else ""
                raise ConfigError(f"unknown table (the tables are {', '.join(sorted(SECTIONS))}){also}",
                                  key=name, source=str(path))
        where = f"{path} [{section}]"
        table = document.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"must be a table, got {type(table).__name__}", key=section, source=str(path))

    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            also = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"unknown key{also}", key=_key(key, section), source=where)
        values[key] = _from_native(fields[key], value, _key(key, section), where)
    return values


def _bad(key: str, source: str, reason: str) -> ConfigError:
    return ConfigError(reason, key=key, source=source)


def _from_native(ftype: _FieldType, value: Any, name: str, source: str) -> Any:
    """Check and convert an already-typed value (TOML, typed flags)."""
    if value is None and ftype.optional:
        return None
    if ftype.is_tuple:
        if not isinstance(value, (list, tuple)):
            raise _bad(name, source, f"expected a list, got {value!r}")
        return ftype.check(tuple(_scalar_native(ftype.base, item, name, source) for item in value), name, source)
    return ftype.check(_scalar_native(ftype.base, value, name, source), name, source)


def _scalar_native(base: type, value: Any, name: str, source: str) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isnan(value):
                raise _bad(name, source, "NaN is not a usable number")
            return float(value)
    elif base is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif base is str:
        if isinstance(value, str):
            return value
    raise _bad(name, source, f"expected {base.__name__}, got {value!r}")


def _from_text(ftype: _FieldType, text: str, name: str, source: str) -> Any:
    """Parse a string (environment, untyped flags) into the field's type."""
    if ftype.optional and text.strip() == "":
        return None
    if ftype.is_tuple:
        items = [item.strip() for item in text.split(",")]
        return ftype.check(tuple(_scalar_text(ftype.base, item, name, source) for item in items if item), name, source)
    return ftype.check(_scalar_text(ftype.base, text, name, source), name, source)


def _scalar_text(base: type, text: str, name: str, source: str) -> Any:
    if base is str:
        return text
    stripped = text.strip()
    if base is bool:
        lowered = stripped.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise _bad(name, source, f"expected one of 1/0/true/false/yes/no, got {text!r}")
    if base is int:
        try:
            return int(stripped, 10)
        except ValueError:
            raise _bad(name, source, f"expected an integer, got {text!r}") from None
    if base is float:
        try:
            number = float(stripped)
        except ValueError:
            raise _bad(name, source, f"expected a number, got {text!r}") from None
        if math.isnan(number):
            raise _bad(name, source, "NaN is not a usable number")
        return number
    if base is Path:
        if not stripped:
            raise _bad(name, source, "expected a path, got an empty string")
        return Path(text)
    raise _bad(name, source, f"unsupported type {base.__name__}")  # unreachable: checked up front
