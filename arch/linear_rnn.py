"""Models on linear recurrences: a residual block (LayerNorm, a mixer from
arch/linear_mixers.py, a gated MLP) stacked into a classifier, a tagger and a language model
that decodes with a constant-size state.

Legend: b batch, t time, f input features, d model width, n state width, v vocabulary.
"""

from typing import Any, Literal

import flax.linen as nn
import jax

from arch.errors import ConfigError
from arch.layers import is_token_ids
from arch.linear_mixers import LRU, MinGRU, MinLSTM, SelectiveSSM, dense
from arch.linear_scan import ScanMethod

Mixer = Literal["lru", "mingru", "minlstm", "mamba"]
MIXERS: dict[str, type[nn.Module]] = {
    "lru": LRU,
    "mingru": MinGRU,
    "minlstm": MinLSTM,
    "mamba": SelectiveSSM,
}


class GatedMLP(nn.Module):
    """The gated feed-forward block: W_o (gelu(W_g x) * W_u x)."""

    features: int
    hidden_size: int
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gate = dense(self.hidden_size, "gate", self.dtype, self.param_dtype)(x)
        up = dense(self.hidden_size, "up", self.dtype, self.param_dtype)(x)
        return dense(self.features, "down", self.dtype, self.param_dtype)(nn.gelu(gate) * up)


class LinearRecurrentBlock(nn.Module):
    """A residual block: x + mixer(LayerNorm(x)), then x + GatedMLP(LayerNorm(x))."""

    mixer: Mixer
    features: int
    state_size: int
    ffn_hidden: int
    scan: ScanMethod = "auto"
    log_space: bool = False
    expand: int = 2
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self) -> None:
        if self.mixer not in MIXERS:
            raise ConfigError(f"unknown mixer {self.mixer!r}; choose one of {sorted(MIXERS)}")
        options = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.mix = MIXERS[self.mixer](self.features, **self.sizes(), **options)
        self.norms = [nn.LayerNorm(**options) for _ in range(2)]
        self.mlp = GatedMLP(self.features, self.ffn_hidden, **options)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.mix(self.norms[0](x), method=self.scan)  # [b, t, d]
        return x + self.mlp(self.norms[1](x))

    @nn.nowrap
    def sizes(self) -> dict[str, Any]:
        """The mixer's state width under its own name (and minGRU / minLSTM's log_space)."""
        if self.mixer in ("mingru", "minlstm"):
            return {"hidden_size": self.state_size, "log_space": self.log_space}
        if self.mixer == "mamba":
            return {"state_size": self.state_size, "expand": self.expand}
        return {"state_size": self.state_size}

    @nn.nowrap
    def initial_state(self, batch: int) -> Any:
        return MIXERS[self.mixer](self.features, **self.sizes(), parent=None).initial_state(batch)

    def step(self, state: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [b, d] -> (state, [b, d]): one position, a constant-size state."""
        state, mixed = self.mix.step(state, self.norms[0](x))
        x = x + mixed
        return state, x + self.mlp(self.norms[1](x))


class LinearRecurrentModel(nn.Module):
    """Shared configuration and body of the linear-recurrence models: embedding (token ids) or
    projection (features), `num_layers` residual blocks, final LayerNorm."""

    num_outputs: int = 10
    vocab_size: int | None = None
    mixer: Mixer = "lru"
    num_layers: int = 2
    features: int = 64
    state_size: int = 64
    """n: the LRU's complex state, minGRU / minLSTM's hidden width, or the selective SSM's
    states per channel (Mamba uses 16)."""
    ffn_hidden: int | None = None
    """None: 2 * features."""
    log_space: bool = False
    """minGRU / minLSTM: the paper's log-space form (positive candidates; the parallel scan on
    logarithms)."""
    expand: int = 2
    """Mamba: channels per model unit (e = expand * d)."""
    scan: ScanMethod = "auto"
    """"auto": sequential on CPU, where it measured faster than the associative scan
    (experiments/linear_scan_speed.py), parallel on accelerators; both give the same numbers."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self) -> None:
        options = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        if self.vocab_size is not None:
            self.embedding = nn.Embed(self.vocab_size, self.features, param_dtype=self.param_dtype)
        self.projection = dense(self.features, "projection", **options)
        self.blocks = [
            LinearRecurrentBlock(
                mixer=self.mixer,
                features=self.features,
                state_size=self.state_size,
                ffn_hidden=self.ffn_hidden or 2 * self.features,
                scan=self.scan,
                log_space=self.log_space,
                expand=self.expand,
                **options,
            )
            for _ in range(self.num_layers)
        ]
        self.final_norm = nn.LayerNorm(**options)
        self.head = dense(self.num_outputs, "head", **options)

    def embed(self, inputs: jax.Array) -> jax.Array:
        """Token ids [b, t] -> [b, t, d]; features [b, t, f] -> [b, t, d]."""
        if is_token_ids(self, inputs):
            return self.embedding(inputs)
        if inputs.ndim != 3:
            raise ConfigError(
                f"{type(self).__name__} expects token ids [batch, time] or features "
                f"[batch, time, features], got shape {tuple(inputs.shape)}"
            )
        return self.projection(inputs)

    def encode(self, inputs: jax.Array) -> jax.Array:
        x = self.embed(inputs)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)  # [b, t, d]


class LinearRecurrentClassifier(LinearRecurrentModel):
    """Many-to-one: the last position's encoding -> logits / values (the recurrence is causal,
    so the last position has read the whole sequence)."""

    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        return self.head(self.encode(inputs)[:, -1])  # [b, num_outputs]


class LinearRecurrentTagger(LinearRecurrentModel):
    """Many-to-many: an output at every position (copying, tagging, forecasting)."""

    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        return self.head(self.encode(inputs))  # [b, t, num_outputs]


class LinearRecurrentLM(LinearRecurrentModel):
    """Language model on linear recurrences: next-token logits at every step; decodes with a
    constant-size state per layer (no cache that grows with the length)."""

    num_outputs: int = 256
    vocab_size: int | None = 256

    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        """Token ids [b, t] -> next-token logits [b, t, v]."""
        return self.head(self.encode(inputs))

    @nn.nowrap
    def init_cache(self, batch_size: int, max_len: int | None = None) -> list[jax.Array]:
        block = LinearRecurrentBlock(
            mixer=self.mixer,
            features=self.features,
            state_size=self.state_size,
            ffn_hidden=1,
            log_space=self.log_space,
            expand=self.expand,
            parent=None,
        )
        return [block.initial_state(batch_size) for _ in range(self.num_layers)]

    def decode_step(self, cache: list[jax.Array], tokens: jax.Array) -> tuple[jax.Array, list]:
        """tokens [b] -> (next-token logits [b, v], the updated states)."""
        x = self.embedding(tokens)  # [b, d]
        states = []
        for state, block in zip(cache, self.blocks, strict=True):
            state, x = block.step(state, x)
            states.append(state)
        return self.head(self.final_norm(x)), states
