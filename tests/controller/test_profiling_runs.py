"""Profiling runs in flight, as `letmesh profile` and `letmesh up` report them."""

from __future__ import annotations

from pathlib import Path

from controller.profiling import ProfilingRuns
from controller.repository import scan_repository
from letmesh.zoo import build_trivial
from protocol.types import DeviceInfo

CPU = DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=2, memory_bytes=2**30)


def test_a_run_reads_starting_until_its_agent_reports_then_its_progress_then_nothing(tmp_path: Path) -> None:
    build_trivial(tmp_path)
    runs = ProfilingRuns()
    (command,) = runs.commands("local", (CPU,), list(scan_repository(tmp_path).variants.values()), ())
    assert runs.describe() == ("local: starting",)
    runs.progress("local", command.request_id, 3, 14, done=False)
    assert runs.describe() == ("local: 3/14",)
    runs.progress("local", command.request_id, 14, 14, done=True)
    assert runs.describe() == ()
