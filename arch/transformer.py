"""The Transformer models: encoder-only (BERT shape: a classifier / regressor, registered as
`transformer`, and a masked language model), decoder-only (the GPT-shaped language model) and the
encoder-decoder.

Legend: b batch, t time (target / tokens), s source positions, f input features, d model
width, v vocabulary, p prefix. The encoder attends in both directions; mask [b, t] marks real
positions (padding: 0).
"""

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.errors import ConfigError
from arch.layers import (
    PositionalEncoding,
    RowDense,
    activation_fn,
    dense,
    is_token_ids,
    layer_norm,
    logical,
)
from arch.transformer_layers import Cache, TransformerModel, positions_of, tied_logits


class TransformerEncoderModel(TransformerModel):
    """Encoder-only body (BERT shape): embed tokens or project features, add positions, encode
    with bidirectional self-attention. mask [b, t] marks real positions (padding: 0)."""

    def embed(self, inputs: jax.Array, name: str = "embedding") -> jax.Array:
        """Token ids [b, t] -> [b, t, d]; features [b, t, f] -> Dense -> [b, t, d]."""
        if is_token_ids(self, inputs):
            return self.scale_embedding(self.make_embedding(self.vocab_size, name=name)(inputs))
        if inputs.ndim != 3:
            raise ConfigError(
                f"{type(self).__name__} expects token ids [batch, time] or features "
                f"[batch, time, features], got shape {tuple(inputs.shape)}"
            )
        project = RowDense(
            self.features,
            init_std=self.kernel_std,
            axes=("input", "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        return project(inputs)

    def encode(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        train: bool,
        prefix: jax.Array | None = None,
        embedding_norm: bool = False,
    ) -> jax.Array:
        """Embeddings x [b, t, d] (and learned `prefix` vectors [p, d] put in front, e.g. a
        class token) -> encoded [b, p + t, d]. embedding_norm: a LayerNorm over the embeddings
        with their positions (BERT's, `embedding_norm`) before the dropout."""
        if prefix is not None:
            batch = x.shape[0]
            x = jnp.concatenate([jnp.broadcast_to(prefix, (batch, *prefix.shape)), x], axis=1)
            if mask is not None:
                mask = jnp.concatenate([jnp.ones((batch, prefix.shape[0]), mask.dtype), mask], 1)
        positions = positions_of(x.shape[1])
        x = PositionalEncoding(self.positional, self.max_len, self.param_dtype, name="positions")(
            x, positions
        )
        if embedding_norm:
            norm = layer_norm(
                self.dtype, self.param_dtype, name="embedding_norm", epsilon=self.layer_norm_eps
            )
            x = norm(x)
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
            init = logical(nn.initializers.normal(0.02), (None, "embed"))
            cls = self.param("cls", init, (1, self.features), self.param_dtype)
            pooled = self.encode(x, mask, train, prefix=cls.astype(x.dtype))[:, 0]  # [b, d]
        elif self.pool == "mean":
            encoded = self.encode(x, mask, train)
            weights = jnp.ones(encoded.shape[:2]) if mask is None else mask.astype(jnp.float32)
            pooled = jnp.einsum("btd,bt->bd", encoded, weights) / weights.sum(1, keepdims=True)
        else:
            raise ConfigError(f"unknown pool {self.pool!r}; choose 'cls' or 'mean'")
        head = dense(
            self.num_outputs,
            ("embed", "classes"),
            self.dtype,
            self.param_dtype,
            init_std=self.kernel_std,
        )
        return head(pooled)


class MaskedLanguageModel(TransformerEncoderModel):
    """Encoder-only Transformer with BERT's masked-language-model head (Dense - activation -
    LayerNorm - the tied token embedding): logits over the vocabulary at every position; with
    token targets it is also a per-position tagger.

    With norm="post" it is BERT's shape (Devlin et al. 2019; Hugging Face's BertForMaskedLM):
    the embeddings are LayerNorm(tokens + token types + positions); BERT's own numbers also
    take activation="gelu_exact" (BertConfig's hidden_act "gelu") and layer_norm_eps=1e-12
    (tests/test_hf_reference.py: equal to BertForMaskedLM on the same weights)."""

    num_outputs: int = 257
    vocab_size: int | None = 257
    """256 bytes and a [MASK] token."""
    token_types: int | None = None
    """Rows of BERT's token-type (segment) table `token_type`, added to the token embeddings;
    None: 1 with norm="post" (BERT's embeddings: every token of type 0 unless __call__ gets
    token_type_ids), else 0 (no table)."""
    embedding_norm: bool | None = None
    """A LayerNorm over the summed embeddings (BERT's); None: with norm="post"."""

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        *,
        mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """Token ids [b, t] (and their token types [b, t]: type 0 when None) -> logits
        [b, t, num_outputs]."""
        if self.vocab_size is None or not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ConfigError("MaskedLanguageModel reads token ids and needs vocab_size")
        if self.num_outputs > self.vocab_size:
            raise ConfigError(f"num_outputs {self.num_outputs} > vocab_size {self.vocab_size}")
        bert = self.norm == "post"
        types = (1 if bert else 0) if self.token_types is None else self.token_types
        if types < 0:
            raise ConfigError(f"token_types must be >= 0, got {types}")
        embedding = self.make_embedding(self.vocab_size, name="embedding")
        x = self.scale_embedding(embedding(inputs))  # [b, t, d]
        if types:
            table = nn.Embed(
                types,
                self.features,
                embedding_init=logical(nn.initializers.normal(0.02), (None, "embed")),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="token_type",
            )
            if token_type_ids is None:
                x = x + table.embedding[0].astype(x.dtype)  # every token of type 0
            else:
                x = x + table(token_type_ids)
        elif token_type_ids is not None:
            raise ConfigError("token_type_ids need a token-type table: set token_types >= 1")
        norm = bert if self.embedding_norm is None else self.embedding_norm
        x = self.encode(x, mask, train, embedding_norm=norm)
        x = RowDense(
            self.features,
            init_std=self.kernel_std,
            axes=("embed", None),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="transform",
        )(x)
        transform_norm = layer_norm(
            self.dtype, self.param_dtype, name="transform_norm", epsilon=self.layer_norm_eps
        )
        x = transform_norm(activation_fn(self.activation)(x))
        bias_init = logical(nn.initializers.zeros_init(), ("vocab",))
        bias = self.param("output_bias", bias_init, (self.vocab_size,), self.param_dtype)
        logits = tied_logits(embedding, x) + bias  # tied to the input embedding: [b, t, v]
        return logits[..., : self.num_outputs]


class TransformerLM(TransformerModel):
    """Decoder-only Transformer language model (GPT shape); decodes one token at a time."""

    num_outputs: int = 256
    vocab_size: int | None = 256
    tie_embeddings: bool = True
    """The output projection is the transposed token embedding (Press & Wolf 2017)."""

    def setup(self) -> None:
        if self.vocab_size is None:
            raise ConfigError("TransformerLM needs vocab_size (token inputs)")
        if self.tie_embeddings and self.num_outputs != self.vocab_size:
            raise ConfigError(
                f"tied embeddings need num_outputs == vocab_size, got {self.num_outputs}, "
                f"{self.vocab_size}; or set tie_embeddings=False"
            )
        self.embedding = self.make_embedding(self.vocab_size)
        self.positions = PositionalEncoding(self.positional, self.max_len, self.param_dtype)
        self.decoder = self.make_stack()
        self.dropout = nn.Dropout(self.dropout_rate)
        if not self.tie_embeddings:
            self.head = self.make_head()

    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        """Token ids [b, t] -> next-token logits [b, t, v]."""
        positions = positions_of(inputs.shape[1])
        x = self.positions(self.scale_embedding(self.embedding(inputs)), positions)  # [b, t, d]
        x = self.dropout(x, deterministic=not train)
        x = self.decoder(x, causal=True, positions=positions, train=train)
        return self.logits(x)

    @nn.nowrap
    def init_cache(self, batch_size: int, max_len: int) -> Cache:
        """The decoding state: the next position and every layer's keys and values."""
        return {"index": jnp.array(0, jnp.int32), "layers": self.head_cache(batch_size, max_len)}

    def decode_step(self, cache: Cache, tokens: jax.Array) -> tuple[jax.Array, Cache]:
        """tokens [b] at position cache["index"] -> (next-token logits [b, v], updated cache)."""
        index = cache["index"]
        positions = jnp.full((1, 1), index)
        x = self.positions(self.scale_embedding(self.embedding(tokens[:, None])), positions)
        x, layers = self.decoder.decode_step(cache["layers"], x, index)
        return self.logits(x)[:, 0], {"index": index + 1, "layers": layers}


class EncoderDecoderTransformer(TransformerModel):
    """The 2017 Transformer: an encoder over the source, a decoder with masked self-attention
    and cross-attention to the encoder's output. inputs {"source": [b, s], "target": [b, t]}
    (target = the decoder's input, the output shifted right), optional "source_mask" [b, s]."""

    num_outputs: int = 256
    vocab_size: int | None = 256
    """Target vocabulary."""
    source_vocab_size: int | None = None
    """None: source and target share the target's embedding table."""
    tie_embeddings: bool = True

    def setup(self) -> None:
        if self.vocab_size is None:
            raise ConfigError("EncoderDecoderTransformer needs vocab_size (token inputs)")
        if self.tie_embeddings and self.num_outputs != self.vocab_size:
            raise ConfigError(
                f"tied embeddings need num_outputs == vocab_size, got {self.num_outputs}, "
                f"{self.vocab_size}; or set tie_embeddings=False"
            )
        self.embedding = self.make_embedding(self.vocab_size)
        if self.source_vocab_size is not None:
            self.source_embedding = self.make_embedding(self.source_vocab_size)
        self.positions = PositionalEncoding(self.positional, self.max_len, self.param_dtype)
        self.encoder = self.make_stack()
        self.decoder = self.make_stack(cross_attention=True)
        self.dropout = nn.Dropout(self.dropout_rate)
        if not self.tie_embeddings:
            self.head = self.make_head()

    def encode(
        self, source: jax.Array, source_mask: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        """Source ids [b, s] -> the memory [b, s, d] the decoder attends to."""
        embed = self.embedding if self.source_vocab_size is None else self.source_embedding
        positions = positions_of(source.shape[1])
        x = self.scale_embedding(embed(source))  # [b, s, d]
        x = self.dropout(self.positions(x, positions), deterministic=not train)
        return self.encoder(x, mask=source_mask, positions=positions, train=train)

    def decode(
        self,
        target: jax.Array,
        memory: jax.Array,
        source_mask: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        """Target ids [b, t] and memory [b, s, d] -> next-token logits [b, t, v]."""
        positions = positions_of(target.shape[1])
        x = self.scale_embedding(self.embedding(target))  # [b, t, d]
        x = self.dropout(self.positions(x, positions), deterministic=not train)
        x = self.decoder(
            x,
            causal=True,
            positions=positions,
            memory=memory,
            memory_mask=source_mask,
            train=train,
        )
        return self.logits(x)

    def __call__(self, inputs: dict[str, jax.Array], *, train: bool = False) -> jax.Array:
        source_mask = inputs.get("source_mask")
        memory = self.encode(inputs["source"], source_mask, train=train)
        return self.decode(inputs["target"], memory, source_mask, train=train)

    @nn.nowrap
    def init_cache(
        self,
        batch_size: int,
        max_len: int,
        memory: jax.Array | None = None,
        source_mask: jax.Array | None = None,
    ) -> Cache:
        """The decoding state: next position, every layer's keys and values, and the encoder's
        memory [b, s, d] (from `encode`) with its mask."""
        if memory is None:
            raise ValueError("the encoder-decoder decodes against a memory: pass encode(source)")
        mask = jnp.ones(memory.shape[:2], bool) if source_mask is None else source_mask
        return {
            "index": jnp.array(0, jnp.int32),
            "layers": self.head_cache(batch_size, max_len),
            "memory": memory,
            "source_mask": mask.astype(bool),
        }

    def decode_step(self, cache: Cache, tokens: jax.Array) -> tuple[jax.Array, Cache]:
        """tokens [b] at position cache["index"] -> (next-token logits [b, v], updated cache)."""
        index = cache["index"]
        x = self.scale_embedding(self.embedding(tokens[:, None]))  # [b, 1, d]
        x = self.positions(x, jnp.full((1, 1), index))
        x, layers = self.decoder.decode_step(
            cache["layers"], x, index, memory=cache["memory"], memory_mask=cache["source_mask"]
        )
        return self.logits(x)[:, 0], {**cache, "index": index + 1, "layers": layers}
