"""Recurrent cells against their textbook equations in NumPy and against Flax's built-in cells.

Legend: b batch, t time, f input features, n hidden units.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    CELLS,
    HIDDEN,
    TOLERANCE,
    layer_function,
    random_variables,
)

from arch.rnn_layer import RNN

# The textbook equations in NumPy (float64), one step at a time.


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def numpy_elman(weights, xs, activation="tanh"):
    act = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0)}[activation]
    w_x, w_h, b = weights["input_kernel"], weights["recurrent_kernel"], weights["bias"]
    h = np.zeros((xs.shape[0], w_h.shape[0]))
    outputs = []
    for x in np.swapaxes(xs, 0, 1):
        h = act(x @ w_x + h @ w_h + b)  # h_t = act(W_x x_t + W_h h_{t-1} + b)
        outputs.append(h)
    return np.stack(outputs, axis=1), h


def numpy_lstm(weights, xs):
    w_x, w_h, b = weights["input_kernel"], weights["recurrent_kernel"], weights["bias"]
    c = h = np.zeros((xs.shape[0], w_h.shape[0]))
    outputs = []
    for x in np.swapaxes(xs, 0, 1):
        i, f, g, o = np.split(x @ w_x + h @ w_h + b, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)  # C_t = f_t * C_{t-1} + i_t * C~_t
        h = sigmoid(o) * np.tanh(c)  # h_t = o_t * tanh(C_t)
        outputs.append(h)
    return np.stack(outputs, axis=1), (c, h)


def numpy_gru(weights, xs, reset_after=False):
    w_xr, w_xz, w_xn = np.split(weights["input_kernel"], 3, axis=-1)
    w_hr, w_hz, w_hn = np.split(weights["recurrent_kernel"], 3, axis=-1)
    b_r, b_z, b_n = np.split(weights["bias"], 3)
    h = np.zeros((xs.shape[0], w_hr.shape[0]))
    outputs = []
    for x in np.swapaxes(xs, 0, 1):
        r = sigmoid(x @ w_xr + h @ w_hr + b_r)
        z = sigmoid(x @ w_xz + h @ w_hz + b_z)
        if reset_after:
            candidate = np.tanh(x @ w_xn + b_n + r * (h @ w_hn + weights["recurrent_bias"]))
        else:
            candidate = np.tanh(x @ w_xn + (r * h) @ w_hn + b_n)
        h = (1 - z) * h + z * candidate
        outputs.append(h)
    return np.stack(outputs, axis=1), h


NUMPY_CELLS = {
    "elman": numpy_elman,
    "elman_relu": lambda w, xs: numpy_elman(w, xs, "relu"),
    "lstm": numpy_lstm,
    "gru": numpy_gru,
    "gru_reset_after": lambda w, xs: numpy_gru(w, xs, reset_after=True),
}


@pytest.mark.parametrize("hoist_inputs", [False, True])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_follows_its_textbook_equations(name, hoist_inputs, inputs, cell_variables):
    variables = cell_variables[name]
    weights = jax.tree.map(lambda w: np.asarray(w, np.float64), variables["params"]["cell"])
    expected = NUMPY_CELLS[name](weights, inputs.astype(np.float64))
    got = layer_function(name, hoist_inputs=hoist_inputs)(variables, inputs)
    assert got[0].dtype == jnp.float32
    chex.assert_trees_all_close(got, expected, **TOLERANCE)
    assert float(np.std(expected[0])) > 0.1  # a real signal, not saturated or vanishing


# Flax's built-in cells under a mapping of their per-gate Dense weights to ours.


def from_simple_cell(flax_params):
    return {
        "input_kernel": flax_params["i"]["kernel"],
        "recurrent_kernel": flax_params["h"]["kernel"],
        "bias": flax_params["i"]["bias"],
    }


def from_lstm_cell(flax_params):
    gates = "ifgo"  # Flax sums the input product (no bias) and the recurrent product (bias)
    return {
        "input_kernel": jnp.concatenate([flax_params[f"i{g}"]["kernel"] for g in gates], -1),
        "recurrent_kernel": jnp.concatenate([flax_params[f"h{g}"]["kernel"] for g in gates], -1),
        "bias": jnp.concatenate([flax_params[f"h{g}"]["bias"] for g in gates], -1),
    }


def from_gru_cell(flax_params):
    # Flax: h' = (1 - z) n + z h; ours: h' = (1 - z') h + z' n, so z' = 1 - z = sigma(-pre_z)
    sign = {"r": 1, "z": -1, "n": 1}
    return {
        "input_kernel": jnp.concatenate(
            [sign[g] * flax_params[f"i{g}"]["kernel"] for g in "rzn"], -1
        ),
        "recurrent_kernel": jnp.concatenate(
            [sign[g] * flax_params[f"h{g}"]["kernel"] for g in "rzn"], -1
        ),
        "bias": jnp.concatenate([sign[g] * flax_params[f"i{g}"]["bias"] for g in "rzn"], -1),
        # n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): the same placement as reset_after
        "recurrent_bias": flax_params["hn"]["bias"],
    }


FLAX_CELLS = {
    "simple_cell": (nn.SimpleCell, "elman", from_simple_cell),
    "lstm_cell": (nn.LSTMCell, "lstm", from_lstm_cell),
    "optimized_lstm_cell": (nn.OptimizedLSTMCell, "lstm", from_lstm_cell),
    "gru_cell": (nn.GRUCell, "gru_reset_after", from_gru_cell),
}


@pytest.mark.parametrize("flax_name", list(FLAX_CELLS))
def test_cell_equals_flax_builtin_cell(flax_name, inputs):
    flax_cell, ours, to_ours = FLAX_CELLS[flax_name]
    flax_rnn = nn.RNN(flax_cell(HIDDEN), return_carry=True)
    flax_variables = random_variables(flax_rnn, inputs, seed=3)
    variables = {"params": {"cell": to_ours(flax_variables["params"]["cell"])}}
    layer = RNN(CELLS[ours]())

    @jax.jit
    def both(flax_variables, variables):
        flax_state, flax_outputs = flax_rnn.apply(flax_variables, inputs)
        return (flax_outputs, flax_state), layer.apply(variables, inputs)

    flax_result, our_result = both(flax_variables, variables)
    # the mapped weights have exactly the shapes of ours
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        lambda s: s.shape, jax.eval_shape(layer.init, jax.random.key(0), inputs)
    )
    chex.assert_trees_all_close(our_result, flax_result, **TOLERANCE)
