"""Recurrent networks: Elman, LSTM and GRU cells, one RNN layer over any cell, and the models.

Legend: b batch, t time, f input features, n hidden units, g gates, v vocabulary.

A cell owns its weights (W_x `input_kernel` [f, g*n], W_h `recurrent_kernel` [n, g*n], `bias`
[g*n]) and one step of its equations, written as a pure function of those weights so that the
RNN layer can run it under `jax.lax.scan`. The input product W_x x_t + b is computed either
inside the scanned body, one step at a time ("fused"), or for every step at once before the
scan ("hoisted", one large matrix product); the two give the same numbers. The defaults, fused
with two steps per loop iteration (unroll 2), are the fastest measured on a 2-core CPU
(experiments/recurrent_speed.py). Gates are laid out in PyTorch's order (LSTM i, f, g, o;
GRU r, z, n). The state is kept in float32 whatever the compute dtype.
"""

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.cudnn_lstm import FastPath, cudnn_lstm, use_cudnn
from arch.errors import ConfigError
from arch.layers import Activation, activation_fn
from arch.recurrent_scan import scan_forward, scan_with_custom_backward

CellName = Literal["elman", "lstm", "gru"]
Backward = Literal["auto", "custom", "autodiff"]
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
        loop (arch/recurrent_scan.py)."""
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
    """Initial bias of the forget gate: 1 keeps memory by default (Jozefowicz et al. 2015)."""
    dtype: str = "float32"
    param_dtype: str = "float32"
    num_gates: ClassVar[int] = 4

    @nn.nowrap
    def bias_init(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        n = self.hidden_size
        return jnp.zeros(shape, dtype).at[n : 2 * n].set(self.forget_bias)  # b_f

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
    dtype: str = "float32"
    param_dtype: str = "float32"
    num_gates: ClassVar[int] = 3
    custom_backward_is_faster: ClassVar[bool] = False  # training 0.88x autodiff's at T = 256

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
    """Time steps per loop iteration: 2 measured fastest on a 2-core CPU (GRU training
    1.11-1.19x over 1, inference up to 1.29x; LSTM ties); compile size stays constant."""
    backward: Backward = "auto"
    """"custom": weight gradients as large products after the reverse loop, for separable cells
    (arch/recurrent_scan.py); "autodiff": JAX's transpose of the scan; "auto": the one
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


class RecurrentModel(nn.Module):
    """Shared configuration and body of the recurrent models: embedding, stacked layers."""

    num_outputs: int = 10
    cell: CellName = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    dropout_rate: float = 0.0
    """Dropout between layers (not on the recurrent connections)."""
    vocab_size: int | None = None
    """Token inputs [b, t] are embedded; None: inputs are features [b, t, f]."""
    embed_size: int = 64
    activation: Activation = "tanh"
    """Elman cells only."""
    forget_bias: float = 1.0
    """LSTM cells only."""
    reset_after: bool = False
    """GRU cells only: apply the reset after the recurrent product (cuDNN / PyTorch form)."""
    hoist_inputs: bool = False
    """Compute the input products of all steps before the scan (False: inside each step).
    Measured slower on a 2-core CPU (inference 0.4-0.7x): experiments/recurrent_speed.py."""
    unroll: int = 2
    backward: Backward = "auto"
    """How the RNN layers differentiate the scan ("auto", "custom", "autodiff"): see RNN."""
    fast_path: FastPath = "auto"
    """cuDNN's fused LSTM where it applies ("auto"), never ("scan") or always ("cudnn")."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.nowrap
    def make_cell(self) -> Cell:
        options = {
            "elman": {"activation": self.activation},
            "lstm": {"forget_bias": self.forget_bias},
            "gru": {"reset_after": self.reset_after},
        }[self.cell]
        # parent=None: the RNN layer that receives the cell adopts it (its params nest there)
        return CELLS[self.cell](
            self.hidden_size, **options, dtype=self.dtype, param_dtype=self.param_dtype, parent=None
        )

    @nn.nowrap
    def layer(self, name: str | None = None, reverse: bool = False) -> RNN:
        return RNN(
            self.make_cell(),
            reverse,
            self.hoist_inputs,
            self.unroll,
            self.backward,
            self.fast_path,
            name=name,
        )

    def embed(self, inputs: jax.Array) -> jax.Array:
        """Token ids [b, t] -> [b, t, e], or features [b, t, f] as they are."""
        if jnp.issubdtype(inputs.dtype, jnp.integer):
            if self.vocab_size is None:
                raise ConfigError(
                    f"{type(self).__name__} got token ids {inputs.shape} but vocab_size is None; "
                    "set --model.vocab-size"
                )
            return nn.Embed(self.vocab_size, self.embed_size, param_dtype=self.param_dtype)(inputs)
        if inputs.ndim != 3:
            raise ConfigError(
                f"{type(self).__name__} expects sequences [batch, time, features] or token ids "
                f"[batch, time], got shape {tuple(inputs.shape)}"
            )
        return inputs

    def encode(
        self, inputs: jax.Array, mask: jax.Array | None, train: bool
    ) -> tuple[jax.Array, list[State]]:
        """Stacked layers over the sequence: (outputs [b, t, n or 2n], final state per layer)."""
        x = self.embed(inputs)
        finals = []
        for i in range(self.num_layers):
            if i > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            outputs, final = self.layer(f"layer_{i}")(x, mask)
            if self.bidirectional:
                backward, backward_final = self.layer(f"layer_{i}_backward", reverse=True)(x, mask)
                outputs = jnp.concatenate([outputs, backward], axis=-1)  # [b, t, 2n]
                final = (final, backward_final)
            x, finals = outputs, finals + [final]
        return x, finals

    @nn.nowrap
    def final_output(self, final: State) -> jax.Array:
        """h_T of the last layer (forward and backward concatenated when bidirectional)."""
        cell = self.make_cell()
        if self.bidirectional:
            forward, backward = final
            return jnp.concatenate([cell.output(forward), cell.output(backward)], axis=-1)
        return cell.output(final)

    def head(self, x: jax.Array) -> jax.Array:
        return nn.Dense(
            self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype, name="head"
        )(x.astype(self.dtype))


class RNNClassifier(RecurrentModel):
    """Many-to-one recurrent model: the last state of the sequence -> class logits / values."""

    @nn.compact
    def __call__(
        self, inputs: jax.Array, *, mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        _, finals = self.encode(inputs, mask, train)
        return self.head(self.final_output(finals[-1]))  # [b, num_outputs]


class RNNTagger(RecurrentModel):
    """Many-to-many recurrent model: an output at every step (tagging, forecasting, copying)."""

    @nn.compact
    def __call__(
        self, inputs: jax.Array, *, mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        outputs, _ = self.encode(inputs, mask, train)
        return self.head(outputs)  # [b, t, num_outputs]


class RNNLanguageModel(RecurrentModel):
    """Recurrent language model: next-token logits at every step; decodes one token at a time."""

    num_outputs: int = 256
    vocab_size: int | None = 256

    def setup(self) -> None:
        if self.bidirectional:
            raise ConfigError("a language model reads left to right: bidirectional must be False")
        if self.vocab_size is None:
            raise ConfigError("RNNLanguageModel needs vocab_size (token inputs)")
        self.embedding = nn.Embed(self.vocab_size, self.embed_size, param_dtype=self.param_dtype)
        self.layers = [self.layer() for _ in range(self.num_layers)]  # layers_0, layers_1, ...
        self.dropout = nn.Dropout(self.dropout_rate)
        self.output_layer = nn.Dense(
            self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype
        )

    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        """Token ids [b, t] -> next-token logits [b, t, v]."""
        x = self.embedding(inputs)  # [b, t, e]
        for i, layer in enumerate(self.layers):
            x = x if i == 0 else self.dropout(x, deterministic=not train)
            x, _ = layer(x)  # [b, t, n]
        return self.output_layer(x.astype(self.dtype))

    @nn.nowrap
    def init_cache(self, batch_size: int, max_len: int | None = None) -> list[State]:
        """The decoding state: one cell state per layer (its size does not depend on length)."""
        return [self.make_cell().initial_state(batch_size) for _ in range(self.num_layers)]

    def decode_step(self, cache: Sequence[State], tokens: jax.Array) -> tuple[jax.Array, list]:
        """tokens [b] -> (next-token logits [b, v], the updated cache)."""
        x = self.embedding(tokens)  # [b, e]
        new_cache = []
        for state, layer in zip(cache, self.layers, strict=True):
            state, x = layer.step(state, x)  # [b, n]
            new_cache.append(state)
        return self.output_layer(x.astype(self.dtype)), new_cache
