"""Encoder-only Transformers (BERT shape): a classifier / regressor and a masked language model.

Legend: b batch, t time (positions), f input features, d model width, v vocabulary, p prefix.
The encoder attends in both directions; mask [b, t] marks real positions (padding: 0).
"""

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.errors import ConfigError
from arch.layers import PositionalEncoding, RowDense
from arch.transformer import TransformerModel, positions_of, tied_logits


class TransformerEncoderModel(TransformerModel):
    """Encoder-only body (BERT shape): embed tokens or project features, add positions, encode
    with bidirectional self-attention. mask [b, t] marks real positions (padding: 0)."""

    def embed(self, inputs: jax.Array, name: str = "embedding") -> jax.Array:
        """Token ids [b, t] -> [b, t, d]; features [b, t, f] -> Dense -> [b, t, d]."""
        if jnp.issubdtype(inputs.dtype, jnp.integer):
            if self.vocab_size is None:
                raise ConfigError(
                    f"{type(self).__name__} got token ids {inputs.shape} but vocab_size is None; "
                    "set --model.vocab-size"
                )
            return self.make_embedding(self.vocab_size, name=name)(inputs)
        if inputs.ndim != 3:
            raise ConfigError(
                f"{type(self).__name__} expects token ids [batch, time] or features "
                f"[batch, time, features], got shape {tuple(inputs.shape)}"
            )
        return RowDense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)(
            inputs
        )

    def encode(
        self, x: jax.Array, mask: jax.Array | None, train: bool, prefix: jax.Array | None = None
    ) -> jax.Array:
        """Embeddings x [b, t, d] (and learned `prefix` vectors [p, d] put in front, e.g. a
        class token) -> encoded [b, p + t, d]."""
        if prefix is not None:
            batch = x.shape[0]
            x = jnp.concatenate([jnp.broadcast_to(prefix, (batch, *prefix.shape)), x], axis=1)
            if mask is not None:
                mask = jnp.concatenate([jnp.ones((batch, prefix.shape[0]), mask.dtype), mask], 1)
        positions = positions_of(x.shape[1])
        x = PositionalEncoding(self.positional, self.max_len, self.param_dtype, name="positions")(
            x, positions
        )
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return self.make_stack(name="encoder")(x, mask=mask, positions=positions, train=train)


class TransformerClassifier(TransformerEncoderModel):
    """Encoder-only Transformer classifier / regressor: a [CLS] token's encoding (or the mean
    over real positions) -> logits / values."""

    pool: Literal["cls", "mean"] = "cls"

    @nn.compact
    def __call__(
        self, inputs: jax.Array, *, mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """Token ids [b, t] or features [b, t, f] -> [b, num_outputs]."""
        return self.classify(self.embed(inputs), mask, train)

    def classify(self, x: jax.Array, mask: jax.Array | None, train: bool) -> jax.Array:
        """Embeddings x [b, t, d] -> pooled encoding -> logits [b, num_outputs]."""
        if self.pool == "cls":
            cls = self.param(
                "cls", nn.initializers.normal(0.02), (1, self.features), self.param_dtype
            )
            pooled = self.encode(x, mask, train, prefix=cls.astype(x.dtype))[:, 0]  # [b, d]
        elif self.pool == "mean":
            encoded = self.encode(x, mask, train)
            weights = jnp.ones(encoded.shape[:2]) if mask is None else mask.astype(jnp.float32)
            pooled = jnp.einsum("btd,bt->bd", encoded, weights) / weights.sum(1, keepdims=True)
        else:
            raise ConfigError(f"unknown pool {self.pool!r}; choose 'cls' or 'mean'")
        return nn.Dense(self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype)(pooled)


class MaskedLanguageModel(TransformerEncoderModel):
    """Encoder-only Transformer with BERT's masked-language-model head (Dense - GELU -
    LayerNorm - the tied token embedding): logits over the vocabulary at every position; with
    token targets it is also a per-position tagger."""

    num_outputs: int = 257
    vocab_size: int | None = 257
    """256 bytes and a [MASK] token."""

    @nn.compact
    def __call__(
        self, inputs: jax.Array, *, mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """Token ids [b, t] -> logits [b, t, num_outputs]."""
        if self.vocab_size is None or not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ConfigError("MaskedLanguageModel reads token ids and needs vocab_size")
        if self.num_outputs > self.vocab_size:
            raise ConfigError(f"num_outputs {self.num_outputs} > vocab_size {self.vocab_size}")
        embedding = self.make_embedding(self.vocab_size, name="embedding")
        x = self.encode(embedding(inputs), mask, train)
        x = RowDense(
            self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="transform"
        )(x)
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="transform_norm")(
            nn.gelu(x)
        )
        bias = self.param(
            "output_bias", nn.initializers.zeros_init(), (self.vocab_size,), self.param_dtype
        )
        logits = tied_logits(embedding, x) + bias  # tied to the input embedding: [b, t, v]
        return logits[..., : self.num_outputs]
