"""How letmesh processes write log lines: text with each record's ``extra=`` fields as key=value, or JSON.

Library code logs with ``logging.getLogger(__name__)`` and structured ``extra=`` fields; only entry
points (the CLI, the worker process) call :func:`configure`, which also hands the format on to the
processes they start. Imports nothing of ours.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
FORMAT_ENV = "LETMESH_LOG_FORMAT"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# Values written bare in text; anything else is quoted as a JSON string so the line stays parseable.
_BARE = re.compile(r"[\w.,:/@+\-]+")


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call passed with ``extra=``, in the order given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _text_value(value: Any) -> str:
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value if not isinstance(value, float) or math.isfinite(value) else str(value))
    text = value if isinstance(value, str) else str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class TextFormatter(logging.Formatter):
    """``time [label] LEVEL logger: message key=value ...``, then the traceback, if any."""

    def __init__(self, label: str = "") -> None:
        prefix = f"{label} " if label else ""
        super().__init__(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        fields = extra_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the extra fields
    (one that collides with those keys is written as ``field_<name>``), then ``exc_info``."""

    def __init__(self, label: str = "") -> None:
        super().__init__()
        self.label = label

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.label:
            line["process"] = self.label
        for key, value in extra_fields(record).items():
            line[f"field_{key}" if key in line else key] = _jsonable(value)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(fmt: str, label: str = "") -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    return JsonFormatter(label) if fmt == "json" else TextFormatter(label)


def configure(level: str, fmt: str = "text", *, label: str = "", stream: TextIO | None = None) -> None:
    """Send this process's log records to ``stream`` (stderr) at ``level`` in format ``fmt``.

    Replaces the root logger's handlers, and records ``fmt`` in the environment so the processes
    this one starts (an agent's workers) write the same format. Raises ValueError for an unknown
    level or format.
    """
    name = level.upper()
    if name not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt, label))
    logging.basicConfig(level=name, handlers=[handler], force=True)
    os.environ[FORMAT_ENV] = fmt
