"""Ensembles: N models trained at once in one jitted step, by vectorising (`jax.vmap`) the one
shared train step over a stack of N train states. Members differ by seed (initialisation and
dropout) and by a learning-rate factor; every member sees the same batches. On one accelerator
this is the cheap way to error bars and learning-rate sweeps: one compilation, one program, the
N models' products batched together.

The learning-rate factor is the last transformation of each member's optimizer
(`member_scale`), which holds it in the optimizer state: for SGD, momentum, Adam and AdamW
(decoupled decay included) the update is linear in the learning rate, so a factor f trains as
lr * f would (tests/test_ensemble.py checks members against separate runs).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arch.errors import ConfigError
from train.loop import evaluate
from train.optim import OptimConfig, make_optimizer
from train.sharding import host_batch
from train.state import TrainState
from train.step import initial_state, make_eval_step, train_step_function
from train.tasks.base import SPLITS, DataPosition, Task, check_task
from train.validate import adapt_model, check_model_config


class MemberScaleState(NamedTuple):
    factor: jax.Array


def member_scale() -> optax.GradientTransformation:
    """Multiply the updates by the member's own factor, kept in this transformation's state."""

    def init(params: Any) -> MemberScaleState:
        del params
        return MemberScaleState(jnp.ones((), jnp.float32))

    def update(updates: Any, state: MemberScaleState, params: Any = None):
        del params
        return jax.tree.map(lambda u: u * state.factor.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def set_factors(opt_state: Any, factors: jax.Array) -> Any:
    """The stacked optimizer states with each member's MemberScaleState.factor set."""
    return jax.tree.map(
        lambda s: MemberScaleState(factors) if isinstance(s, MemberScaleState) else s,
        opt_state,
        is_leaf=lambda s: isinstance(s, MemberScaleState),
    )


def member(states: TrainState, index: int) -> TrainState:
    """One member's state out of the stack."""
    return jax.tree.map(lambda x: x[index], states)


@dataclasses.dataclass
class EnsembleResult:
    states: TrainState
    """Every leaf stacked: [N, ...]."""
    losses: np.ndarray
    """Train loss per step and member [steps, N]."""
    final: list[dict[str, dict[str, float]]]
    """Per member: split -> metrics."""


def fit_ensemble(
    model: Any,
    task: Task,
    optim: OptimConfig,
    steps: int,
    seeds: Sequence[int],
    lr_factors: Sequence[float] | None = None,
    eval_batch_size: int = 512,
) -> EnsembleResult:
    """Train len(seeds) members of `model` on `task` for `steps` steps in one vmapped step."""
    lr_factors = [1.0] * len(seeds) if lr_factors is None else list(lr_factors)
    if len(lr_factors) != len(seeds) or not seeds:
        raise ConfigError(f"need one lr factor per seed, got {len(lr_factors)} for {len(seeds)}")
    if any(not f > 0 for f in lr_factors):
        raise ConfigError(f"lr factors must be > 0, got {lr_factors}")
    check_task(task)
    model = adapt_model(model, task)
    check_model_config(model)
    tx = optax.chain(make_optimizer(optim, steps), member_scale())
    position = DataPosition()
    batch = host_batch(task.train_batch(position))

    @jax.jit
    def init_all(seeds: jax.Array, factors: jax.Array) -> TrainState:
        def one(seed: jax.Array) -> TrainState:
            return initial_state(model, tx, jax.random.key(seed), batch["inputs"])

        states = jax.vmap(one)(seeds)
        return states.replace(opt_state=set_factors(states.opt_state, factors))

    states = init_all(jnp.asarray(seeds), jnp.asarray(lr_factors, jnp.float32))
    one_step = train_step_function(model, task, tx)  # the shared step, vectorised
    step = jax.jit(jax.vmap(one_step, in_axes=(0, None)), donate_argnums=0)
    losses = []
    for _ in range(steps):
        states, metrics = step(states, batch)
        losses.append(metrics["loss"])
        position = task.next_position(position)
        batch = host_batch(task.train_batch(position))
    eval_step = make_eval_step(model, task)
    final = [
        {s: evaluate(eval_step, member(states, i), task, s, eval_batch_size) for s in SPLITS}
        for i in range(len(seeds))
    ]
    return EnsembleResult(states, np.asarray(jax.device_get(losses)), final)
