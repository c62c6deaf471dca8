"""Fixtures shared across the test tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from letmesh.zoo import build_zoo


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo repository (digits family + trivial family), trained once per test run."""
    root = tmp_path_factory.mktemp("digits-repo")
    build_zoo(root, epochs_scale=0.5)  # shorter training; accuracies are still measured on held-out data
    return root
