"""One profiling process of a run, and its pipes: JSON commands in on stdin, JSON events out on
stdout (``agents.profiler`` is the other end), its stderr kept for the reason it fails with."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sys
import time
from typing import Any

from agents.error import AgentError
from agents.process import die_with_parent, stop_process

log = logging.getLogger("agents.profile_runner")  # the run's log: one name for what it says


class ProfileFailed(AgentError):
    """A profiling run could not finish; the message says which process and why."""


class ProfilerExited(ProfileFailed):
    """A profiling process ended before answering."""


class ProfilerTimedOut(ProfileFailed):
    """A profiling process did not answer within its time limit."""


class ProfilerRefused(ProfileFailed):
    """A profiling process answered with an error (artifact, model, or command)."""


class ProfilerProcess:
    """One profiling process and its pipes. Used by one task at a time: a command, then its answer."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self.proc = proc
        self.label = label
        self.ready: dict[str, Any] = {}
        self._tail: collections.deque[str] = collections.deque(maxlen=5)
        self._stderr = asyncio.create_task(self._drain_stderr(), name=f"profiler-stderr-{proc.pid}")

    @classmethod
    async def spawn(cls, env: dict[str, str], label: str) -> ProfilerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agents.profiler",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        return cls(proc, label)

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._tail.append(line)
                log.debug("profiler on %s: %s", self.label, line)

    async def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        self.ready = await self._answer("ready", timeout_s)
        return self.ready

    async def call(self, command: dict[str, Any], expect: str, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        try:
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it exited; reading its answer reports why
        return await self._answer(expect, timeout_s)

    async def _answer(self, expect: str, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    raw = await self.proc.stdout.readline()
            except TimeoutError:
                raise ProfilerTimedOut(
                    f"profiler on {self.label} did not answer {expect!r} within {timeout_s:g}s"
                ) from None
            if not raw:
                try:
                    async with asyncio.timeout(1.0):
                        code = await self.proc.wait()
                except TimeoutError:
                    code = None
                raise ProfilerExited(f"profiler on {self.label} exited ({code}) before {expect!r}{self._why()}")
            try:
                event = json.loads(raw)
            except ValueError:
                log.warning("profiler on %s wrote a line that is not JSON: %r", self.label, raw[:200])
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "error":
                raise ProfilerRefused(f"profiler on {self.label}: {event.get('message', 'error')}")
            if event.get("event") == expect:
                return event

    def _why(self) -> str:
        return f": {self._tail[-1]}" if self._tail else ""

    async def close(self, timeout_s: float) -> None:
        """End of input asks it to exit; SIGTERM, then SIGKILL, when it does not."""
        if self.proc.returncode is None and self.proc.stdin is not None:
            self.proc.stdin.close()
            try:
                async with asyncio.timeout(timeout_s):
                    await self.proc.wait()
            except TimeoutError:
                pass
        await stop_process(self.proc, timeout_s)
        await self.reap()

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    async def reap(self) -> None:
        await self.proc.wait()
        try:
            async with asyncio.timeout(1.0):
                await self._stderr
        except TimeoutError:
            pass  # the timeout cancelled it
        await asyncio.gather(self._stderr, return_exceptions=True)
