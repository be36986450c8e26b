"""fit(): the training loop shared by every model and task.

It builds the optimizer and the state, compiles the one train step (timed on its own),
runs it from an explicit data position, evaluates on the validation split every
`eval_every` steps and on every split at the end, and writes the run directory:
config.json, metrics.jsonl, summary.json and TensorBoard events.
"""

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Annotated, Any

import flax.linen as nn
import jax
import numpy as np
import tyro

from train.checkpoint import CheckpointConfig, Checkpoints, config_differences
from train.logger import MetricsLogger, Progress
from train.optim import (
    OptimConfig,
    learning_rate_schedule,
    make_optimizer,
)
from train.runtime import enable_compilation_cache
from train.sharding import Placement, ShardingConfig
from train.state import TrainState, parameter_count
from train.step import init_state, make_eval_step, make_train_step
from train.tasks.base import SPLITS, DataPosition
from train.validate import (
    adapt_model,
    check_batch_divides,
    check_freeze_patterns,
    check_model_config,
    check_model_fits_task,
    check_sequence_length,
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How long to train, how often to log and evaluate, and where to write."""

    steps: int = 1000
    """Train steps (micro-batches when gradients are accumulated)."""
    eval_every: int = 250
    log_every: int = 50
    seed: int = 0
    """Seed of parameter initialisation and dropout (the task's own seed orders the data)."""
    run_dir: str | None = None
    """Where to write config.json, metrics.jsonl, summary.json, TensorBoard (None: nowhere;
    `python -m train` then uses runs/MODEL-TASK)."""
    eval_batch_size: int = 512
    compilation_cache: bool = True
    """Keep compiled programs in a user cache directory so the next start skips compilation."""
    progress: Progress = "auto"
    tensorboard: bool = True
    checkpoint: Annotated[CheckpointConfig, tyro.conf.Suppress] = CheckpointConfig()
    """Checkpoints in RUN_DIR/checkpoints (train/checkpoint.py); re-running the same command
    with the same run directory resumes from the latest."""
    distributed: bool = False
    """Join a multi-process run (jax.distributed.initialize; `python -m train` calls it before
    touching a device): SLURM and TPU pods are detected, elsewhere set JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
    sharding: Annotated[ShardingConfig, tyro.conf.Suppress] = ShardingConfig()
    """The device mesh when more than one device is present (train/sharding.py); default:
    data parallel over every device."""

    @classmethod
    def quiet(cls, steps: int, evaluations: int = 1, **fields: Any) -> "RunConfig":
        """A run inside a study: evaluated and logged `evaluations` times (the last at the
        end), no progress output, no TensorBoard; `fields` set anything else."""
        every = max(steps // evaluations, 1)
        defaults = {
            "eval_every": every,
            "log_every": every,
            "progress": "off",
            "tensorboard": False,
            "checkpoint": CheckpointConfig(enabled=False),
        }
        return cls(steps=steps, **{**defaults, **fields})

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class ConfigMismatchError(ValueError):
    """The run directory holds checkpoints of a run configured differently."""


class Preempted(Exception):  # noqa: N818 (an event, not an error)
    """SIGTERM / SIGINT arrived: the step finished, a checkpoint was saved, the run stopped."""

    def __init__(self, message: str, step: int, signal_number: int):
        super().__init__(message)
        self.step, self.signal_number = step, signal_number


class StopSignals:
    """While active (main thread only), SIGTERM and SIGINT are recorded instead of killing the
    process, so the loop can finish its step and save; the previous handlers come back after."""

    def __init__(self, active: bool):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if self.active:
            for number in (signal.SIGTERM, signal.SIGINT):
                self.previous[number] = signal.signal(number, self.record)
        return self

    def record(self, number: int, frame: Any) -> None:
        self.received = number

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


@dataclasses.dataclass
class FitResult:
    model: nn.Module  # the model as trained (num_outputs set from the task)
    state: TrainState
    summary: dict[str, Any]
    history: list[dict[str, Any]]

    def curve(self, metric: str, split: str = "validation") -> list[tuple[int, float]]:
        """(step, value) of `metric` at every evaluation of `split`, in order."""
        return [(h["step"], h[metric]) for h in self.history if h["split"] == split]


def module_config(model: nn.Module) -> dict[str, Any]:
    """A Module's configuration: its dataclass fields, without Flax's parent and name."""
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.name not in ("parent", "name")
    }
    return {"class": type(model).__name__, **fields}


def run_config_dict(model: nn.Module, task: Any, optim: OptimConfig, run: RunConfig) -> dict:
    return {
        "model": module_config(model),
        "task": {"class": type(task).__name__, **dataclasses.asdict(task)},
        "optim": dataclasses.asdict(optim),
        "run": dataclasses.asdict(run),
    }


def evaluate(
    eval_step, state: TrainState, task: Any, split: str, batch_size: int, place=lambda b: b
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


def host_means(host: list[dict[str, Any]], task: Any, skip_non_finite: bool) -> dict:
    """Mean of each metric over the interval's steps; with skipped non-finite updates, over
    the finite steps only, and `skipped` = how many were skipped."""
    finite = [m for m in host if np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])]
    kept = finite if skip_non_finite and finite else host
    means = {k: float(np.mean([m[k] for m in kept])) for k in host[0]}
    if skip_non_finite:
        means["skipped"] = float(len(host) - len(finite))
    return task.finalize_metrics(means)


def last_good(checkpoints: Checkpoints | None) -> str:
    if checkpoints is None or not checkpoints.steps():
        return ""
    return (
        f"; the last good checkpoint (step {checkpoints.steps()[-1]}) is in {checkpoints.directory}"
    )


def resume_or_start(
    checkpoints: Checkpoints | None, state: TrainState, config: dict, run: RunConfig
) -> tuple[TrainState, DataPosition, list[dict], list[dict], int]:
    """(state, data position, history, pending step metrics, step) to continue from: the
    latest readable checkpoint of a run with the same configuration, else the fresh start."""
    fresh = (state, DataPosition(), [], [], 0)
    if checkpoints is None or not checkpoints.steps():
        return fresh
    saved = checkpoints.saved_config()
    differences = config_differences(saved, config) if saved is not None else []
    if differences and run.checkpoint.resume != "force":
        raise ConfigMismatchError(
            f"{run.run_dir} holds checkpoints of a differently configured run "
            f"({len(differences)} field{'s differ' if len(differences) > 1 else ' differs'}: "
            f"{'; '.join(differences)}); use another "
            "--run-dir, delete its checkpoints, or pass --checkpoint.resume force to continue "
            "from them anyway"
        )
    restored = checkpoints.restore(state)
    if restored is None:
        return fresh
    checkpoints.message(
        f"resuming from the checkpoint at step {restored.step} in {checkpoints.directory}"
        + (f" (configuration differs: {'; '.join(differences)})" if differences else "")
    )
    return restored.state, restored.position, restored.history, restored.pending, restored.step


def fit(
    model: nn.Module,
    task: Any,
    optim: OptimConfig = OptimConfig(),
    run: RunConfig = RunConfig(),
    init_params: Any = None,
) -> FitResult:
    """Train `model` on `task` with `optim` for `run.steps` steps through the shared train step.

    `init_params` (optional) replaces the matching part of the freshly initialised parameters,
    e.g. pretrained convolutions for transfer learning (see train.step.merge_params). With a
    run directory and checkpoints enabled, a run directory that holds checkpoints is resumed.
    """
    start = time.perf_counter()
    if run.compilation_cache:
        enable_compilation_cache()
    check_model_config(model)
    model = adapt_model(model, task)
    batch = task.train_batch(DataPosition())
    check_sequence_length(model, batch)
    check_model_fits_task(model, task, batch)
    config = run_config_dict(model, task, optim, run)
    primary = jax.process_index() == 0  # in a multi-process run only process 0 writes logs
    if run.run_dir and primary:
        os.makedirs(run.run_dir, exist_ok=True)
        with open(os.path.join(run.run_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2, default=str)

    placement = Placement.for_run(run.sharding)
    for size in (task.batch_size, run.eval_batch_size):
        check_batch_divides(size, placement.batch_ways)
    tx = make_optimizer(optim, run.steps)
    init_start = time.perf_counter()
    state = init_state(
        model, tx, batch["inputs"], run.seed, init_params, placement.state_shardings(tx)
    )
    state = jax.block_until_ready(state)
    init_time = time.perf_counter() - init_start  # compiling and running the initialisation
    check_freeze_patterns(state.params, optim)
    logger = MetricsLogger(
        run.run_dir if primary else None, run.steps, run.progress if primary else "off",
        run.tensorboard,
    )  # fmt: skip
    checkpoints = None
    if run.run_dir and run.checkpoint.enabled:
        checkpoints = Checkpoints(run.run_dir, run.checkpoint, logger.message)
    try:
        state, position, history, pending, first = resume_or_start(checkpoints, state, config, run)
        logger.restore(history, first)
        job = Job(model, task, optim, run, tx, logger, checkpoints, config, placement)
        summary = train_loop(job, state, position, pending, first)
    finally:
        logger.close()
        if checkpoints is not None:
            checkpoints.close()
    state = summary.pop("state")
    summary.update(wall_time=time.perf_counter() - start, init_time=init_time)
    if run.run_dir and primary:
        with open(os.path.join(run.run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return FitResult(model=model, state=state, summary=summary, history=logger.records)


@dataclasses.dataclass(frozen=True)
class Job:
    """What the loop works with, besides the state it carries."""

    model: nn.Module
    task: Any
    optim: OptimConfig
    run: RunConfig
    tx: Any
    logger: MetricsLogger
    checkpoints: Checkpoints | None
    config: dict
    placement: Placement


def train_loop(
    job: Job, state: TrainState, position: DataPosition, pending: list, first: int
) -> dict[str, Any]:
    """Steps first + 1 .. run.steps, logging, evaluating and checkpointing; the summary."""
    model, task, optim, run, logger, checkpoints = (
        job.model, job.task, job.optim, job.run, job.logger, job.checkpoints
    )  # fmt: skip
    place = job.placement.batch
    schedule = learning_rate_schedule(optim, max(run.steps // optim.accumulate, 1))
    compile_start = time.perf_counter()
    shardings = job.placement.step_shardings(state)
    batch = place(task.train_batch(position))
    train_step = make_train_step(model, task, job.tx, shardings).lower(state, batch).compile()
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
    with StopSignals(active=checkpoints is not None) as signals:
        for step in range(first + 1, run.steps + 1):
            state, metrics = train_step(state, batch)
            pending.append(metrics)
            position = task.next_position(position)
            if step < run.steps:
                batch = place(task.train_batch(position))
            log = not (step % run.log_every and step % run.eval_every and step != run.steps)
            save = checkpoints is not None and (
                step % save_every == 0 or step == run.steps or signals.received
            )
            if not (log or save):
                continue
            pending = jax.device_get(pending)
            # skipping non-finite updates: only parameters gone non-finite (more than
            # optim.max_skipped in a row, so the update was applied) stop the run
            only = ("param_norm",) if optim.skip_non_finite else ()
            problem = first_non_finite(pending, interval_first + 1, only)
            if problem:
                bad_step, metric, value = problem
                skipping = f" after {optim.max_skipped} skipped updates in a row" if only else ""
                raise NonFiniteError(
                    f"non-finite {metric} ({value}) at step {bad_step}{skipping}; lower "
                    "--optim.lr, set --optim.clip-norm, or --optim.skip-non-finite to skip such "
                    "updates" + last_good(checkpoints),
                    bad_step,
                    metric,
                    logger.records,
                )
            validation = None
            if log:
                elapsed = time.perf_counter() - interval_start
                train_time += elapsed
                means = host_means(pending, task, optim.skip_non_finite)
                means["lr"] = float(schedule(max(step - 1, 0) // optim.accumulate))
                means["examples_per_second"] = len(pending) * task.batch_size / elapsed
                logger.log(step, "train", means)
                pending, interval_first = [], step
                if step % run.eval_every == 0 or step == run.steps:
                    validation = evaluate(
                        eval_step, state, task, "validation", run.eval_batch_size, place
                    )
                    logger.log(step, "validation", validation)
            if save:  # with the steps since the last log, so the history resumes unchanged
                checkpoints.save(state, position, logger.records, pending, job.config, validation)
            if signals.received:
                checkpoints.close()
                name = signal.Signals(signals.received).name
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
