"""The RNN layer: a recurrent cell run over time by `lax.scan`, with autodiff's backward pass
or our own.

Legend: b batch, t time, f input features, n hidden units, g gates.

Autodiff of a scanned step accumulates the weight gradients inside the reverse loop: at every
step x_t^T dpre_t and h_{t-1}^T dpre_t, [f, b] x [b, g*n] products with only K = b rows, added
into [f, g*n] carries. For a separable cell (step = update(state, W_x x_t + b, W_h h_{t-1}),
see `Cell.separable`) the reverse loop only has to carry what is truly sequential,

    d state_{t-1} = d update_t / d state_{t-1} + (d h_proj_t) W_h^T,

and to emit d x_proj_t and d h_proj_t [b, g*n]; the weight and input gradients are then a few
large products over all t*b rows after the loop (how cuDNN and oneDNN write their RNN backward
passes). The cell's own `project_inputs` / `recurrent_product` / `update` are differentiated
with `jax.vjp`, so the hand-written part is only the order of the work, not the calculus: any
separable cell, compute dtype or mask gets it for free, and tests compare it with autodiff.
Forward residuals: the state before each step and both projections, [t, b, (s + 2g) n].
"""

from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.cudnn_lstm import FastPath, cudnn_lstm, use_cudnn
from arch.errors import ConfigError
from arch.rnn_cells import Cell, State

Backward = Literal["auto", "custom", "autodiff"]


def keep_where(mask: jax.Array, new: State, old: State) -> State:
    """`new` where mask [b] is 1, `old` where it is 0 (a padded step changes nothing)."""
    return jax.tree.map(lambda a, b: jnp.where(mask[:, None] > 0, a, b), new, old)


def masked_output(cell: Any, mask: jax.Array, new: State, old: State) -> tuple[State, jax.Array]:
    """(state, output) of a step under its mask: padded steps keep the state and output zeros."""
    state = keep_where(mask, new, old)
    return state, cell.output(state) * mask[:, None]


def scan_forward(
    cell: Any,
    weights: dict,
    state: State,
    xs: jax.Array,
    masks: jax.Array,
    *,
    reverse: bool,
    unroll: int,
    hoist: bool,
    save: bool = False,
) -> tuple[State, jax.Array, Any]:
    """xs [t, b, f], masks [t, b] -> (final state, outputs [t, b, n], residuals or None).

    hoist: W_x x_t + b for all steps as one [t*b, f] x [f, g*n] product before the loop.
    save: also return, per step, the state before it and both projections (for the custom
    backward pass).
    """
    time, batch, features = xs.shape
    if hoist:
        xs = cell.project_inputs(weights, xs.reshape(time * batch, features))
        xs = xs.reshape(time, batch, -1)  # [t, b, g*n]

    def body(state: State, step_inputs: tuple[jax.Array, jax.Array]) -> tuple:
        x, mask = step_inputs
        x_proj = x if hoist else cell.project_inputs(weights, x)
        if not save:
            new_state, output = masked_output(cell, mask, cell.step(weights, state, x_proj), state)
            return new_state, (output, None)
        h_proj = cell.recurrent_product(weights, state)
        new_state, output = masked_output(cell, mask, cell.update(state, x_proj, h_proj), state)
        return new_state, (output, (state, x_proj, h_proj))

    final, (outputs, saved) = jax.lax.scan(body, state, (xs, masks), reverse=reverse, unroll=unroll)
    return final, outputs, saved


def flat_rows(tree: Any) -> Any:
    """[t, b, ...] -> [t*b, ...] for every leaf."""
    return jax.tree.map(lambda a: a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]), tree)


def scan_with_custom_backward(cell: Any, *, reverse: bool, unroll: int, hoist: bool) -> Callable:
    """`run(weights, state, xs, masks) -> (outputs [t, b, n], final state)` for a separable
    cell, differentiable through the backward pass described at the top of this file."""
    options = {"reverse": reverse, "unroll": unroll, "hoist": hoist}

    @jax.custom_vjp
    def run(weights: dict, state: State, xs: jax.Array, masks: jax.Array) -> tuple:
        final, outputs, _ = scan_forward(cell, weights, state, xs, masks, **options)
        return outputs, final

    def run_forward(weights: dict, state: State, xs: jax.Array, masks: jax.Array) -> tuple:
        final, outputs, saved = scan_forward(cell, weights, state, xs, masks, **options, save=True)
        return (outputs, final), (weights, xs, masks, saved)

    def run_backward(residuals: tuple, cotangents: tuple) -> tuple:
        weights, xs, masks, (states, x_projs, h_projs) = residuals
        d_outputs, d_final = cotangents

        # W_h h + b_h is affine in the state, so its pullback is the same at every step
        first_state = jax.tree.map(lambda a: a[0], states)
        _, pullback_h = jax.vjp(lambda s: cell.recurrent_product(weights, s), first_state)

        def body(d_state: State, step: tuple) -> tuple:
            d_output, mask, state, x_proj, h_proj = step
            # recomputing the elementwise update measured faster than storing its residuals
            update = lambda s, xp, hp: masked_output(cell, mask, cell.update(s, xp, hp), s)
            _, pullback = jax.vjp(update, state, x_proj, h_proj)
            d_state, d_x_proj, d_h_proj = pullback((d_state, d_output))
            (d_state_through_h,) = pullback_h(d_h_proj)  # (d h_proj_t) W_h^T
            return jax.tree.map(jnp.add, d_state, d_state_through_h), (d_x_proj, d_h_proj)

        steps = (d_outputs, masks, states, x_projs, h_projs)
        d_initial, (d_x_projs, d_h_projs) = jax.lax.scan(
            body, d_final, steps, reverse=not reverse, unroll=unroll
        )
        # the large products, K = t*b: x^T d x_proj, h_{t-1}^T d h_proj, d x_proj W_x^T
        _, pullback_x = jax.vjp(cell.project_inputs, weights, flat_rows(xs))
        d_weights_x, d_xs = pullback_x(flat_rows(d_x_projs))
        _, pullback_h = jax.vjp(lambda w: cell.recurrent_product(w, flat_rows(states)), weights)
        (d_weights_h,) = pullback_h(flat_rows(d_h_projs))
        d_weights = jax.tree.map(jnp.add, d_weights_x, d_weights_h)
        return d_weights, d_initial, d_xs.reshape(xs.shape), jnp.zeros_like(masks)

    run.defvjp(run_forward, run_backward)
    return run


class RNN(nn.Module):
    """Runs a cell over a sequence with `jax.lax.scan`.

    inputs [b, t, f], mask [b, t] (1: a real step; a padded step leaves the state unchanged and
    outputs zeros) -> (outputs [b, t, n], final state). `reverse` runs from the last step to the
    first (outputs stay aligned with the inputs).
    """

    cell: Cell
    reverse: bool = False
    hoist_inputs: bool = False
    unroll: int = 2
    """Time steps per loop iteration: 2 measured fastest on a CPU (experiments/recurrent_speed.py);
    compile size stays constant."""
    backward: Backward = "auto"
    """"custom": weight gradients as large products after the reverse loop, for separable cells
    (below); "autodiff": JAX's transpose of the scan; "auto": the one
    measured faster for the cell (`Cell.custom_backward_is_faster`). Same numbers."""
    fast_path: FastPath = "auto"
    """"auto": cuDNN's fused LSTM where it applies (GPU, LSTM, float32, no mask, forward;
    arch/cudnn_lstm.py), else the scan; "scan": always the scan; "cudnn": cuDNN or an error."""

    def __call__(
        self, inputs: jax.Array, mask: jax.Array | None = None, initial_state: State | None = None
    ) -> tuple[jax.Array, State]:
        batch, time, features = inputs.shape
        weights = self.cell.weights(features)
        state = self.cell.initial_state(batch) if initial_state is None else initial_state
        if use_cudnn(self.fast_path, self.cell, inputs, mask, self.reverse):
            return cudnn_lstm(weights, state, inputs)
        xs = jnp.swapaxes(inputs, 0, 1)  # [t, b, f]
        masks = jnp.ones((time, batch)) if mask is None else jnp.swapaxes(mask, 0, 1)
        masks = masks.astype(jnp.float32)  # [t, b]
        options = {"reverse": self.reverse, "unroll": self.unroll, "hoist": self.hoist_inputs}
        if self.backward == "custom" and not self.cell.separable:
            raise ConfigError(
                f"{type(self.cell).__name__} is not separable (step = update(state, W_x x + b, "
                "W_h h)), so it has no custom backward pass; use backward='autodiff' or 'auto'"
            )
        if self.backward == "custom" or (
            self.backward == "auto" and self.cell.separable and self.cell.custom_backward_is_faster
        ):
            run = scan_with_custom_backward(self.cell, **options)
            outputs, state = run(weights, state, xs, masks)
        else:
            state, outputs, _ = scan_forward(self.cell, weights, state, xs, masks, **options)
        return jnp.swapaxes(outputs, 0, 1), state  # [b, t, n]

    def step(self, state: State, x: jax.Array) -> tuple[State, jax.Array]:
        """One step for decoding: x [b, f] -> (new state, output [b, n])."""
        weights = self.cell.weights(x.shape[-1])
        state = self.cell.step(weights, state, self.cell.project_inputs(weights, x))
        return state, self.cell.output(state)
