"""What stops a run before its last step: SIGTERM / SIGINT (the step finishes, a checkpoint is
saved: `Preempted`), and NaN or infinite values in the metrics (`NonFiniteError`, or with
skip-non-finite, too many skipped updates in a row)."""

import signal
import threading
from typing import Any

import numpy as np

from train.checkpoint import Checkpoints
from train.optim import OptimConfig
from train.tasks.base import Task


class Preempted(Exception):  # noqa: N818 (an event, not an error)
    """SIGTERM / SIGINT arrived: the step finished, a checkpoint was saved, the run stopped."""

    def __init__(self, message: str, step: int, signal_number: int):
        super().__init__(message)
        self.step, self.signal_number = step, signal_number


class StopSignals:
    """While active (main thread only), SIGTERM and SIGINT are recorded instead of killing the
    process, so the loop can finish its step and save, and start-up can stop between its phases
    without an exception raised at a random point; the previous handlers come back after."""

    def __init__(self, active: bool):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if self.active:
            for number in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(number) is not signal.SIG_IGN:  # ignored by choice: stays so
                    self.previous[number] = signal.signal(number, self.record)
        return self

    def record(self, number: int, frame: Any) -> None:
        self.received = number

    def stop_if_received(self, when: str, step: int = 0) -> None:
        """Preempted if a signal arrived (`when`: what the run was doing)."""
        if self.received:
            name = signal.Signals(self.received).name
            raise Preempted(f"{name} received {when}", step, self.received)

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinity; the message names the step and the metric.

    `step` and `metric` say where; `history` holds the records logged before it.
    """

    def __init__(self, message: str, step: int, metric: str, history: list[dict[str, Any]]):
        super().__init__(message)
        self.step, self.metric, self.history = step, metric, history


def first_non_finite(
    step_metrics: list[dict[str, np.ndarray]], first_step: int, only: tuple[str, ...] = ()
) -> tuple[int, str, float] | None:
    """(step, metric, value) of the first NaN or infinity, naming the loss first if it is one
    (`only`: look at these metrics alone)."""
    for offset, metrics in enumerate(step_metrics):
        for key in sorted(metrics, key=lambda k: k != "loss"):
            if only and key not in only:
                continue
            if not np.all(np.isfinite(metrics[key])):
                return first_step + offset, key, float(metrics[key])
    return None


def check_finite(
    pending: list[dict[str, Any]],
    first_step: int,
    optim: OptimConfig,
    checkpoints: Checkpoints | None,
    history: list[dict[str, Any]],
    in_a_row: int = 0,
) -> int:
    """NonFiniteError at the first of these steps (`pending`, from `first_step` on) whose
    metrics hold a NaN or infinity; when non-finite updates are skipped, only once more than
    optim.max_skipped steps in a row were skipped. Returns how many in a row end `pending`
    (`in_a_row`: how many ended the steps before it)."""
    advice = (
        "lower --optim.lr, set --optim.clip-norm, or --optim.skip-non-finite to skip such updates"
    )
    if not optim.skip_non_finite:
        problem = first_non_finite(pending, first_step)
        if problem:
            step, metric, value = problem
            raise NonFiniteError(
                f"non-finite {metric} ({value}) at step {step}; {advice}" + last_good(checkpoints),
                step,
                metric,
                history,
            )
        return 0
    for offset, metrics in enumerate(pending):
        in_a_row = in_a_row + 1 if metrics["skipped"] else 0
        if in_a_row > optim.max_skipped:
            step = first_step + offset
            metric = next(
                (k for k in sorted(metrics, key=lambda k: k != "loss")
                 if not np.all(np.isfinite(metrics[k]))),
                "param_norm",
            )  # fmt: skip
            raise NonFiniteError(
                f"{in_a_row} updates in a row were non-finite and skipped (steps "
                f"{step - in_a_row + 1}-{step}, more than --optim.max-skipped "
                f"{optim.max_skipped}; at step {step} the {metric} was non-finite, or the "
                "parameters would have been); lower --optim.lr or set --optim.clip-norm"
                + last_good(checkpoints),
                step,
                metric,
                history,
            )
    return in_a_row


def host_means(host: list[dict[str, Any]], task: Task, skip_non_finite: bool) -> dict:
    """Mean of each metric over the interval's steps; with skipped non-finite updates, over
    the finite steps only, and `skipped` = how many were skipped."""
    if not skip_non_finite:
        return task.finalize_metrics({k: float(np.mean([m[k] for m in host])) for k in host[0]})
    finite = [m for m in host if not m["skipped"]]
    kept = finite or host
    means = {k: float(np.mean([m[k] for m in kept])) for k in host[0] if k != "skipped"}
    means["skipped"] = float(len(host) - len(finite))
    return task.finalize_metrics(means)


def last_good(checkpoints: Checkpoints | None) -> str:
    if checkpoints is None or not checkpoints.steps():
        return ""
    return (
        f"; the last good checkpoint (step {checkpoints.steps()[-1]}) is in {checkpoints.directory}"
    )
