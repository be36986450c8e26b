"""Recurrent cells: Elman, LSTM and GRU, each one step of its equations.

Legend: b batch, t time, f input features, n hidden units, g gates.

A cell owns its weights (W_x `input_kernel` [f, g*n], W_h `recurrent_kernel` [n, g*n], `bias`
[g*n]) and one step of its equations, written as a pure function of those weights so that the
RNN layer (arch/rnn_layer.py) can run it under `jax.lax.scan`. The input product W_x x_t + b is
computed either inside the scanned body, one step at a time ("fused"), or for every step at
once before the scan ("hoisted", one large matrix product); the two give the same numbers.
Gates are laid out in PyTorch's order (LSTM i, f, g, o; GRU r, z, n). The state is kept in
float32 whatever the compute dtype.

Chrono initialisation (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?"): a
gated cell's `chrono = T_max` draws the biases of the gates that decide how much of the state is
kept so that each unit starts with a characteristic time u ~ U(1, T_max - 1) (`chrono_bias`,
arch/layers.py) instead of the 2 to 4 steps that a bias of 0 or 1 gives (sigma(0) = 0.5,
sigma(1) = 0.73 kept per step). None (the default) keeps the biases below. The draw uses its
own key, folded from the bias's, so every other initial value is the same with or without it.
"""

from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.errors import ConfigError
from arch.layers import Activation, activation_fn, check_chrono, chrono_bias

CellName = Literal["elman", "lstm", "gru"]
GATED_CELLS = ("lstm", "gru")
"""The cells with a `chrono` field (gates that decide how much of the state is kept)."""
CHRONO_STREAM = 0x636872  # "chr": fold_in(bias key, this) draws the chrono biases
State = Any  # a cell's state: h [b, n] (Elman, GRU) or (c, h) (LSTM)
Weights = dict[str, jax.Array]


def matmul(x: jax.Array, kernel: jax.Array, dtype: str) -> jax.Array:
    """x @ kernel in the compute dtype, accumulated and returned in float32."""
    return jnp.dot(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)


class Cell(nn.Module):
    """Base of the cells: weight creation and the input product; subclasses write `step`."""

    num_gates: ClassVar[int] = 1

    @nn.compact
    def weights(self, input_size: int) -> Weights:
        """The cell's weights for inputs of `input_size` features (created at init)."""
        n, g = self.hidden_size, self.num_gates

        def recurrent_init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
            # an independent orthogonal [n, n] block per gate, side by side: [n, g*n]
            blocks = [
                nn.initializers.orthogonal()(k, (n, n), dtype) for k in jax.random.split(key, g)
            ]
            return jnp.concatenate(blocks, axis=-1)

        return {
            "input_kernel": self.param(
                "input_kernel",
                nn.initializers.lecun_normal(),
                (input_size, g * n),
                self.param_dtype,
            ),
            "recurrent_kernel": self.param(
                "recurrent_kernel", recurrent_init, (n, g * n), self.param_dtype
            ),
            "bias": self.param("bias", self.bias_init, (g * n,), self.param_dtype),
            **self.extra_weights(),
        }

    @nn.nowrap
    def extra_weights(self) -> Weights:
        return {}

    @nn.nowrap
    def bias_init(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        return jnp.zeros(shape, dtype)

    @nn.nowrap
    def chrono_draw(self, key: jax.Array, dtype: Any) -> jax.Array:
        """log u [n], u ~ U(1, chrono - 1): the chrono draw, from its own key folded from the
        bias's key (so the other parameters' initial values do not depend on `chrono`)."""
        check_chrono(self.chrono)
        key = jax.random.fold_in(key, CHRONO_STREAM)
        return chrono_bias(key, (self.hidden_size,), self.chrono, dtype)

    @nn.nowrap
    def project_inputs(self, weights: Weights, x: jax.Array) -> jax.Array:
        """W_x x + b for inputs [..., f] -> [..., g*n] (float32)."""
        return matmul(x, weights["input_kernel"], self.dtype) + weights["bias"].astype(jnp.float32)

    @nn.nowrap
    def initial_state(self, batch_size: int) -> State:
        return jnp.zeros((batch_size, self.hidden_size), jnp.float32)

    @nn.nowrap
    def output(self, state: State) -> jax.Array:
        """The cell's output h_t from its state."""
        return state

    @nn.nowrap
    def step(self, weights: Weights, state: State, x_proj: jax.Array) -> State:
        """One time step, given x_proj = W_x x_t + b [b, g*n]; returns the new state."""
        return self.update(state, x_proj, self.recurrent_product(weights, state))

    @property
    def separable(self) -> bool:
        """The step is `update(state, x_proj, recurrent_product(weights, state))`: the weights
        act only through two products, whose gradients the RNN layer can take after its reverse
        loop (arch/rnn_layer.py)."""
        return True

    custom_backward_is_faster: ClassVar[bool] = True
    """What backward="auto" picks for a separable cell, by measurement on a 2-core CPU
    (experiments/recurrent_speed.py): the custom backward pass or autodiff."""

    @nn.nowrap
    def recurrent_product(self, weights: Weights, state: State) -> jax.Array:
        """W_h h_{t-1} [b, g*n] (float32); works on any leading shape of the state."""
        return matmul(self.output(state), weights["recurrent_kernel"], self.dtype)

    @nn.nowrap
    def update(self, state: State, x_proj: jax.Array, h_proj: jax.Array) -> State:
        """The elementwise rest of the step, given x_proj = W_x x_t + b and h_proj = W_h h_{t-1}."""
        raise NotImplementedError


class ElmanCell(Cell):
    """Elman cell: h_t = act(W_x x_t + W_h h_{t-1} + b)."""

    hidden_size: int
    activation: Activation = "tanh"
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.nowrap
    def update(self, h: jax.Array, x_proj: jax.Array, h_proj: jax.Array) -> jax.Array:
        return activation_fn(self.activation)(x_proj + h_proj)  # h_t = act(W_x x + W_h h + b)


class LSTMCell(Cell):
    """LSTM cell (Hochreiter & Schmidhuber 1997, with a forget gate); state (C, h)."""

    hidden_size: int
    forget_bias: float = 1.0
    """Initial bias of the forget gate: 1 keeps memory by default (Jozefowicz et al. 2015).
    Not used when `chrono` is set."""
    chrono: int | None = None
    """Chrono initialisation with T_max = chrono time steps: b_f = log u, u ~ U(1, T_max - 1)
    per unit, and b_i = -b_f (Tallec & Ollivier 2018); b_g, b_o stay 0. In C_t = f_t C_{t-1} +
    i_t C~_t, f = sigma(log u) = u / (1 + u) keeps C for about 1 / (1 - f) = 1 + u steps, and
    i = sigma(-log u) = 1 - f, so C starts as a running average over that many steps. None:
    b_f = forget_bias, the other biases 0."""
    dtype: str = "float32"
    param_dtype: str = "float32"
    num_gates: ClassVar[int] = 4

    @nn.nowrap
    def bias_init(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        n = self.hidden_size
        if self.chrono is None:
            return jnp.zeros(shape, dtype).at[n : 2 * n].set(self.forget_bias)  # b_f
        if self.forget_bias != 1.0:
            raise ConfigError(
                f"chrono draws the forget bias, so forget_bias={self.forget_bias} would be "
                "ignored: set one of them"
            )
        b_f = self.chrono_draw(key, dtype)  # log u in [0, log(T_max - 1)]
        return jnp.zeros(shape, dtype).at[:n].set(-b_f).at[n : 2 * n].set(b_f)  # b_i = -b_f

    @nn.nowrap
    def initial_state(self, batch_size: int) -> State:
        zeros = jnp.zeros((batch_size, self.hidden_size), jnp.float32)
        return (zeros, zeros)  # (C_0, h_0)

    @nn.nowrap
    def output(self, state: State) -> jax.Array:
        return state[1]

    @nn.nowrap
    def update(self, state: State, x_proj: jax.Array, h_proj: jax.Array) -> State:
        c, _ = state
        pre = x_proj + h_proj  # W [x_t, h_{t-1}] + b for the four gates at once: [b, 4n]
        i, f, g, o = jnp.split(pre, 4, axis=-1)
        i = nn.sigmoid(i)  # i_t = sigma(W_i [x_t, h_{t-1}] + b_i)
        f = nn.sigmoid(f)  # f_t = sigma(W_f [x_t, h_{t-1}] + b_f)
        g = jnp.tanh(g)  # C~_t = tanh(W_C [x_t, h_{t-1}] + b_C)
        o = nn.sigmoid(o)  # o_t = sigma(W_o [x_t, h_{t-1}] + b_o)
        c = f * c + i * g  # C_t = f_t * C_{t-1} + i_t * C~_t
        h = o * jnp.tanh(c)  # h_t = o_t * tanh(C_t)
        return (c, h)


class GRUCell(Cell):
    """GRU cell (Cho et al. 2014); `reset_after` applies the reset after W_h (cuDNN, PyTorch)."""

    hidden_size: int
    reset_after: bool = False
    """False: h~_t = tanh(W_x x_t + W_h (r_t * h_{t-1}) + b), as in the paper; True:
    h~_t = tanh(W_x x_t + b + r_t * (W_h h_{t-1} + b_h)), with a recurrent bias b_h."""
    chrono: int | None = None
    """Chrono initialisation with T_max = chrono time steps: b_z = -log u, u ~ U(1, T_max - 1)
    per unit (both forms); b_r, b_n (and b_h) stay 0. Derivation: here h_t = (1 - z_t) h_{t-1}
    + z_t h~_t, so z writes and the kept fraction 1 - z = sigma(-b_z) plays the LSTM's forget
    gate. Chrono makes that gate's bias log u: -b_z = log u gives 1 - z = u / (1 + u), and h
    decays as (u / (1 + u))^k ~ exp(-k / (1 + u)), a characteristic time of about 1 + u steps.
    Hence b_z = -log u, in [-log(T_max - 1), 0]. (PyTorch's and Flax's GRU write h_t = (1 - z)
    h~_t + z h_{t-1}, where z keeps: there the same rule gives b_z = +log u.) None: all biases
    0."""
    dtype: str = "float32"
    param_dtype: str = "float32"
    num_gates: ClassVar[int] = 3
    custom_backward_is_faster: ClassVar[bool] = False  # autodiff measured faster for the GRU

    @nn.nowrap
    def bias_init(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        if self.chrono is None:
            return jnp.zeros(shape, dtype)
        n = self.hidden_size
        keep = self.chrono_draw(key, dtype)  # log u: the bias of the kept fraction 1 - z
        return jnp.zeros(shape, dtype).at[n : 2 * n].set(-keep)  # b_z = -log u

    @nn.nowrap
    def extra_weights(self) -> Weights:
        if not self.reset_after:
            return {}
        zeros = nn.initializers.zeros_init()
        shape = (self.hidden_size,)
        return {"recurrent_bias": self.param("recurrent_bias", zeros, shape, self.param_dtype)}

    @property
    def separable(self) -> bool:
        return self.reset_after  # the paper's form multiplies r_t * h_{t-1} before W_h

    @nn.nowrap
    def recurrent_product(self, weights: Weights, h: jax.Array) -> jax.Array:
        """reset_after: W_h h_{t-1} + [0, 0, b_h] [..., 3n] (float32)."""
        n = self.hidden_size
        bias = weights["recurrent_bias"].astype(jnp.float32)
        bias = jnp.concatenate([jnp.zeros((2 * n,), jnp.float32), bias])  # b_h on the n part
        return matmul(h, weights["recurrent_kernel"], self.dtype) + bias

    @nn.nowrap
    def update(self, h: jax.Array, x_proj: jax.Array, h_proj: jax.Array) -> jax.Array:
        """reset_after: the gates from x_proj = W_x x_t + b and h_proj = W_h h_{t-1} + b_h."""
        x_r, x_z, x_n = jnp.split(x_proj, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(h_proj, 3, axis=-1)
        r = nn.sigmoid(x_r + h_r)  # r_t = sigma(W_r [x_t, h_{t-1}] + b_r)
        z = nn.sigmoid(x_z + h_z)  # z_t = sigma(W_z [x_t, h_{t-1}] + b_z)
        candidate = jnp.tanh(x_n + r * h_n)  # h~_t = tanh(W_x x_t + b + r_t * (W_h h + b_h))
        return (1 - z) * h + z * candidate  # h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

    @nn.nowrap
    def step(self, weights: Weights, h: jax.Array, x_proj: jax.Array) -> jax.Array:
        if self.reset_after:
            return super().step(weights, h, x_proj)
        n = self.hidden_size
        w_h = weights["recurrent_kernel"]
        x_r, x_z, x_n = jnp.split(x_proj, 3, axis=-1)
        h_rz = matmul(h, w_h[:, : 2 * n], self.dtype)
        r = nn.sigmoid(x_r + h_rz[:, :n])  # r_t = sigma(W_r [x_t, h_{t-1}] + b_r)
        z = nn.sigmoid(x_z + h_rz[:, n:])  # z_t = sigma(W_z [x_t, h_{t-1}] + b_z)
        # h~_t = tanh(W_x x_t + W_h (r_t * h_{t-1}) + b)
        candidate = jnp.tanh(x_n + matmul(r * h, w_h[:, 2 * n :], self.dtype))
        return (1 - z) * h + z * candidate  # h_t = (1 - z_t) * h_{t-1} + z_t * h~_t


CELLS: dict[str, type[Cell]] = {"elman": ElmanCell, "lstm": LSTMCell, "gru": GRUCell}
