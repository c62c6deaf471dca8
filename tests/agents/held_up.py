"""A model kept off its core now and then, as by another process taking turns on it."""

from __future__ import annotations

import time

from agents.model_runner import ModelRunner


def held_up(runner: ModelRunner, every: int, seconds: float) -> None:
    """The runner's model is kept off the CPU for ``seconds`` on every ``every``-th call, as by
    another process on its core: the time passes, the model does no more work."""
    run, calls = runner._run, [0]

    def held(inputs):
        calls[0] += 1
        if calls[0] % every == 0:
            time.sleep(seconds)
        return run(inputs)

    runner._run = held
