"""Recurrent layers side by side: other libraries' layers holding our weights, benchmark-only
formulations, and one prepared training / inference step of any of them
(experiments/recurrent_speed.py).

Legend: b batch, t time, f input features, n hidden units, g gates.
"""

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arch.rnn_cells import Cell
from arch.rnn_layer import RNN

MODES = ("train", "infer")  # a step is the forward pass, or value and gradient of mean(y^2)


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One way to run a recurrent layer: `outputs(params, inputs [b, t, f]) -> [b, t, n]`."""

    name: str
    family: Literal["ours", "flax", "torch", "proto"]
    function: str
    """What it computes: implementations with equal `function` must give equal numbers."""
    params: Any
    """JAX: the parameter tree; PyTorch: the nn.Module."""
    outputs: Callable[[Any, Any], Any]


def flax_layer(cell: nn.RNNCellBase) -> Callable:
    layer = nn.RNN(cell)
    return lambda params, inputs: layer.apply({"params": params}, inputs)


def concatenated_lstm(unroll: int) -> Callable:
    """Prototype: one [x_t, h_{t-1}] @ [[W_x], [W_h]] product per step (K = f + n), no mask."""

    def outputs(params: Any, inputs: jax.Array) -> jax.Array:
        w = params["cell"]
        kernel = jnp.concatenate([w["input_kernel"], w["recurrent_kernel"]], axis=0)  # [f+n, 4n]

        def body(state: tuple[jax.Array, jax.Array], x: jax.Array):
            c, h = state
            pre = jnp.dot(jnp.concatenate([x, h], axis=-1), kernel) + w["bias"]  # [b, 4n]
            i, f, g, o = jnp.split(pre, 4, axis=-1)
            c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)  # C_t = f_t * C_{t-1} + i_t * C~_t
            h = nn.sigmoid(o) * jnp.tanh(c)  # h_t = o_t * tanh(C_t)
            return (c, h), h

        zeros = jnp.zeros((inputs.shape[0], kernel.shape[1] // 4), jnp.float32)
        _, ys = jax.lax.scan(body, (zeros, zeros), jnp.swapaxes(inputs, 0, 1), unroll=unroll)
        return jnp.swapaxes(ys, 0, 1)  # [b, t, n]

    return outputs


def concatenated_gru(unroll: int) -> Callable:
    """Prototype (GRU reset_after): one [x_t, h_{t-1}] @ [[W_x_rz, W_x_n, 0], [W_h_rz, 0, W_h_n]]
    product per step (a third more FLOPs than two products, one call instead of two), no mask."""

    def outputs(params: Any, inputs: jax.Array) -> jax.Array:
        w = params["cell"]
        f, n = w["input_kernel"].shape[0], w["recurrent_kernel"].shape[0]
        kernel = jnp.block(
            [
                [w["input_kernel"], jnp.zeros((f, n), jnp.float32)],
                [
                    w["recurrent_kernel"][:, : 2 * n],
                    jnp.zeros((n, n), jnp.float32),
                    w["recurrent_kernel"][:, 2 * n :],
                ],
            ]
        )  # [f+n, 4n]: r and z summed, then W_x_n x and W_h_n h apart
        bias = jnp.concatenate([w["bias"], w["recurrent_bias"]])  # [4n]

        def body(h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
            pre = jnp.dot(jnp.concatenate([x, h], axis=-1), kernel) + bias  # [b, 4n]
            r, z, x_n, h_n = jnp.split(pre, 4, axis=-1)
            r, z = nn.sigmoid(r), nn.sigmoid(z)
            candidate = jnp.tanh(x_n + r * h_n)  # h~_t = tanh(W_x x_t + b + r_t * (W_h h + b_h))
            h = (1 - z) * h + z * candidate  # h_t = (1 - z_t) * h_{t-1} + z_t * h~_t
            return h, h

        h0 = jnp.zeros((inputs.shape[0], n), jnp.float32)
        _, ys = jax.lax.scan(body, h0, jnp.swapaxes(inputs, 0, 1), unroll=unroll)
        return jnp.swapaxes(ys, 0, 1)  # [b, t, n]

    return outputs


def random_weights(cell: Cell, features: int, rng: np.random.Generator) -> Any:
    """Weights with the shapes of our layer's parameters, N(0, 1/fan_in), biases included (the
    speed does not depend on the values; nonzero biases make the layout mappings checkable).
    NumPy, not `init`: an initialiser outside jit costs seconds of tiny compilations."""
    shapes = jax.eval_shape(RNN(cell).init, jax.random.key(0), jnp.zeros((1, 1, features)))
    draw = lambda s: (rng.standard_normal(s.shape) / math.sqrt(s.shape[0])).astype(np.float32)
    return jax.tree.map(draw, shapes["params"])


def flax_lstm_params(ours: Any) -> Any:
    """Our LSTM weights in Flax's (Optimized)LSTMCell layout: ii..io [f, n]; hi..ho [n, n], bias."""
    w = ours["cell"]
    split = lambda name: np.split(w[name], 4, axis=-1)
    cell = {}
    for gate, w_x, w_h, b in zip(
        "ifgo", split("input_kernel"), split("recurrent_kernel"), split("bias"), strict=True
    ):
        cell[f"i{gate}"] = {"kernel": w_x}
        cell[f"h{gate}"] = {"kernel": w_h, "bias": b}
    return {"cell": cell}


def flax_gru_params(ours: Any) -> Any:
    """Our GRU (reset_after) weights in Flax's GRUCell layout. Flax's update gate is the negation
    of ours (new_h = (1 - z) n + z h), and sigmoid(-a) = 1 - sigmoid(a): negate the z weights."""
    w = ours["cell"]
    x_r, x_z, x_n = np.split(w["input_kernel"], 3, axis=-1)
    h_r, h_z, h_n = np.split(w["recurrent_kernel"], 3, axis=-1)
    b_r, b_z, b_n = np.split(w["bias"], 3)
    return {
        "cell": {
            "ir": {"kernel": x_r, "bias": b_r},
            "iz": {"kernel": -x_z, "bias": -b_z},
            "in": {"kernel": x_n, "bias": b_n},
            "hr": {"kernel": h_r},
            "hz": {"kernel": -h_z},
            "hn": {"kernel": h_n, "bias": w["recurrent_bias"]},
        }
    }


def torch_layer(torch: Any, cell_name: str, ours: Any) -> Any:
    """PyTorch nn.LSTM / nn.GRU (batch_first) holding our weights (its kernels are [g*n, f])."""
    w = ours["cell"]
    n = w["recurrent_kernel"].shape[0]
    w_ih, w_hh, b_ih = w["input_kernel"].T.copy(), w["recurrent_kernel"].T.copy(), w["bias"].copy()
    b_hh = np.zeros_like(b_ih)
    if cell_name == "gru":
        # PyTorch's update gate is the negation of ours, as Flax's
        for array in (w_ih, w_hh, b_ih):
            array[n : 2 * n] *= -1
        b_hh[2 * n :] = w["recurrent_bias"]
    layer_class = torch.nn.LSTM if cell_name == "lstm" else torch.nn.GRU
    layer = layer_class(w_ih.shape[1], n, batch_first=True)
    with torch.no_grad():
        for name, value in [("weight_ih", w_ih), ("weight_hh", w_hh)]:
            getattr(layer, f"{name}_l0").copy_(torch.from_numpy(value))
        for name, value in [("bias_ih", b_ih), ("bias_hh", b_hh)]:
            getattr(layer, f"{name}_l0").copy_(torch.from_numpy(value))
    return layer


@dataclasses.dataclass
class Step:
    """A prepared step: `call()` runs it once to completion."""

    call: Callable[[], Any]
    compile_seconds: float | None
    first_call_seconds: float
    check: dict[str, np.ndarray]
    """What the first call computed, for the cross-check: outputs, or the input gradient."""


def prepare_jax(impl: Implementation, mode: str, inputs: np.ndarray) -> Step:
    x = jnp.asarray(inputs)
    if mode == "train":
        loss = lambda params, x: jnp.mean(jnp.square(impl.outputs(params, x)))
        function = jax.value_and_grad(loss, argnums=(0, 1))
    else:
        function = impl.outputs
    start = time.perf_counter()
    compiled = jax.jit(function).lower(impl.params, x).compile()
    compile_seconds = time.perf_counter() - start
    call = lambda: jax.block_until_ready(compiled(impl.params, x))
    start = time.perf_counter()
    result = call()
    first = time.perf_counter() - start
    check = {"input_gradient": np.asarray(result[1][1])} if mode == "train" else None
    return Step(call, compile_seconds, first, check or {"outputs": np.asarray(result)})


def prepare_torch(torch: Any, impl: Implementation, mode: str, inputs: np.ndarray) -> Step:
    layer = impl.params
    if mode == "train":
        x = torch.from_numpy(inputs).requires_grad_()
        weights = list(layer.parameters())

        def call() -> Any:
            loss = impl.outputs(layer, x).square().mean()
            return loss, torch.autograd.grad(loss, [*weights, x])

    else:
        x = torch.from_numpy(inputs)

        def call() -> Any:
            with torch.inference_mode():
                return impl.outputs(layer, x)

    start = time.perf_counter()
    result = call()
    first = time.perf_counter() - start
    if mode == "train":
        check = {"input_gradient": result[1][-1].detach().numpy().copy()}
    else:
        check = {"outputs": result.numpy().copy()}
    return Step(call, None, first, check)


def difference(check: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """Outputs: max |a - b|; input gradients (mean-of-squares loss: ~1e-7): relative to max |b|."""
    (kind, value), expected = next(iter(check.items())), next(iter(reference.values()))
    scale = 1.0 if kind == "outputs" else float(np.max(np.abs(expected)))
    return float(np.max(np.abs(value - expected))) / scale
