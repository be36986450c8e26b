"""The Transformer's layers: the block, the stack, and the body every Transformer model shares
(arch/transformer.py holds the models).

Legend: b batch, t time (target / tokens), s source positions, d model width, h heads,
f feed-forward width, v vocabulary.

A block is a residual sublayer per job: self-attention (causal in a decoder), cross-attention
to an encoder's memory (decoder of the encoder-decoder), and the feed-forward network.
"post" norm is the 2017 arrangement, x = LayerNorm(x + Dropout(sublayer(x))); "pre" norm,
x = x + Dropout(sublayer(LayerNorm(x))) with a final LayerNorm after the stack, trains more
stably as depth grows (Xiong et al. 2020) and is the default.

Initialisation (`initializer`): "default" keeps Flax's LeCun-normal kernels (fan-in) with
normal(0.02) embedding and position tables; "gpt2" is GPT-2's (Radford et al. 2019, Hugging
Face's GPT2PreTrainedModel._init_weights): normal(0.02) for every kernel and table, and the
residual output projections (attention's out, the feed-forward's second layer) normal(0.02 /
sqrt(N)) over the N residual sublayers of their stack (2 per block, 3 with cross-attention).
Biases are zero and LayerNorms ones / zeros either way.

Token embeddings (`embed_scale`): "sqrt_d" multiplies the looked-up rows by sqrt(d), as the 2017
paper (sec. 3.4) and tensor2tensor do; a tied output layer reads the unscaled table, as
tensor2tensor's shared softmax weights do. "auto" (the default) scales where the positions are
sinusoidal (amplitude 1 against rows of std 0.02: 35 to 1 unscaled) and nowhere else (GPT-2 and
BERT add learned positions of their tables' own scale, unscaled).
"""

import functools
import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.attention import Kernel, MultiHeadAttention, heads_problem, kv_cache
from arch.errors import ConfigError
from arch.layers import (
    LAYER_NORM_EPS,
    Activation,
    FeedForward,
    Positional,
    RowDense,
    layer_norm,
    logical,
)

Norm = Literal["pre", "post"]
Initializer = Literal["default", "gpt2"]
EmbedScale = Literal["auto", "sqrt_d", "none"]
GPT2_STD = 0.02
"""GPT-2's (and BERT's) initializer_range."""
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
    init_std: float | None = None
    """The kernels' normal standard deviation; None: LeCun normal."""
    residual_init_std: float | None = None
    """The residual outputs' (attention out, the feed-forward's second layer); None: init_std."""
    layer_norm_eps: float = LAYER_NORM_EPS

    def setup(self) -> None:
        attention = functools.partial(
            MultiHeadAttention,
            self.features,
            self.num_heads,
            kernel=self.kernel,
            block_size=self.block_size,
            init_std=self.init_std,
            out_init_std=self.residual_init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.self_attention = attention(rotary=self.rotary)
        if self.cross_attention:
            self.cross = attention()
        self.feed_forward = FeedForward(
            hidden_size=self.ffn_hidden,
            features=self.features,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            init_std=self.init_std,
            output_init_std=self.residual_init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        count = 3 if self.cross_attention else 2
        self.norms = [
            layer_norm(self.dtype, self.param_dtype, epsilon=self.layer_norm_eps)
            for _ in range(count)
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
            self.final_norm = layer_norm(
                self.block.dtype, self.block.param_dtype, epsilon=self.block.layer_norm_eps
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
                metadata_params={nn.PARTITION_NAME: "layers"},  # the stacked axis's name
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
    """Queries / keys per block of the blockwise kernel: 512 measured fastest at long lengths,
    smaller blocks at short ones (experiments/attention_speed.py)."""
    remat: bool = False
    """Recompute each block's activations in the backward pass (jax.checkpoint per block)."""
    scan_layers: bool = False
    """Scan one block over stacked parameters: compile time independent of depth."""
    initializer: Initializer = "default"
    """"default": LeCun-normal kernels (Flax's); "gpt2": GPT-2's normal(0.02) kernels with the
    residual outputs at 0.02 / sqrt(residual sublayers) (module docstring). Tables are
    normal(0.02) either way."""
    embed_scale: EmbedScale = "auto"
    """Token embeddings times sqrt(d) ("sqrt_d", the 2017 paper's), or not ("none"); "auto":
    sqrt(d) with sinusoidal positions only. Tied outputs read the unscaled table."""
    layer_norm_eps: float = LAYER_NORM_EPS
    """Every LayerNorm's epsilon: 1e-6 (Flax's); BERT's is 1e-12, GPT-2's 1e-5."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def kernel_std(self) -> float | None:
        """The kernels' normal standard deviation: GPT-2's 0.02, or None (LeCun normal)."""
        if self.initializer == "default":
            return None
        if self.initializer == "gpt2":
            return GPT2_STD
        raise ConfigError(
            f"unknown initializer {self.initializer!r}; choose one of {get_args(Initializer)}"
        )

    @property
    def embedding_multiplier(self) -> float | None:
        """What token embeddings are multiplied by: sqrt(d), or None (unscaled)."""
        if self.embed_scale not in get_args(EmbedScale):
            raise ConfigError(
                f"unknown embed_scale {self.embed_scale!r}; choose one of {get_args(EmbedScale)}"
            )
        scaled = self.embed_scale == "sqrt_d" or (
            self.embed_scale == "auto" and self.positional == "sinusoidal"
        )
        return math.sqrt(self.features) if scaled else None

    @nn.nowrap
    def scale_embedding(self, x: jax.Array) -> jax.Array:
        """Looked-up token embeddings [..., d] times `embedding_multiplier` (if any)."""
        multiplier = self.embedding_multiplier
        return x if multiplier is None else x * jnp.asarray(multiplier, x.dtype)

    @nn.nowrap
    def make_stack(
        self, cross_attention: bool = False, name: str | None = None
    ) -> TransformerStack:
        std = self.kernel_std
        residual_std = None
        if std is not None:  # GPT-2: 1 / sqrt(N) over the stack's N residual sublayers
            residual_std = std / math.sqrt((3 if cross_attention else 2) * self.num_layers)
        block = TransformerBlock(
            features=self.features,
            num_heads=self.num_heads,
            ffn_hidden=self.ffn_hidden or 4 * self.features,
            dropout_rate=self.dropout_rate,
            norm=self.norm,
            activation=self.activation,
            cross_attention=cross_attention,
            kernel=self.kernel,
            rotary=self.positional == "rotary",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            block_size=self.block_size,
            init_std=std,
            residual_init_std=residual_std,
            layer_norm_eps=self.layer_norm_eps,
            parent=None,
        )
        return TransformerStack(
            num_layers=self.num_layers,
            block=block,
            remat=self.remat,
            scan_layers=self.scan_layers,
            name=name,
        )

    @nn.nowrap
    def config_problems(self) -> list[str]:
        """What train/validate.py's generic checks cannot know of a Transformer's fields: the
        heads must split the width."""
        counts = (self.num_heads, self.features)
        if all(isinstance(n, int) and n >= 1 for n in counts) and self.features % self.num_heads:
            return [
                heads_problem(
                    self.features, self.num_heads, "--model.features", "--model.num-heads"
                )
            ]
        return []

    @nn.nowrap
    def check_length(self, length: int) -> None:
        """Learned positions: `max_len` of them, so longer sequences are refused (sinusoidal and
        rotary positions have no limit)."""
        if self.positional == "learned" and length > self.max_len:
            raise ConfigError(
                f"the task's sequences have {length} positions but {type(self).__name__} learns "
                f"only max_len = {self.max_len}; set --model.max-len {length} (or shorten the "
                "task's sequences)"
            )

    @nn.nowrap
    def make_embedding(self, vocab_size: int, name: str | None = None) -> nn.Embed:
        return nn.Embed(
            vocab_size,
            self.features,
            embedding_init=logical(nn.initializers.normal(0.02), ("vocab", "embed")),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    @nn.nowrap
    def make_head(self) -> RowDense:
        """The untied output layer [..., d] -> [..., num_outputs] (`head` in setup)."""
        return RowDense(
            self.num_outputs,
            init_std=self.kernel_std,
            axes=("embed", "vocab"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def logits(self, x: jax.Array) -> jax.Array:
        """The output layer of the setup-based models: tied to `embedding`, or `head`."""
        if self.tie_embeddings:
            return tied_logits(self.embedding, x.astype(self.dtype))  # x E^T: [b, t, v]
        return self.head(x)

    @nn.nowrap
    def head_cache(self, batch: int, max_len: int) -> list[Cache]:
        """Empty key / value caches (arch.attention.kv_cache) of every decoder layer."""
        if max_len > self.max_len and self.positional == "learned":
            raise ConfigError(
                f"a cache of {max_len} positions exceeds max_len {self.max_len} (the learned "
                "positions); decode fewer tokens or train with a larger max_len"
            )
        width = self.features // self.num_heads
        return [
            kv_cache(batch, max_len, self.num_heads, width, self.dtype)
            for _ in range(self.num_layers)
        ]


def tied_logits(embedding: nn.Embed, x: jax.Array) -> jax.Array:
    """x [..., d] -> x E^T [..., v], one 2-D product over all rows (see RowDense)."""
    rows = x.reshape(-1, x.shape[-1])  # [N, d]
    return embedding.attend(rows).reshape(*x.shape[:-1], embedding.num_embeddings)


def positions_of(length: int) -> jax.Array:
    return jnp.arange(length)[None, :]  # [1, t]
