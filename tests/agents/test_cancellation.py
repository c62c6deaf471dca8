"""A stop cancels what an agent is waiting on, even when the awaited answer lands in the same loop
turn: Python 3.11's ``asyncio.wait_for`` returned that answer and dropped the cancellation, so a
profiling run went on measuring (and warning) for seconds after its agent was told to stop."""

from __future__ import annotations

import asyncio
import json

import pytest

from agents.profile_runner import ProfileRunner
from agents.profiler_process import ProfilerProcess
from mesh.actor import MailboxClosed
from protocol.message import ProfileDevice

TURNS = range(8)  # loop turns between the answer arriving and the cancel: the race is one of them


class _Pipes:
    """The parts of a subprocess a profiler's pipes read, fed by the test."""

    def __init__(self) -> None:
        self.stdout = asyncio.StreamReader()
        self.stderr = asyncio.StreamReader()
        self.pid = 0
        self.returncode = None


@pytest.mark.parametrize("turns", TURNS)
async def test_a_cancel_that_meets_the_profilers_answer_is_not_lost(turns: int) -> None:
    pipes = _Pipes()
    profiler = ProfilerProcess(pipes, "1 core")  # type: ignore[arg-type]
    waiting = asyncio.create_task(profiler._answer("measured", 30.0))
    for _ in range(3):
        await asyncio.sleep(0)
    pipes.stdout.feed_data(json.dumps({"event": "measured", "p50_ms": 1.0}).encode() + b"\n")
    for _ in range(turns):
        await asyncio.sleep(0)

    asked = waiting.cancel()  # True: the task had not finished, so it must end cancelled
    outcome = (await asyncio.gather(waiting, return_exceptions=True))[0]

    if asked:
        assert isinstance(outcome, asyncio.CancelledError), f"the cancel was lost; the task returned {outcome!r}"
    else:
        assert outcome == {"event": "measured", "p50_ms": 1.0}
    pipes.stderr.feed_eof()
    await profiler._stderr


async def test_progress_dropped_by_a_stopping_agent_is_not_a_warning_with_a_traceback(tmp_path, caplog) -> None:
    def stopping(_progress: object) -> None:
        raise MailboxClosed("actor agent:a is stopping")

    cmd = ProfileDevice(request_id=1, device_id="cuda7", variants=(), partitions=(20,), batches=(1,))
    runner = ProfileRunner(cmd, agent_id="a", devices=(), cores=(0,), controller="tcp://127.0.0.1:1",
                           state_dir=tmp_path, emit=stopping)
    caplog.set_level("DEBUG", logger="agents.profile_runner")

    result = await asyncio.wait_for(runner.run(), 5.0)

    assert "cuda7" in result.error
    assert not [r for r in caplog.records if r.exc_info], "a stopping agent is not worth a traceback"
    assert any("dropped" in r.getMessage() and r.levelname == "DEBUG" for r in caplog.records)
