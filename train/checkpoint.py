"""Checkpoints over orbax-checkpoint: periodic asynchronous saves, the last N and the best N
kept, atomic writes, and everything a resumed run needs to continue bit for bit.

A checkpoint (a directory `RUN_DIR/checkpoints/STEP/`) holds two items:
- "state": the TrainState's arrays (step, params, model state, optimizer state) and the PRNG
  key as its raw key data (`jax.random.key_data`), so a typed key cannot break a restore;
- "meta" (JSON): the data position, the run's full configuration, the metrics history logged
  so far, the key's implementation name and the validation metrics of the step, if any.

Orbax writes a save into a temporary directory and renames it when complete, so an interrupted
save is never taken for a checkpoint; leftovers of one are reported and removed once the run has
decided to resume or start. Before deciding, `inspect_checkpoints` reads the directory without
writing anything (the saved configuration, the arrays' shapes), so a refusal touches nothing. A
finished checkpoint that cannot be read (damaged files) is reported, set aside as
`RUN_DIR/damaged-checkpoint-STEP` (`-STEP.2`, ... if that name is taken), and the previous one is
used; when none can be read the run refuses and moves nothing. A save that fails (a full disk)
is one StorageError naming the step, the path and the checkpoint that was kept.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as keep

from arch.errors import ConfigError
from train.rundir import StorageError, os_reason
from train.state import TrainState
from train.tasks.base import DataPosition

TEMPORARY = ".orbax-checkpoint-tmp"
NOT_COMPARED = {
    "run.progress",
    "run.tensorboard",
    "run.compilation_cache",
    "run.run_dir",
    "run.checkpoint.resume",
    "run.checkpoint.asynchronous",
    "run.checkpoint.keep_last",
    "run.checkpoint.keep_best",
    "run.sharding.tensor_axes",  # where arrays live; runs saved before it existed resume
    "run.profile",  # a trace of some steps; the same
}
"""Fields that may change between a run and its resumption: they do not change the numbers."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save, what to keep, and whether to resume."""

    enabled: bool = True
    """Save checkpoints when the run has a run directory."""
    every: int | None = None
    """Steps between saves (None: at every evaluation); a multiple of log_every, so that no
    logged interval is cut in two. The last step is always saved."""
    keep_last: int = 2
    keep_best: int = 1
    """Also keep this many checkpoints with the best validation `best_metric` (0: none)."""
    best_metric: str = "loss"
    best_mode: Literal["min", "max"] = "min"
    resume: Literal["auto", "force"] = "auto"
    """"auto": continue from the latest checkpoint of the run directory if its configuration is
    this run's, refuse (listing the differing fields) if not; "force": continue anyway."""
    asynchronous: bool = True
    """Write in a background thread while training goes on (orbax's async checkpointing)."""

    def __post_init__(self) -> None:
        problems = []
        if self.every is not None and self.every < 1:
            problems.append(f"checkpoint.every must be >= 1 (or None), got {self.every}")
        if self.keep_last < 1:
            problems.append(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")
        if self.keep_best < 0:
            problems.append(f"checkpoint.keep_best must be >= 0, got {self.keep_best}")
        if self.best_mode not in ("min", "max"):
            problems.append(f"checkpoint.best_mode must be 'min' or 'max', got {self.best_mode!r}")
        if self.resume not in ("auto", "force"):
            problems.append(f"checkpoint.resume must be 'auto' or 'force', got {self.resume!r}")
        if problems:
            raise ConfigError("; ".join(problems))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 0.001, ...} from nested dicts."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """'field: saved -> current' for every field that differs (JSON-normalised), except those
    in NOT_COMPARED."""
    normalise = lambda c: flatten(json.loads(json.dumps(c, default=str)))
    before, after = normalise(saved), normalise(current)
    return [
        f"{key}: {before.get(key, '(absent)')!r} -> {after.get(key, '(absent)')!r}"
        for key in sorted(set(before) | set(after))
        if key not in NOT_COMPARED and before.get(key) != after.get(key)
    ]


def state_arrays(state: TrainState) -> dict[str, Any]:
    rng = state.rng
    typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
    return {
        "step": state.step,
        "params": state.params,
        "model_state": state.model_state,
        "opt_state": state.opt_state,
        "rng_key_data": jax.random.key_data(rng) if typed else rng,
    }


@dataclasses.dataclass
class Restored:
    state: TrainState
    position: DataPosition
    history: list[dict[str, Any]]
    """The records logged up to the checkpoint."""
    pending: list[dict[str, float]]
    """Per-step train metrics since the last logged record (averaged into the next one)."""
    step: int
    skipped_in_a_row: int = 0
    """How many updates in a row were skipped as non-finite up to this step."""


def restored_from(arrays: dict[str, Any], meta: dict[str, Any], step: int) -> Restored:
    """A checkpoint's restored "state" arrays and "meta" as the state and position to go on."""
    rng = arrays["rng_key_data"]
    if meta.get("rng_impl"):
        rng = jax.random.wrap_key_data(rng, impl=meta["rng_impl"])
    state = TrainState(
        step=arrays["step"],
        params=arrays["params"],
        model_state=arrays["model_state"],
        opt_state=arrays["opt_state"],
        rng=rng,
    )
    position = DataPosition(**meta["position"])
    pending = [{k: np.float32(v) for k, v in m.items()} for m in meta["pending"]]
    in_a_row = meta.get("skipped_in_a_row", 0)
    return Restored(state, position, meta["history"], pending, step, in_a_row)


def error_reason(error: BaseException) -> str:
    """'ValueError: DATA_LOSS: Error reading ...': the type and the first line of the message."""
    return f"{type(error).__name__}: {os_reason(error)}"[:300]


@contextlib.contextmanager
def quiet_orbax(level: int = logging.ERROR) -> Iterator[None]:
    """Orbax logs through absl, and its abandoned writes through asyncio's logger ("Task
    exception was never retrieved"): hide their messages below `level` (a read-only manager
    warns that it is read-only; failures are reported by us, once, in our own words)."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level_before in zip(loggers, previous, strict=True):
            logger.setLevel(level_before)


def drop_closed_event_loop_errors() -> None:
    """After a failed write, tensorstore still completes the save's other writes and calls back
    into orbax's event loop, which the failure closed: each callback's "RuntimeError: Event loop
    is closed" would print a traceback as an unraisable exception, from a writer thread, at any
    time. The failure is reported once, as StorageError: drop exactly those unraisables (any
    other goes to the previous hook). Installed once per process, for its whole life, since the
    callbacks can outlive the checkpoint manager."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_event_loops", False):
        return

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_closed_event_loops = True
    sys.unraisablehook = hook


def handlers() -> dict[str, Any]:
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """What a run directory's checkpoints say, read without writing anything."""

    directory: str
    steps: list[int]
    """The complete checkpoints, oldest first."""
    step: int | None
    """The latest whose configuration and array shapes could be read (None: none could)."""
    config: dict | None
    shapes: dict[str, tuple[int, ...]]
    """'params/hidden_0/kernel' -> shape, of every array of that checkpoint's state."""
    unreadable: dict[int, str]
    """Newer checkpoints whose metadata could not be read: step -> reason."""


def tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'params/hidden_0/kernel' -> shape for every array (or array metadata) in `tree`."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    part = lambda k: getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
    name = lambda path: "/".join(str(part(k)) for k in path)
    return {name(path): tuple(leaf.shape) for path, leaf in flat}


def inspect_checkpoints(run_dir: str) -> SavedRun | None:
    """The run directory's checkpoints, read only (None if it has no checkpoints directory)."""
    directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
    if not os.path.isdir(directory):
        return None
    unreadable: dict[int, str] = {}
    with quiet_orbax(logging.CRITICAL):
        options = ocp.CheckpointManagerOptions(read_only=True)
        manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers())
        try:
            steps = sorted(manager.all_steps())
            for step in reversed(steps):
                try:
                    meta = manager.restore(
                        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                    )["meta"]
                    shapes = tree_shapes(manager.item_metadata(step)["state"])
                except Exception as error:  # noqa: BLE001 (any unreadable checkpoint)
                    unreadable[step] = error_reason(error)
                    continue
                return SavedRun(directory, steps, step, meta["config"], shapes, unreadable)
        finally:
            manager.close()
    return SavedRun(directory, steps, None, None, {}, unreadable)


def shape_differences(saved: dict[str, tuple], fresh: dict[str, tuple]) -> list[str]:
    """'params/hidden_0/kernel: (64, 128) saved, (64, 64) now' for each array that differs,
    and the arrays that only one side has: parameters first, then model state, then the rest
    (the optimizer state follows its parameters)."""
    names = sorted(
        set(saved) | set(fresh),
        key=lambda n: (not n.startswith("params/"), not n.startswith("model_state/"), n),
    )
    differences = []
    for name in names:
        if name not in fresh:
            differences.append(f"{name}: only in the checkpoint")
        elif name not in saved:
            differences.append(f"{name}: not in the checkpoint")
        elif tuple(saved[name]) != tuple(fresh[name]):
            differences.append(f"{name}: {tuple(saved[name])} saved, {tuple(fresh[name])} now")
    return differences


class Checkpoints:
    """The checkpoints of one run directory, for a run that has decided to start or resume."""

    def __init__(
        self, run_dir: str, config: CheckpointConfig, message: Callable[[str], None] = print
    ):
        self.directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
        self.config, self.message = config, message
        self.failed: str | None = None
        # orbax's writer threads log their failures (with tracebacks) while training goes on;
        # a failure is reported once, by save() or close(), as StorageError
        self.quiet = quiet_orbax(logging.CRITICAL)
        self.quiet.__enter__()
        drop_closed_event_loop_errors()
        self.saving: int | None = None
        """The step of the save that may still be running in the background."""
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as error:
            raise StorageError(f"cannot create {self.directory}: {os_reason(error)}") from None
        policies: list[Any] = [keep.LatestN(config.keep_last)]
        if config.keep_best:
            sign = 1.0 if config.best_mode == "max" else -1.0  # BestN keeps the largest
            policies.append(
                keep.BestN(
                    get_metric_fn=lambda m: sign * m[config.best_metric],
                    n=config.keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=keep.AnyPreservationPolicy(policies),
            enable_async_checkpointing=config.asynchronous,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers()
        )

    def remove_leftovers(self) -> None:
        """Remove what interrupted saves left behind (never taken for checkpoints)."""
        for name in sorted(os.listdir(self.directory)):
            if TEMPORARY in name:
                self.message(f"removing an incomplete checkpoint (a save was interrupted): {name}")
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_kept(self) -> str:
        """'the checkpoint at step 40 in DIR' (the newest complete one), or that none is."""
        steps = [s for s in self.steps() if os.path.isdir(os.path.join(self.directory, str(s)))]
        if not steps:
            return f"no complete checkpoint exists in {self.directory} yet"
        return f"the checkpoint at step {steps[-1]} in {self.directory} is complete and kept"

    def fail(self, step: int | None, error: BaseException) -> StorageError:
        """The one message for a save that could not be written."""
        at = f"of step {step} " if step is not None else ""
        self.failed = (
            f"could not write the checkpoint {at}to {self.directory} ({os_reason(error)}); "
            f"{self.latest_kept()}; free space (or fix the path) and run the same command again "
            "to resume from it"
        )
        return StorageError(self.failed)

    def save(
        self,
        state: TrainState,
        position: DataPosition,
        history: list[dict[str, Any]],
        pending: list[dict[str, Any]],
        run_config: dict,
        validation: dict[str, float] | None = None,
        skipped_in_a_row: int = 0,
    ) -> None:
        """Save (in the background if asynchronous) the state after its step; `validation`
        metrics, if given, rank it for keep_best. A failed save, this one or an earlier one
        still running in the background, raises StorageError."""
        step = int(state.step)
        meta = {  # a snapshot: an asynchronous save serialises it later
            "step": step,
            "position": dataclasses.asdict(position),
            "history": json.loads(json.dumps(history)),
            "pending": [{k: float(v) for k, v in m.items()} for m in pending],  # float32 exactly
            "config": json.loads(json.dumps(run_config, default=str)),
            "skipped_in_a_row": skipped_in_a_row,
            "rng_impl": str(jax.random.key_impl(state.rng))
            if jnp.issubdtype(state.rng.dtype, jax.dtypes.prng_key)
            else None,
        }
        metrics = None
        if validation is not None and self.config.best_metric in validation:
            metrics = {self.config.best_metric: float(validation[self.config.best_metric])}
        with quiet_orbax(logging.CRITICAL):
            try:
                self.manager.wait_until_finished()  # a failure of the previous save shows here
            except Exception as error:  # noqa: BLE001 (any failed write)
                raise self.fail(self.saving, error) from None
            self.saving = step
            try:
                self.manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state_arrays(state)),
                        meta=ocp.args.JsonSave(meta),
                    ),
                    metrics=metrics,
                    force=True,
                )
            except Exception as error:  # noqa: BLE001 (any failed write)
                raise self.fail(step, error) from None

    def restore(self, fresh: TrainState) -> Restored | None:
        """The latest readable checkpoint onto the structure, dtypes and shardings of `fresh`
        (so it lands on this run's devices, whatever the saving run's devices were); None if
        there is none. Unreadable ones newer than it are reported and set aside; if none can
        be read, ConfigError, and nothing is moved."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_arrays(fresh))
        failures: list[tuple[int, BaseException]] = []
        for step in reversed(self.steps()):
            try:
                with quiet_orbax(logging.CRITICAL):
                    loaded = self.manager.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                        ),
                    )
            except Exception as error:  # noqa: BLE001 (any unreadable checkpoint)
                failures.append((step, error))
                continue
            for bad_step, error in failures:
                self.set_aside(bad_step, error)
            return restored_from(loaded["state"], loaded["meta"], step)
        if failures:
            reasons = "; ".join(f"step {s}: {error_reason(e)}" for s, e in failures)
            raise ConfigError(
                f"no checkpoint in {self.directory} can be read ({reasons}); nothing was "
                "changed: restore them from a backup, or move the checkpoints directory away to "
                "start this run from step 0"
            )
        return None

    def set_aside(self, step: int, error: BaseException) -> None:
        """Move an unreadable checkpoint out of the way, under a name no other one has."""
        source = os.path.join(self.directory, str(step))
        base = os.path.join(os.path.dirname(self.directory), f"damaged-checkpoint-{step}")
        target, copy = base, 1
        while os.path.exists(target):
            copy += 1
            target = f"{base}.{copy}"
        self.message(
            f"checkpoint at step {step} cannot be read ({error_reason(error)}); moved to "
            f"{target}, trying the previous one"
        )
        shutil.move(source, target)
        self.manager.reload()

    def close(self) -> None:
        """Wait for a background save to finish, then release the manager (idempotent). A
        background save that failed raises StorageError (once)."""
        if self.manager is None:
            return
        manager, self.manager = self.manager, None
        with quiet_orbax(logging.CRITICAL):
            try:
                manager.wait_until_finished()
            except Exception as error:  # noqa: BLE001 (any failed write)
                if self.failed is None:
                    raise self.fail(self.saving, error) from None
            finally:
                with contextlib.suppress(Exception):
                    manager.close()
                if self.failed is None:  # after a failure its abandoned writes log as they go
                    self.quiet.__exit__(None, None, None)
