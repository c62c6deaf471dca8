"""The goodput benchmark's regime: measured by default, fixed by --slo-ms / --max-batch."""

from __future__ import annotations

import pytest

from benchmarks import goodput

SERVED_MS = {1: 2.0, 2: 3.0, 4: 5.0, 8: 9.0, 16: 17.0}


def test_by_default_the_slo_is_the_measured_one_and_the_max_batch_fits_half_of_it() -> None:
    opts = goodput.parse_options(["--models", "small"])
    assert goodput.regime(SERVED_MS, 40.0, opts) == (40.0, 16)
    assert goodput.regime(SERVED_MS, 12.0, opts) == (12.0, 4)


def test_a_fixed_slo_and_max_batch_replace_what_the_host_measured() -> None:
    assert goodput.regime(SERVED_MS, 40.0, goodput.parse_options(["--models", "small", "--slo-ms", "20"])) == (20.0, 8)
    fixed = goodput.parse_options(["--models", "medium", "--slo-ms", "300", "--max-batch", "16"])
    assert goodput.regime(SERVED_MS, 12.0, fixed) == (300.0, 16)
    assert goodput.regime(SERVED_MS, 12.0, goodput.parse_options(["--max-batch", "2"])) == (12.0, 2)


@pytest.mark.parametrize("argv", [
    ["--slo-ms", "100"],  # both models: one SLO cannot suit both
    ["--models", "small", "--slo-ms", "0"],
    ["--models", "small", "--max-batch", "0"],
])
def test_nonsense_regimes_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        goodput.parse_options(argv)
