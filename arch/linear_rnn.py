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
from arch.linear_mixers import LRU, LRUNormalisation, MinGRU, MinLSTM, dense
from arch.linear_scan import ScanMethod
from arch.selective_ssm import SelectiveSSM

Mixer = Literal["lru", "mingru", "minlstm", "mamba"]
MIXERS: dict[str, type[nn.Module]] = {
    "lru": LRU,
    "mingru": MinGRU,
    "minlstm": MinLSTM,
    "mamba": SelectiveSSM,
}


def mixer_class(mixer: str) -> type[nn.Module]:
    if mixer not in MIXERS:
        raise ConfigError(f"unknown mixer {mixer!r}; choose one of {sorted(MIXERS)}")
    return MIXERS[mixer]


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
    ffn_hidden: int
    options: tuple[tuple[str, Any], ...] = ()
    """The mixer's own fields as (name, value) pairs (LinearRecurrentModel.mixer_options)."""
    scan: ScanMethod = "auto"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self) -> None:
        options = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.mix = mixer_class(self.mixer)(self.features, **dict(self.options), **options)
        self.norms = [nn.LayerNorm(**options) for _ in range(2)]
        self.mlp = GatedMLP(self.features, self.ffn_hidden, **options)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.mix(self.norms[0](x), method=self.scan)  # [b, t, d]
        return x + self.mlp(self.norms[1](x))

    @nn.nowrap
    def initial_state(self, batch: int) -> Any:
        mixer = mixer_class(self.mixer)(self.features, **dict(self.options), parent=None)
        return mixer.initial_state(batch)

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
    chrono: int | None = None
    """minGRU / minLSTM: Chrono initialisation of the gates' biases with T_max = chrono time
    steps (Tallec & Ollivier 2018; arch/linear_mixers.py derives the signs); None: zero
    biases."""
    normalisation: LRUNormalisation = "trained"
    """LRU: "trained", gamma its own parameter gamma_log initialised to sqrt(1 - |lambda|^2)
    (the paper's); "tied", recomputed from lambda at every step."""
    r_min: float = 0.9
    """LRU: |lambda| starts on the ring [r_min, r_max] (the paper's code defaults: 0 and 1)."""
    r_max: float = 0.999
    max_phase: float = 6.283
    """LRU: the phase of lambda starts uniform on [0, max_phase]."""
    expand: int = 2
    """Mamba: channels per model unit (e = expand * d)."""
    dt_rank: int | Literal["auto"] = "auto"
    """Mamba: rank r of the step-size projection; "auto" = ceil(features / 16) (the
    reference's)."""
    dt_min: float = 1e-3
    """Mamba: the initial steps are log-uniform in [dt_min, dt_max], at least dt_init_floor."""
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    """Mamba: dt_proj's kernel starts uniform on +-dt_scale / sqrt(r)."""
    scan: ScanMethod = "auto"
    """"auto": sequential on CPU, where it measured faster than the associative scan
    (experiments/linear_scan_speed.py), parallel on accelerators; both give the same numbers."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.nowrap
    def mixer_options(self) -> tuple[tuple[str, Any], ...]:
        """The fields of this model that its mixer takes, under the mixer's names (the state
        width is minGRU / minLSTM's hidden_size)."""
        if self.mixer == "lru":
            names = ("state_size", "normalisation", "r_min", "r_max", "max_phase")
        elif self.mixer in ("mingru", "minlstm"):
            names = ("log_space", "chrono")
        elif self.mixer == "mamba":
            names = ("state_size", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor")
            names += ("dt_scale",)
        else:
            return ()  # the block names the unknown mixer
        options = {name: getattr(self, name) for name in names}
        if self.mixer in ("mingru", "minlstm"):
            options["hidden_size"] = self.state_size
        return tuple(sorted(options.items()))

    @nn.nowrap
    def config_problems(self) -> list[str]:
        """The mixer's own checks (the LRU's ring, Chrono's T_max, Mamba's steps)."""
        if self.mixer not in MIXERS:
            return [f"unknown mixer {self.mixer!r}; choose one of {sorted(MIXERS)}"]
        mixer = MIXERS[self.mixer](self.features, **dict(self.mixer_options()), parent=None)
        return mixer.config_problems()

    @nn.nowrap
    def block(self, ffn_hidden: int, **options: Any) -> LinearRecurrentBlock:
        return LinearRecurrentBlock(
            mixer=self.mixer,
            features=self.features,
            ffn_hidden=ffn_hidden,
            options=self.mixer_options(),
            **options,
        )

    def setup(self) -> None:
        options = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        if self.vocab_size is not None:
            self.embedding = nn.Embed(self.vocab_size, self.features, param_dtype=self.param_dtype)
        self.projection = dense(self.features, "projection", **options)
        ffn_hidden = self.ffn_hidden or 2 * self.features
        self.blocks = [
            self.block(ffn_hidden, scan=self.scan, **options) for _ in range(self.num_layers)
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
        block = self.block(ffn_hidden=1, parent=None)
        return [block.initial_state(batch_size) for _ in range(self.num_layers)]

    def decode_step(self, cache: list[jax.Array], tokens: jax.Array) -> tuple[jax.Array, list]:
        """tokens [b] -> (next-token logits [b, v], the updated states)."""
        x = self.embedding(tokens)  # [b, d]
        states = []
        for state, block in zip(cache, self.blocks, strict=True):
            state, x = block.step(state, x)
            states.append(state)
        return self.head(self.final_norm(x)), states
