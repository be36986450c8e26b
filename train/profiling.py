"""`--profile START:STOP`: a jax.profiler trace of train steps START to STOP (inclusive) in
RUN_DIR/profile, every step annotated as "train" with its step number, so that TensorBoard's
profile plugin and Perfetto (ui.perfetto.dev, on the perfetto_trace.json.gz it also writes)
show where each step begins and ends."""

import os
import sys
from collections.abc import Callable
from typing import Any

import jax

from arch.errors import ConfigError


def profile_steps(spec: str | None, steps: int) -> tuple[int, int] | None:
    """(START, STOP) of a `--profile` value, checked against the run's steps."""
    if spec is None:
        return None
    start, _, stop = spec.partition(":")
    if not (start.isdigit() and stop.isdigit() and 1 <= int(start) <= int(stop) <= steps):
        raise ConfigError(
            f"--profile takes START:STOP with 1 <= START <= STOP <= steps ({steps}), got {spec!r}"
        )
    return int(start), int(stop)


class StepTrace:
    """Runs the train steps: steps START to STOP inside the trace, each annotated."""

    def __init__(self, spec: str | None, steps: int, run_dir: str | None):
        self.steps = profile_steps(spec, steps)
        self.directory = os.path.join(run_dir or ".", "profile")
        self.active = False

    def __call__(self, step: int, train_step: Callable, state: Any, batch: Any) -> Any:
        """train_step(state, batch), traced if `step` is one of the profiled steps."""
        if self.steps is None or not self.steps[0] <= step <= self.steps[1]:
            return train_step(state, batch)
        if not self.active:  # START, or the first step of a run resumed inside the range
            jax.block_until_ready(state)  # the steps before it stay out of the trace
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.active = True
        last = step == self.steps[1]
        try:
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                out = train_step(state, batch)
            if last:
                jax.block_until_ready(out)
        finally:
            if last or sys.exc_info()[0] is not None:
                jax.profiler.stop_trace()
                self.active = False
        return out
