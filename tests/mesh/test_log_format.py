"""Log lines show the fields a log call passes with ``extra=``: as key=value in text, as keys in JSON."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from mesh.log_format import FORMAT_ENV, configure


@pytest.fixture
def captured():
    """Configure the root logger into a buffer; restore the handlers, level and environment after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, os.environ.get(FORMAT_ENV))
    buffer = io.StringIO()

    def use(fmt: str, level: str = "INFO", label: str = "") -> io.StringIO:
        configure(level, fmt, label=label, stream=buffer)
        return buffer

    yield use
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    if saved[2] is None:
        os.environ.pop(FORMAT_ENV, None)
    else:
        os.environ[FORMAT_ENV] = saved[2]


def test_text_lines_carry_the_extra_fields_as_key_value_after_the_message(captured):
    out = captured("text")
    logging.getLogger("agents.agent_actor").warning(
        "worker exited unexpectedly", extra={"worker": "local.g1.w0", "exit_code": -9, "restart": True})
    logging.getLogger("x").info("odd values", extra={"reason": "sha256 mismatch", "ratio": float("nan"), "empty": ""})
    first, second = out.getvalue().splitlines()
    assert first.endswith("WARNING agents.agent_actor: worker exited unexpectedly "
                          "worker=local.g1.w0 exit_code=-9 restart=true")
    # Values with spaces or nothing at all are quoted, so each key=value stays one token.
    assert second.endswith('odd values reason="sha256 mismatch" ratio="nan" empty=""')


def test_text_puts_fields_on_the_first_line_and_the_traceback_after(captured):
    out = captured("text", label="worker")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("agents.worker").exception("batch failed", extra={"variant": "digits-cnn"})
    lines = out.getvalue().splitlines()
    assert " worker ERROR agents.worker: batch failed variant=digits-cnn" in lines[0]
    assert lines[1].startswith("Traceback") and lines[-1] == "RuntimeError: boom"


def test_json_gives_one_object_per_line_with_the_fields_as_keys(captured):
    out = captured("json")
    logging.getLogger("controller.controller_actor").info(
        "controller listening", extra={"address": "tcp://127.0.0.1:5555", "epoch": 3})
    logging.getLogger("x").warning("clash", extra={"level": "mine", "shape": (1, 4), "when": float("inf")})
    try:
        raise ValueError("bad\nline")
    except ValueError:
        logging.getLogger("x").exception("with traceback")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3  # a multi-line traceback stays inside its one object
    listening, clash, failed = lines
    assert listening["message"] == "controller listening" and listening["level"] == "INFO"
    assert listening["logger"] == "controller.controller_actor"
    assert listening["address"] == "tcp://127.0.0.1:5555" and listening["epoch"] == 3
    assert listening["time"].endswith("Z")
    assert clash["level"] == "WARNING" and clash["field_level"] == "mine"
    assert clash["shape"] == [1, 4] and clash["when"] == "inf"
    assert "ValueError: bad\nline" in failed["exc_info"]


def test_the_level_filters_and_the_format_is_handed_to_child_processes(captured):
    out = captured("json", level="warning")
    logging.getLogger("x").info("routine")
    logging.getLogger("x").warning("notable")
    assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == ["notable"]
    assert os.environ[FORMAT_ENV] == "json"


@pytest.mark.parametrize(("level", "fmt", "word"), [("LOUD", "text", "log level"), ("INFO", "xml", "log format")])
def test_an_unknown_level_or_format_is_refused_with_the_choices(level, fmt, word):
    with pytest.raises(ValueError, match=word) as refused:
        configure(level, fmt, stream=io.StringIO())
    assert "json" in str(refused.value) or "DEBUG" in str(refused.value)
