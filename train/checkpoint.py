"""Checkpoints over orbax-checkpoint: periodic asynchronous saves, the last N and the best N
kept, atomic writes, and everything a resumed run needs to continue bit for bit.

A checkpoint (a directory `RUN_DIR/checkpoints/STEP/`) holds two items:
- "state": the TrainState's arrays (step, params, model state, optimizer state) and the PRNG
  key as its raw key data (`jax.random.key_data`), so a typed key cannot break a restore;
- "meta" (JSON): the data position, the run's full configuration, the metrics history logged
  so far, the key's implementation name and the validation metrics of the step, if any.

Orbax writes a save into a temporary directory and renames it when complete, so an interrupted
save is never taken for a checkpoint; leftovers of one are reported and removed when the run
restarts. A finished checkpoint that cannot be read (damaged files) is reported, set aside as
`damaged-STEP`, and the previous one is used.
"""

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as keep

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
            raise ValueError("; ".join(problems))


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


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(
        self, run_dir: str, config: CheckpointConfig, message: Callable[[str], None] = print
    ):
        self.directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
        self.config, self.message = config, message
        os.makedirs(self.directory, exist_ok=True)
        for name in sorted(os.listdir(self.directory)):
            if TEMPORARY in name:
                message(f"removing an incomplete checkpoint (a save was interrupted): {name}")
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
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
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(
        self,
        state: TrainState,
        position: DataPosition,
        history: list[dict[str, Any]],
        pending: list[dict[str, Any]],
        run_config: dict,
        validation: dict[str, float] | None = None,
    ) -> None:
        """Save (in the background if asynchronous) the state after its step; `validation`
        metrics, if given, rank it for keep_best."""
        step = int(state.step)
        meta = {  # a snapshot: an asynchronous save serialises it later
            "step": step,
            "position": dataclasses.asdict(position),
            "history": json.loads(json.dumps(history)),
            "pending": [{k: float(v) for k, v in m.items()} for m in pending],  # float32 exactly
            "config": json.loads(json.dumps(run_config, default=str)),
            "rng_impl": str(jax.random.key_impl(state.rng))
            if jnp.issubdtype(state.rng.dtype, jax.dtypes.prng_key)
            else None,
        }
        metrics = None
        if validation is not None and self.config.best_metric in validation:
            metrics = {self.config.best_metric: float(validation[self.config.best_metric])}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state_arrays(state)), meta=ocp.args.JsonSave(meta)
            ),
            metrics=metrics,
            force=True,
        )

    def saved_config(self) -> dict | None:
        """The configuration stored with the latest readable checkpoint."""
        for step in reversed(self.steps()):
            try:
                meta = self.manager.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                )
                return meta["meta"]["config"]
            except Exception:  # noqa: BLE001, S112 (a damaged one: restore() reports it)
                continue
        return None

    def restore(self, fresh: TrainState) -> Restored | None:
        """The latest readable checkpoint onto the structure, dtypes and shardings of `fresh`
        (so it lands on this run's devices, whatever the saving run's devices were); None if
        there is none. Unreadable ones are reported and set aside."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_arrays(fresh))
        for step in reversed(self.steps()):
            try:
                loaded = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # noqa: BLE001 (any unreadable checkpoint)
                self.set_aside(step, error)
                continue
            arrays, meta = loaded["state"], loaded["meta"]
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
            return Restored(state, position, meta["history"], pending, step)
        return None

    def set_aside(self, step: int, error: Exception) -> None:
        source = os.path.join(self.directory, str(step))
        target = os.path.join(os.path.dirname(self.directory), f"damaged-checkpoint-{step}")
        self.message(
            f"checkpoint at step {step} cannot be read ({type(error).__name__}: "
            f"{str(error)[:200]}); moved to {target}, trying the previous one"
        )
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(source, target)
        self.manager.reload()

    def close(self) -> None:
        """Wait for a background save to finish, then release the manager (idempotent)."""
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()
            self.manager = None
