"""Transformers: the block, the stack, the decoder-only LM and the encoder-decoder (the
encoder-only shape is in arch/encoder.py).

Legend: b batch, t time (target / tokens), s source positions, d model width, h heads,
f feed-forward width, v vocabulary.

A block is a residual sublayer per job: self-attention (causal in a decoder), cross-attention
to an encoder's memory (decoder of the encoder-decoder), and the feed-forward network.
"post" norm is the 2017 arrangement, x = LayerNorm(x + Dropout(sublayer(x))); "pre" norm,
x = x + Dropout(sublayer(LayerNorm(x))) with a final LayerNorm after the stack, trains more
stably as depth grows (Xiong et al. 2020) and is the default.
"""

import functools
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.attention import Kernel, MultiHeadAttention
from arch.errors import ConfigError
from arch.layers import Activation, FeedForward, Positional, PositionalEncoding, RowDense

Norm = Literal["pre", "post"]
Cache = dict[str, Any]


class TransformerBlock(nn.Module):
    """One block: self-attention [, cross-attention], feed-forward, each residual and normed."""

    features: int
    num_heads: int
    ffn_hidden: int
    dropout_rate: float = 0.0
    norm: Norm = "pre"
    activation: Activation = "gelu"
    cross_attention: bool = False
    kernel: Kernel = "auto"
    rotary: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    block_size: int = 512

    def setup(self) -> None:
        attention = functools.partial(
            MultiHeadAttention,
            self.features,
            self.num_heads,
            kernel=self.kernel,
            block_size=self.block_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.self_attention = attention(rotary=self.rotary)
        if self.cross_attention:
            self.cross = attention()
        self.feed_forward = FeedForward(
            self.ffn_hidden,
            self.features,
            self.activation,
            self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        count = 3 if self.cross_attention else 2
        self.norms = [
            nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype) for _ in range(count)
        ]
        self.dropout = nn.Dropout(self.dropout_rate)

    def residual(
        self, x: jax.Array, index: int, sublayer: Callable[[jax.Array], jax.Array], train: bool
    ) -> jax.Array:
        norm = self.norms[index]
        if self.norm == "pre":
            return x + self.dropout(sublayer(norm(x)), deterministic=not train)
        return norm(x + self.dropout(sublayer(x), deterministic=not train))

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        causal: bool = False,
        positions: jax.Array | None = None,
        memory: jax.Array | None = None,
        memory_mask: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """x [b, t, d]; mask [b, t] (padding); memory [b, s, d], memory_mask [b, s] -> [b, t, d]."""
        attend = lambda y: self.self_attention(
            y, key_mask=mask, causal=causal, positions_q=positions
        )
        x = self.residual(x, 0, attend, train)
        if self.cross_attention:
            x = self.residual(x, 1, lambda y: self.cross(y, memory, key_mask=memory_mask), train)
        return self.residual(x, -1, lambda y: self.feed_forward(y, train=train), train)

    def decode_step(
        self,
        cache: Cache,
        x: jax.Array,
        index: jax.Array,
        memory: jax.Array | None = None,
        memory_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Cache]:
        """One new position `index`: x [b, 1, d] -> ([b, 1, d], this block's updated cache)."""
        updated = {}

        def attend(y: jax.Array) -> jax.Array:
            out, updated["cache"] = self.self_attention.decode_step(cache, y, index)
            return out

        x = self.residual(x, 0, attend, train=False)
        if self.cross_attention:
            x = self.residual(x, 1, lambda y: self.cross(y, memory, key_mask=memory_mask), False)
        return self.residual(x, -1, self.feed_forward, train=False), updated["cache"]


class TransformerStack(nn.Module):
    """`num_layers` blocks (an encoder, or a decoder with `cross_attention`), then a final
    LayerNorm when the blocks are pre-norm.

    remat: recompute each block's activations in the backward pass instead of storing them
    (`nn.remat`, i.e. jax.checkpoint per block): memory for time. scan_layers: one block's
    program scanned over stacked parameters [num_layers, ...] (`nn.scan`), so compile time does
    not grow with depth; the parameters then live under `layers` with a leading layer axis, and
    decoding with a cache needs scan_layers=False."""

    num_layers: int
    block: TransformerBlock
    """The template of every block, made with parent=None (each layer gets a copy with its own
    parameters: blocks_0, blocks_1, ...)."""
    remat: bool = False
    scan_layers: bool = False

    def setup(self) -> None:
        if self.scan_layers:
            self.layers = self.block.clone()
        else:
            self.blocks = [self.block.clone() for _ in range(self.num_layers)]
        if self.block.norm == "pre":
            self.final_norm = nn.LayerNorm(
                dtype=self.block.dtype, param_dtype=self.block.param_dtype
            )

    def finish(self, x: jax.Array) -> jax.Array:
        return self.final_norm(x) if self.block.norm == "pre" else x

    def __call__(self, x: jax.Array, **options: Any) -> jax.Array:
        def run(block: TransformerBlock, x: jax.Array) -> jax.Array:
            return block(x, **options)  # options (masks, flags) are closed over, not traced

        if self.remat:
            run = nn.remat(run)
        if self.scan_layers:
            scanned = nn.scan(
                lambda block, x, _: (run(block, x), None),
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                length=self.num_layers,
            )
            x, _ = scanned(self.layers, x, None)
            return self.finish(x)
        for block in self.blocks:
            x = run(block, x)
        return self.finish(x)

    def decode_step(
        self, caches: list[Cache], x: jax.Array, index: jax.Array, **memory: Any
    ) -> tuple[jax.Array, list[Cache]]:
        if self.scan_layers:
            raise ConfigError("decoding with a cache needs scan_layers=False")
        new_caches = []
        for cache, block in zip(caches, self.blocks, strict=True):
            x, cache = block.decode_step(cache, x, index, **memory)
            new_caches.append(cache)
        return self.finish(x), new_caches


class TransformerModel(nn.Module):
    """Shared configuration of the Transformer models: sizes, norms, positions, the kernel."""

    num_outputs: int = 10
    vocab_size: int | None = None
    """Token inputs [b, t] are embedded; None: inputs are features [b, t, f], projected to d."""
    num_layers: int = 2
    features: int = 64
    """d: the model width."""
    num_heads: int = 4
    ffn_hidden: int | None = None
    """f; None: 4 * features."""
    dropout_rate: float = 0.0
    norm: Norm = "pre"
    activation: Activation = "gelu"
    positional: Positional = "learned"
    max_len: int = 512
    """Longest sequence the learned positions cover (and the longest decoding cache)."""
    kernel: Kernel = "auto"
    """Attention kernel (arch/attention.py); "auto": cuDNN flash attention on a GPU in half
    precision, the blockwise kernel from 512 keys on, else einsum (`choose_kernel`)."""
    block_size: int = 512
    """Queries / keys per block of the blockwise kernel: 512 measured fastest at t >= 2048,
    128 at t = 512 (experiments/attention_speed.py)."""
    remat: bool = False
    """Recompute each block's activations in the backward pass (jax.checkpoint per block)."""
    scan_layers: bool = False
    """Scan one block over stacked parameters: compile time independent of depth."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.nowrap
    def make_stack(
        self, cross_attention: bool = False, name: str | None = None
    ) -> TransformerStack:
        block = TransformerBlock(
            self.features,
            self.num_heads,
            self.ffn_hidden or 4 * self.features,
            self.dropout_rate,
            self.norm,
            self.activation,
            cross_attention,
            self.kernel,
            self.positional == "rotary",
            self.dtype,
            self.param_dtype,
            self.block_size,
            parent=None,
        )
        return TransformerStack(self.num_layers, block, self.remat, self.scan_layers, name=name)

    @nn.nowrap
    def make_embedding(self, vocab_size: int, name: str | None = None) -> nn.Embed:
        return nn.Embed(
            vocab_size,
            self.features,
            embedding_init=nn.initializers.normal(0.02),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def logits(self, x: jax.Array) -> jax.Array:
        """The output layer of the setup-based models: tied to `embedding`, or `output_layer`."""
        if self.tie_embeddings:
            return tied_logits(self.embedding, x.astype(self.dtype))  # x E^T: [b, t, v]
        return self.output_layer(x)

    @nn.nowrap
    def head_cache(self, batch: int, max_len: int) -> list[Cache]:
        """Empty key / value caches [b, max_len, h, e] of every decoder layer."""
        if max_len > self.max_len and self.positional == "learned":
            raise ConfigError(
                f"a cache of {max_len} positions exceeds max_len {self.max_len} (the learned "
                "positions); decode fewer tokens or train with a larger max_len"
            )
        shape = (batch, max_len, self.num_heads, self.features // self.num_heads)
        zeros = lambda: jnp.zeros(shape, self.dtype)
        return [{"key": zeros(), "value": zeros()} for _ in range(self.num_layers)]


def tied_logits(embedding: nn.Embed, x: jax.Array) -> jax.Array:
    """x [..., d] -> x E^T [..., v], one 2-D product over all rows (see RowDense)."""
    rows = x.reshape(-1, x.shape[-1])  # [N, d]
    return embedding.attend(rows).reshape(*x.shape[:-1], embedding.num_embeddings)


def positions_of(length: int) -> jax.Array:
    return jnp.arange(length)[None, :]  # [1, t]


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
            self.output_layer = RowDense(
                self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype
            )

    def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        """Token ids [b, t] -> next-token logits [b, t, v]."""
        positions = positions_of(inputs.shape[1])
        x = self.positions(self.embedding(inputs), positions)  # [b, t, d]
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
        x = self.positions(self.embedding(tokens[:, None]), positions)  # [b, 1, d]
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
            self.output_layer = RowDense(
                self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype
            )

    def encode(
        self, source: jax.Array, source_mask: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        """Source ids [b, s] -> the memory [b, s, d] the decoder attends to."""
        embed = self.embedding if self.source_vocab_size is None else self.source_embedding
        positions = positions_of(source.shape[1])
        x = self.dropout(self.positions(embed(source), positions), deterministic=not train)
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
        x = self.dropout(self.positions(self.embedding(target), positions), deterministic=not train)
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
        x = self.positions(self.embedding(tokens[:, None]), jnp.full((1, 1), index))  # [b, 1, d]
        x, layers = self.decoder.decode_step(
            cache["layers"], x, index, memory=cache["memory"], memory_mask=cache["source_mask"]
        )
        return self.logits(x)[:, 0], {**cache, "index": index + 1, "layers": layers}
