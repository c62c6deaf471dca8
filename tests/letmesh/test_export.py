"""Profiling a module for its manifest runs torch on one thread, whatever the process uses."""

from __future__ import annotations

import torch

from letmesh.export import BUILD_THREADS, profile_module
from letmesh.manifest import MAX_BATCH


def test_profile_runs_on_the_build_threads_and_restores_the_process_count() -> None:
    seen: list[int] = []

    def module(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return x * 2

    before = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS + 1)
    try:
        profile = profile_module(module, 4)
        assert set(seen) == {BUILD_THREADS}
        assert torch.get_num_threads() == BUILD_THREADS + 1
    finally:
        torch.set_num_threads(before)
    assert set(profile) == {"1", str(MAX_BATCH)}
    assert all(ms >= 0 for ms in profile.values())
