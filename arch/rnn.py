"""The recurrent models: an embedding or feature input, stacked (optionally bidirectional) RNN
layers over any cell, and a classifier, tagger or language-model head.

Legend: b batch, t time, f input features, n hidden units, v vocabulary.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.cudnn_lstm import FastPath
from arch.errors import ConfigError
from arch.layers import Activation, check_chrono, is_token_ids
from arch.rnn_cells import CELLS, GATED_CELLS, Cell, CellName, State
from arch.rnn_layer import RNN, Backward


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
    """LSTM cells only (not used with chrono)."""
    reset_after: bool = False
    """GRU cells only: apply the reset after the recurrent product (cuDNN / PyTorch form)."""
    chrono: int | None = None
    """LSTM and GRU cells only: chrono initialisation of the gates that keep the state
    (Tallec & Ollivier 2018) with T_max = chrono time steps, about the longest dependency the
    task needs (arch/rnn_cells.py); None: the default biases (LSTM forget bias forget_bias)."""
    hoist_inputs: bool = False
    """Compute the input products of all steps before the scan (False: inside each step).
    Measured slower on a CPU (experiments/recurrent_speed.py)."""
    unroll: int = 2
    backward: Backward = "auto"
    """How the RNN layers differentiate the scan ("auto", "custom", "autodiff"): see RNN."""
    fast_path: FastPath = "auto"
    """cuDNN's fused LSTM where it applies ("auto"), never ("scan") or always ("cudnn")."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.nowrap
    def make_cell(self) -> Cell:
        check_chrono(self.chrono)
        if self.chrono is not None and self.cell not in GATED_CELLS:
            raise ConfigError(
                f"chrono initialises the gates of {' and '.join(GATED_CELLS)} cells; the "
                f"{self.cell} cell has none (set cell or leave chrono None)"
            )
        options = {
            "elman": {"activation": self.activation},
            "lstm": {"forget_bias": self.forget_bias, "chrono": self.chrono},
            "gru": {"reset_after": self.reset_after, "chrono": self.chrono},
        }[self.cell]
        # parent=None: the RNN layer that receives the cell adopts it (its params nest there)
        return CELLS[self.cell](
            self.hidden_size, **options, dtype=self.dtype, param_dtype=self.param_dtype, parent=None
        )

    @nn.nowrap
    def layer(self, name: str | None = None, reverse: bool = False) -> RNN:
        return RNN(
            cell=self.make_cell(),
            reverse=reverse,
            hoist_inputs=self.hoist_inputs,
            unroll=self.unroll,
            backward=self.backward,
            fast_path=self.fast_path,
            name=name,
        )

    @nn.nowrap
    def make_embedding(self, name: str | None = None) -> nn.Embed:
        """The token embedding [v, e] every recurrent model with token inputs uses."""
        return nn.Embed(self.vocab_size, self.embed_size, param_dtype=self.param_dtype, name=name)

    def embed(self, inputs: jax.Array) -> jax.Array:
        """Token ids [b, t] -> [b, t, e], or features [b, t, f] as they are."""
        if is_token_ids(self, inputs):
            return self.make_embedding(name="embedding")(inputs)
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

    @nn.nowrap
    def make_head(self, name: str | None = None) -> nn.Dense:
        """The output head [n, num_outputs] of every recurrent model."""
        return nn.Dense(self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def output(self, x: jax.Array) -> jax.Array:
        return self.make_head(name="head")(x.astype(self.dtype))


class RNNClassifier(RecurrentModel):
    """Many-to-one recurrent model: the last state of the sequence -> class logits / values."""

    @nn.compact
    def __call__(
        self, inputs: jax.Array, *, mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        _, finals = self.encode(inputs, mask, train)
        return self.output(self.final_output(finals[-1]))  # [b, num_outputs]


class RNNTagger(RecurrentModel):
    """Many-to-many recurrent model: an output at every step (tagging, forecasting, copying)."""

    @nn.compact
    def __call__(
        self, inputs: jax.Array, *, mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        outputs, _ = self.encode(inputs, mask, train)
        return self.output(outputs)  # [b, t, num_outputs]


class RNNLanguageModel(RecurrentModel):
    """Recurrent language model: next-token logits at every step; decodes one token at a time."""

    num_outputs: int = 256
    vocab_size: int | None = 256

    def setup(self) -> None:
        if self.bidirectional:
            raise ConfigError("a language model reads left to right: bidirectional must be False")
        if self.vocab_size is None:
            raise ConfigError("RNNLanguageModel needs vocab_size (token inputs)")
        self.embedding = self.make_embedding()
        self.layers = [self.layer() for _ in range(self.num_layers)]  # layers_0, layers_1, ...
        self.dropout = nn.Dropout(self.dropout_rate)
        self.head = self.make_head()

    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        """Token ids [b, t] -> next-token logits [b, t, v]."""
        x = self.embedding(inputs)  # [b, t, e]
        for i, layer in enumerate(self.layers):
            x = x if i == 0 else self.dropout(x, deterministic=not train)
            x, _ = layer(x)  # [b, t, n]
        return self.head(x.astype(self.dtype))

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
        return self.head(x.astype(self.dtype)), new_cache
