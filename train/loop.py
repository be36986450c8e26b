"""fit(): the training loop shared by every model and task.

It builds the optimizer and the state, compiles the one train step (timed on its own),
runs it from an explicit data position, evaluates on the validation split every
`eval_every` steps and on every split at the end, and writes the run directory:
config.json, metrics.jsonl, summary.json and TensorBoard events.
"""

import contextlib
import dataclasses
import json
import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from train.checkpoint import (
    Checkpoints,
    Restored,
    inspect_checkpoints,
)
from train.decide import (
    begin,
    check_resumable,
    prepare,
)
from train.guards import (
    Preempted,
    StopSignals,
    check_finite,
    host_means,
)
from train.logger import MetricsLogger
from train.optim import (
    OptimConfig,
    learning_rate_schedule,
)
from train.profiling import StepTrace
from train.run_config import RunConfig
from train.rundir import RunLock, write_atomically
from train.runtime import enable_compilation_cache
from train.sharding import Placement
from train.state import TrainState, parameter_count
from train.step import init_state, make_eval_step, make_train_step
from train.tasks.base import SPLITS, DataPosition, Task


@dataclasses.dataclass
class FitResult:
    model: nn.Module  # the model as trained (num_outputs set from the task)
    state: TrainState
    summary: dict[str, Any]
    history: list[dict[str, Any]]

    def curve(self, metric: str, split: str = "validation") -> list[tuple[int, float]]:
        """(step, value) of `metric` at every evaluation of `split`, in order."""
        return [(h["step"], h[metric]) for h in self.history if h["split"] == split]


def evaluate(
    eval_step, state: TrainState, task: Task, split: str, batch_size: int, place=lambda b: b
) -> dict[str, float]:
    """Metrics over every example of `split`: batch means weighted by their real positions
    (per-example "sequence_*" metrics by their real examples); `place` puts a host batch where
    the eval step expects it."""
    batches = [eval_step(state, place(b)) for b in task.eval_batches(split, batch_size)]
    batches = jax.device_get(batches)
    weights = {name: np.array([b[name] for b in batches]) for name in ("count", "examples")}
    means = {}
    for key in batches[0]:
        if key in weights:
            continue
        weight = weights["examples" if key.startswith("sequence_") else "count"]
        means[key] = float(np.dot([b[key] for b in batches], weight) / weight.sum())
    return task.finalize_metrics(means)


def fit(
    model: nn.Module,
    task: Task,
    optim: OptimConfig = OptimConfig(),
    run: RunConfig = RunConfig(),
    init_params: Any = None,
) -> FitResult:
    """Train `model` on `task` with `optim` for `run.steps` steps through the shared train step.

    `init_params` (optional) replaces the matching part of the freshly initialised parameters,
    e.g. pretrained convolutions for transfer learning (see train.step.merge_params). With a
    run directory and checkpoints enabled, a run directory that holds checkpoints is resumed.

    The run directory is the user's data: every check runs first (ConfigError, nothing compiled
    or written), then the directory is locked and its checkpoints read; a refusal leaves it
    as it was. Only once the run has decided to start or resume is anything written.
    """
    start = time.perf_counter()
    primary = jax.process_index() == 0  # in a multi-process run only process 0 writes logs
    with StopSignals(active=bool(run.run_dir)) as signals:
        if run.compilation_cache:
            enable_compilation_cache()
        prepared = prepare(model, task, optim, run, init_params)
        signals.stop_if_received("during start-up: stopped before touching the run directory")
        with RunLock(run.run_dir) if run.run_dir and primary else contextlib.nullcontext():
            use_checkpoints = bool(run.run_dir) and run.checkpoint.enabled
            saved = inspect_checkpoints(run.run_dir) if use_checkpoints else None
            check_resumable(saved, prepared, run)
            signals.stop_if_received("during start-up: stopped before training, nothing written")
            init_start = time.perf_counter()
            state = init_state(
                prepared.model,
                prepared.tx,
                prepared.batch["inputs"],
                run.seed,
                init_params,
                prepared.placement.state_shardings(
                    prepared.tx, prepared.model, prepared.batch["inputs"]
                ),
            )
            state = jax.block_until_ready(state)
            init_time = time.perf_counter() - init_start  # compiling and running the init
            say = lambda text: print(text, flush=True) if run.progress != "off" else None
            checkpoints = Checkpoints(run.run_dir, run.checkpoint, say) if use_checkpoints else None
            logger = None
            try:
                restored = checkpoints.restore(state) if saved is not None else None
                signals.stop_if_received(
                    "during start-up: stopped before training, nothing written"
                )
                logger = begin(prepared, run, saved, checkpoints, restored, primary, say)
                if checkpoints is not None:
                    checkpoints.message = logger.message
                job = Job(
                    prepared.model, task, optim, run, prepared.tx, logger, checkpoints,
                    prepared.config, prepared.placement, signals,
                )  # fmt: skip
                state = restored.state if restored is not None else state
                summary = train_loop(job, state, restored)
            finally:
                if logger is not None:
                    logger.close()
                if checkpoints is not None:
                    checkpoints.close()
            state = summary.pop("state")
            summary.update(wall_time=time.perf_counter() - start, init_time=init_time)
            if run.run_dir and primary:
                path = os.path.join(run.run_dir, "summary.json")
                write_atomically(path, json.dumps(summary, indent=2))
    return FitResult(model=prepared.model, state=state, summary=summary, history=logger.records)


@dataclasses.dataclass(frozen=True)
class Job:
    """What the loop works with, besides the state it carries."""

    model: nn.Module
    task: Task
    optim: OptimConfig
    run: RunConfig
    tx: Any
    logger: MetricsLogger
    checkpoints: Checkpoints | None
    config: dict
    placement: Placement
    signals: StopSignals


def train_loop(job: Job, state: TrainState, restored: Restored | None) -> dict[str, Any]:
    """Steps first + 1 .. run.steps (first: the `restored` checkpoint's step, else 0), logging,
    evaluating and checkpointing; the summary."""
    first, position, pending, skipped_in_a_row = 0, DataPosition(), [], 0
    if restored is not None:
        first, position, pending = restored.step, restored.position, restored.pending
        skipped_in_a_row = restored.skipped_in_a_row
    model, task, optim, run, logger, checkpoints = (
        job.model, job.task, job.optim, job.run, job.logger, job.checkpoints
    )  # fmt: skip
    place = job.placement.batch
    schedule = learning_rate_schedule(optim, max(run.steps // optim.accumulate, 1))
    compile_start = time.perf_counter()
    shardings = job.placement.step_shardings(state)
    batch = place(task.train_batch(position))
    train_step = make_train_step(model, task, job.tx, shardings, optim.skip_non_finite)
    train_step = train_step.lower(state, batch).compile()
    eval_step = make_eval_step(model, task, shardings)
    eval_step = eval_step.lower(
        state, place(next(task.eval_batches("validation", run.eval_batch_size)))
    ).compile()
    compile_time = time.perf_counter() - compile_start
    logger.message(
        f"{type(model).__name__} ({parameter_count(state.params):,} parameters) on "
        f"{type(task).__name__}: {run.steps} steps, compiled in {compile_time:.2f} s"
    )
    save_every = run.checkpoint.every or run.eval_every
    train_time, interval_start = 0.0, time.perf_counter()
    interval_first = first - len(pending)
    checked = len(pending)  # steps of `pending` already checked for non-finite values
    signals, trace = job.signals, StepTrace(run.profile, run.steps, run.run_dir)
    signals.stop_if_received("during start-up: stopped before training", first)
    for step in range(first + 1, run.steps + 1):
        state, metrics = trace(step, train_step, state, batch)
        pending.append(metrics)
        position = task.next_position(position)
        if step < run.steps:
            batch = place(task.train_batch(position))
        log = not (step % run.log_every and step % run.eval_every and step != run.steps)
        save = checkpoints is not None and (
            step % save_every == 0 or step == run.steps or signals.received
        )
        if not (log or save or signals.received):
            continue
        pending = jax.device_get(pending)
        skipped_in_a_row = check_finite(
            pending[checked:],
            interval_first + 1 + checked,
            optim,
            checkpoints,
            logger.records,
            skipped_in_a_row,
        )
        checked = len(pending)
        validation = None
        if log:
            elapsed = time.perf_counter() - interval_start
            train_time += elapsed
            means = host_means(pending, task, optim.skip_non_finite)
            means["lr"] = float(schedule(max(step - 1, 0) // optim.accumulate))
            means["examples_per_second"] = len(pending) * task.batch_size / elapsed
            logger.log(step, "train", means)
            pending, interval_first, checked = [], step, 0
            if step % run.eval_every == 0 or step == run.steps:
                validation = evaluate(
                    eval_step, state, task, "validation", run.eval_batch_size, place
                )
                logger.log(step, "validation", validation)
        if save:  # with the steps since the last log, so the history resumes unchanged
            checkpoints.save(
                state, position, logger.records, pending, job.config, validation, skipped_in_a_row
            )
        if signals.received:
            name = signal.Signals(signals.received).name
            if checkpoints is None:
                raise Preempted(
                    f"{name} received: stopped after step {step}; checkpoints are off, so the "
                    "run cannot be resumed",
                    step,
                    signals.received,
                )
            checkpoints.close()
            raise Preempted(
                f"{name} received: stopped after step {step} and saved a checkpoint in "
                f"{checkpoints.directory}; run the same command again to resume",
                step,
                signals.received,
            )
        interval_start = time.perf_counter()
    final = {
        split: evaluate(eval_step, state, task, split, run.eval_batch_size, place)
        for split in SPLITS
    }
    logger.final(run.steps, final)
    saved = f"; its checkpoint is saved in {checkpoints.directory}" if checkpoints else ""
    signals.stop_if_received(
        f"during the final evaluation: stopped after the last step {run.steps}{saved}; run the "
        "same command again to evaluate it and write summary.json",
        run.steps,
    )
    trained = run.steps - first
    return {
        "model": type(model).__name__,
        "task": type(task).__name__,
        "steps": run.steps,
        "run_dir": run.run_dir,
        "resumed_from": first,
        "parameters": parameter_count(state.params),
        "final": final,
        "compile_time": compile_time,
        "train_time": train_time,
        "examples_per_second": trained * task.batch_size / train_time if train_time else 0.0,
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "state": state,
    }
