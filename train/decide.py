"""What a run is before it trains: `prepare` checks a model, task, optimizer and run from end
to end (each failure one ConfigError, nothing compiled or written) and records the configuration
config.json holds; `check_resumable` decides whether a run directory's checkpoints can be
continued (run.steps is no difference where the steps taken keep their learning rates), and
`begin` takes the directory once the run has decided to start or resume.
"""

import dataclasses
import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from arch.errors import ConfigError
from train.checkpoint import (
    Checkpoints,
    Restored,
    SavedRun,
    config_differences,
    shape_differences,
    state_arrays,
    tree_shapes,
)
from train.logger import MetricsLogger
from train.optim import OptimConfig, learning_rate_schedule, make_optimizer
from train.run_config import RunConfig
from train.rundir import write_atomically
from train.sharding import Placement, host_batch
from train.state import TrainState
from train.step import initial_state, make_eval_step
from train.tasks.base import DataPosition, Task, check_task
from train.validate import (
    adapt_model,
    check_batch_divides,
    check_freeze_patterns,
    check_model_config,
    check_model_fits_task,
    check_sequence_length,
)


class ConfigMismatchError(ConfigError):
    """The run directory holds checkpoints of a run configured differently."""


def module_config(model: nn.Module) -> dict[str, Any]:
    """A Module's configuration: its dataclass fields, without Flax's parent and name."""
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.name not in ("parent", "name")
    }
    return {"class": type(model).__name__, **fields}


def run_config_dict(model: nn.Module, task: Task, optim: OptimConfig, run: RunConfig) -> dict:
    return {
        "model": module_config(model),
        "task": {"class": type(task).__name__, **dataclasses.asdict(task)},
        "optim": dataclasses.asdict(optim),
        "run": dataclasses.asdict(run),
    }


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A run checked from end to end, with nothing compiled and nothing written."""

    model: nn.Module
    batch: dict
    placement: Placement
    tx: Any
    abstract: TrainState
    """The initial state's shapes and dtypes (jax.eval_shape: traced, not compiled)."""
    config: dict
    optim: OptimConfig
    run_files: dict[str, str] = dataclasses.field(default_factory=dict)
    """{file name: text} the task keeps in the run directory beside config.json (e.g. the
    tokens task's tokenizer.json): see task_run_files."""


def task_run_files(task: Task) -> dict[str, str]:
    """The files a task asks its runs to keep (an optional member `run_files()` -> {file name:
    text}, read while the run is prepared, so that a missing one is refused before any write);
    begin writes them, atomically, next to config.json."""
    files = task.run_files() if hasattr(task, "run_files") else {}
    for name in files:
        if os.path.basename(name) != name or name in ("config.json", "metrics.jsonl"):
            raise ValueError(f"{type(task).__name__}.run_files() names {name!r}: not a new file")
    return files


def validation_metric_names(model: nn.Module, task: Task, abstract: TrainState, batch_size: int):
    """The metrics an evaluation reports, found by tracing one eval step (nothing compiled)."""
    batch = next(task.eval_batches("validation", batch_size))
    metrics = jax.eval_shape(make_eval_step(model, task), abstract, batch)
    means = {k: 1.0 for k in metrics if k not in ("count", "examples")}
    return sorted(task.finalize_metrics(means))


def prepare(
    model: nn.Module, task: Task, optim: OptimConfig, run: RunConfig, init_params: Any
) -> Prepared:
    """Every check of the configuration that can be made before compiling or writing: each
    failure is one ConfigError."""
    check_task(task)
    check_model_config(model)
    model = adapt_model(model, task)
    batch = host_batch(task.train_batch(DataPosition()))  # the shapes, and init's example
    check_sequence_length(model, batch)
    check_model_fits_task(model, task, batch)
    placement = Placement.for_run(run.sharding)
    check_batch_divides(task.batch_size, placement.batch_ways)
    check_batch_divides(run.eval_batch_size, placement.batch_ways, option="--eval-batch-size")
    tx = make_optimizer(optim, run.steps)
    init = functools.partial(initial_state, model, tx)
    abstract = jax.eval_shape(init, jax.random.key(run.seed), batch["inputs"], init_params)
    check_freeze_patterns(abstract.params, optim)
    keep_best = run.run_dir and run.checkpoint.enabled and run.checkpoint.keep_best
    if keep_best:
        names = validation_metric_names(model, task, abstract, run.eval_batch_size)
        if run.checkpoint.best_metric not in names:
            raise ConfigError(
                f"checkpoint.best_metric {run.checkpoint.best_metric!r} is not a validation "
                f"metric of {type(task).__name__} (it reports {', '.join(names)}); set "
                "--checkpoint.best-metric to one of them, or --checkpoint.keep-best 0"
            )
    config = run_config_dict(model, task, optim, run)
    files = task_run_files(task)
    return Prepared(model, batch, placement, tx, abstract, config, optim, files)


def run_differences(saved: SavedRun, prepared: Prepared) -> list[str]:
    """config_differences, less run.steps where the steps taken keep their learning rates with
    the new count (constant after the warm-up: the same run, extended); a stretched cosine
    would have given them other rates, so there it stays a difference."""
    differences = config_differences(saved.config, prepared.config)
    before, after = saved.config["run"]["steps"], prepared.config["run"]["steps"]
    if before == after or saved.step is None or saved.step > after:
        return differences
    optim = prepared.optim
    taken = np.arange(saved.step // optim.accumulate + 1)  # the updates made so far
    rates = [
        learning_rate_schedule(optim, max(n // optim.accumulate, 1))(taken) for n in (before, after)
    ]
    if np.array_equal(*rates):
        return [d for d in differences if not d.startswith("run.steps:")]
    return differences


def run_file_text(run: RunConfig, name: str) -> str | None:
    """The text of a run file in the run directory, None where there is none."""
    try:
        with open(os.path.join(run.run_dir, name), encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def check_resumable(saved: SavedRun | None, prepared: Prepared, run: RunConfig) -> None:
    """Refuse (ConfigError, nothing written) a run directory whose checkpoints this run cannot
    continue: another configuration (unless forced), arrays of other shapes (even if forced:
    that is not damage), or no checkpoint whose metadata can be read."""
    if saved is None or not saved.steps:
        return
    if saved.step is None:
        reasons = "; ".join(f"step {s}: {r}" for s, r in saved.unreadable.items())
        raise ConfigError(
            f"no checkpoint in {saved.directory} can be read ({reasons}); nothing was changed: "
            "restore them from a backup, or move the checkpoints directory away to start this "
            "run from step 0"
        )
    differences = run_differences(saved, prepared)
    if differences and run.checkpoint.resume != "force":
        raise ConfigMismatchError(
            f"{run.run_dir} holds checkpoints of a differently configured run "
            f"({len(differences)} field{'s differ' if len(differences) > 1 else ' differs'}: "
            f"{'; '.join(differences)}); use another "
            "--run-dir, delete its checkpoints, or pass --checkpoint.resume force to continue "
            "from them anyway"
        )
    changed = [
        name
        for name, text in prepared.run_files.items()
        if run_file_text(run, name) not in (None, text)
    ]
    if changed and run.checkpoint.resume != "force":
        raise ConfigMismatchError(
            f"{run.run_dir} holds checkpoints of a run whose {', '.join(changed)} "
            f"{'differs' if len(changed) == 1 else 'differ'} from the task's now (a corpus "
            "rebuilt with another tokenizer?); nothing was changed: use another --run-dir, or "
            "pass --checkpoint.resume force to continue anyway"
        )
    fresh = tree_shapes(jax.eval_shape(state_arrays, prepared.abstract))
    mismatched = shape_differences(saved.shapes, fresh)
    if mismatched:
        shown = "; ".join(mismatched[:6]) + (
            f"; and {len(mismatched) - 6} more" if len(mismatched) > 6 else ""
        )
        raise ConfigMismatchError(
            f"the checkpoint at step {saved.step} in {saved.directory} cannot continue this "
            f"run: {len(mismatched)} array{'s differ' if len(mismatched) > 1 else ' differs'} "
            f"({shown}); nothing was changed: use another --run-dir, or go back to the "
            "configuration that saved it"
        )


def begin(
    prepared: Prepared,
    run: RunConfig,
    saved: SavedRun | None,
    checkpoints: Checkpoints | None,
    restored: Restored | None,
    primary: bool,
    say: Any,
) -> MetricsLogger:
    """The run has decided to start (`restored` None) or to resume: from here on the run
    directory belongs to it. Clears interrupted saves, writes config.json and the task's run
    files (task_run_files) and opens the logs."""
    if restored is not None:
        differences = run_differences(saved, prepared)
        differ = f" (configuration differs: {'; '.join(differences)})" if differences else ""
        if saved.config["run"]["steps"] != run.steps and not differences:
            differ = f" (steps {saved.config['run']['steps']} -> {run.steps}: the same schedule)"
        where = f"step {restored.step} in {checkpoints.directory}"
        say(f"resuming from the checkpoint at {where}{differ}")
    if checkpoints is not None:
        checkpoints.remove_leftovers()
    if run.run_dir and primary:
        path = os.path.join(run.run_dir, "config.json")
        write_atomically(path, json.dumps(prepared.config, indent=2, default=str))
        for name, text in prepared.run_files.items():
            write_atomically(os.path.join(run.run_dir, name), text)
    return MetricsLogger(
        run.run_dir if primary else None,
        run.steps,
        run.progress if primary else "off",
        run.tensorboard,
        history=restored.history if restored is not None else None,
        first_step=restored.step if restored is not None else 0,
        config=prepared.config,
    )
