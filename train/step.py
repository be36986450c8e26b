"""The one train step and the eval step, shared by every model and task.

make_train_step(model, task, tx) builds `train_step(state, batch) -> (state, metrics)`, jitted
once with the state donated. Metrics are device arrays: the loss, the task's metrics, and the
global norms of the gradients, parameters and updates; the host reduces and logs them.
"""

import functools
from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from arch.errors import ConfigError
from train.state import PyTree, TrainState

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


class LossTask(Protocol):
    """What the step needs of a task: outputs and a batch to (loss, metrics)."""

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]: ...


def apply_model(
    model: nn.Module,
    state: TrainState,
    params: PyTree,
    inputs: jax.Array,
    *,
    train: bool,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, PyTree]:
    """Forward pass; returns the outputs and the updated model state (e.g. BatchNorm statistics).

    In training the non-parameter collections are mutable; in evaluation they are read only.
    """
    variables = {"params": params, **state.model_state}
    rngs = {"dropout": rng} if rng is not None else None
    if train and state.model_state:
        return model.apply(
            variables, inputs, train=True, rngs=rngs, mutable=list(state.model_state)
        )
    return model.apply(variables, inputs, train=train, rngs=rngs), state.model_state


def all_finite(tree: PyTree) -> jax.Array:
    """True where every element of every array in `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step_function(
    model: nn.Module,
    task: LossTask,
    tx: optax.GradientTransformation,
    skip_non_finite: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure `train_step(state, batch) -> (state, metrics)`, before jit (ensembles vmap it).

    skip_non_finite: a step whose loss, gradients or resulting parameters hold a NaN or an
    infinity keeps the previous parameters, optimizer state and model state, and reports
    `skipped` = 1 (the parameters are checked too: a finite gradient times a huge learning rate
    can still overflow them, which a check of the gradients alone would let through).
    """

    def loss_fn(params: PyTree, state: TrainState, batch: Batch, rng: jax.Array):
        outputs, model_state = apply_model(
            model, state, params, batch["inputs"], train=True, rng=rng
        )
        loss, metrics = task.loss(outputs, batch)
        return loss, (metrics, model_state)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (metrics, model_state)), grads = grad_fn(state.params, state, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        update_norm = optax.tree.norm(updates)
        skipped = {}
        if skip_non_finite:
            finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(params)
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
            params = keep(params, state.params)
            opt_state = keep(opt_state, state.opt_state)
            model_state = keep(model_state, state.model_state)
            update_norm = jnp.where(finite, update_norm, 0.0)  # what was applied
            skipped = {"skipped": 1.0 - finite.astype(jnp.float32)}
        metrics = {
            "loss": loss,
            **metrics,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "update_norm": update_norm,
            **skipped,
        }
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
        )
        return new_state, metrics

    return train_step


def make_train_step(
    model: nn.Module,
    task: LossTask,
    tx: optax.GradientTransformation,
    shardings: tuple[Any, Any] | None = None,
    skip_non_finite: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The jitted `train_step(state, batch) -> (state, metrics)`; `state` is donated.

    shardings: (the state's, the batch's) to run over a device mesh (train/sharding.py); the
    function is the same, only its jit says where the arrays live. Metrics come back whole.
    skip_non_finite: see train_step_function.
    """
    train_step = train_step_function(model, task, tx, skip_non_finite)
    if shardings is None:
        return jax.jit(train_step, donate_argnums=0)
    state_sharding, batch_sharding = shardings
    whole = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, whole),
        donate_argnums=0,
    )


def make_eval_step(
    model: nn.Module, task: LossTask, shardings: tuple[Any, Any] | None = None
) -> Callable[[TrainState, Batch], Metrics]:
    """The jitted `eval_step(state, batch) -> metrics`, with 'count' = the real positions the
    mask counts (examples, or steps for per-step masks) and 'examples' = the real examples.

    Metrics are means over the batch's real positions; the host weights them by 'count', and
    per-example metrics (named "sequence_*") by 'examples'.
    shardings: (the state's, the batch's), as for the train step.
    """

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        outputs, _ = apply_model(model, state, state.params, batch["inputs"], train=False)
        loss, metrics = task.loss(outputs, batch)
        if "mask" in batch:
            mask = batch["mask"].reshape(batch["mask"].shape[0], -1)  # [b, steps or 1]
            count, examples = jnp.sum(mask), jnp.sum(jnp.any(mask > 0, axis=1))
        else:
            count = examples = jnp.asarray(jax.tree.leaves(batch["inputs"])[0].shape[0])
        return {
            "loss": loss,
            **metrics,
            "count": count.astype(jnp.float32),
            "examples": examples.astype(jnp.float32),
        }

    if shardings is None:
        return jax.jit(eval_step)
    whole = NamedSharding(shardings[1].mesh, PartitionSpec())
    return jax.jit(eval_step, in_shardings=shardings, out_shardings=whole)


def merge_params(fresh: PyTree, given: PyTree) -> PyTree:
    """`fresh` with every parameter that `given` also holds replaced by `given`'s.

    Used to start from pretrained weights: `given` may be a part of the tree (e.g. only the
    convolutions); a path that the model lacks, or a shape that differs, is an error.
    """
    flat_fresh = flax.traverse_util.flatten_dict(fresh, sep="/")
    flat_given = flax.traverse_util.flatten_dict(given, sep="/")
    unknown = sorted(set(flat_given) - set(flat_fresh))
    if unknown:
        raise ConfigError(f"init_params has parameters the model lacks: {unknown}")
    mismatched = [
        f"{path} has shape {value.shape}, the model needs {flat_fresh[path].shape}"
        for path, value in sorted(flat_given.items())
        if value.shape != flat_fresh[path].shape
    ]
    if mismatched:
        raise ConfigError(f"init_params {'; '.join(mismatched)}")
    # the model's param_dtype wins: a float32 checkpoint loads into a bfloat16 model
    given_cast = {path: value.astype(flat_fresh[path].dtype) for path, value in flat_given.items()}
    return flax.traverse_util.unflatten_dict({**flat_fresh, **given_cast}, sep="/")


def initial_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    example: jax.Array,
    given: PyTree | None = None,
) -> TrainState:
    """The fresh state for a PRNG key (traceable: jit it, or vmap it over keys)."""
    init_key, dropout_key, run_key = jax.random.split(key, 3)
    variables = dict(model.init({"params": init_key, "dropout": dropout_key}, example, train=False))
    params = variables.pop("params")
    if given is not None:
        params = merge_params(params, given)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=variables,
        opt_state=tx.init(params),
        rng=run_key,
    )


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    example_inputs: jax.Array,
    seed: int,
    init_params: PyTree | None = None,
    shardings: Callable[[TrainState], Any] | None = None,
) -> TrainState:
    """Initialise parameters (inside jit: eager init is slow), model state and optimizer state.

    `init_params`, if given, replaces the matching part of the fresh parameters (see merge_params).
    `shardings`, if given, maps the abstract state to its shardings: each array is created
    where it lives (a sharded model is never whole on one device). The arrays are committed.
    """
    # the seed is an argument, not a constant: one compiled program serves every seed
    init = functools.partial(initial_state, model, tx)
    args = (jax.random.key(seed), example_inputs, init_params)
    if shardings is None:
        state = jax.jit(init)(*args)
    else:
        state = jax.jit(init, out_shardings=shardings(jax.eval_shape(init, *args)))(*args)
    # committed to where it lies, as a state restored from a checkpoint is: the two then lower
    # to one train step program, so a resumed run finds the fresh run's in the compilation
    # cache (uncommitted, the first resume of a GPT compiled 9.6 s instead of 0.9 s)
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(state)):
        return state  # traced (jax.eval_shape, jit): there is nothing to commit
    return jax.device_put(state, jax.tree.map(lambda x: x.sharding, state))
