"""Attention: scaled dot-product kernels, multi-head attention, additive and Luong attention.

Legend: b batch, q query positions, k key positions, h heads, e head width (d / h), d model
width, s source positions (seq2seq).

One function, `dot_product_attention`, computes softmax(q k^T / sqrt(e) + masks) v with
interchangeable kernels that must give the same numbers (tests/test_attention.py):
- "einsum": the reference, two einsums and a float32 softmax (stores the [b, h, q, k] scores);
- "xla": `jax.nn.dot_product_attention` with its default implementation (XLA's own fusion);
- "cudnn": the same function forced onto cuDNN's fused flash attention (NVIDIA GPUs, float16 /
  bfloat16, head width <= 128 and a multiple of 8; an error elsewhere);
- "blockwise": ours in pure JAX (arch/blockwise_attention.py): online softmax over blocks of
  keys and a backward pass that recomputes the scores, so memory grows as q + k, not q * k;
- "auto": the fast path the backend offers, chosen per call by `choose_kernel`: cuDNN on a
  GPU in half precision, else blockwise for long sequences, else einsum.
Masks are a key padding mask [b, k] (True: attend) and / or the causal mask (query i sees keys
j <= i). Masked scores are set to the most negative float32 before the softmax, so a query
whose keys are all masked averages every value (padded queries carry no loss anyway).
"""

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.blockwise_attention import blockwise_attention
from arch.errors import ConfigError
from arch.layers import RowDense

Kernel = Literal["auto", "einsum", "xla", "cudnn", "blockwise"]
KERNELS = ("auto", "einsum", "xla", "cudnn", "blockwise")
MASKED = float(jnp.finfo(jnp.float32).min)
LONG_SEQUENCE = 512
""""auto" uses the blockwise kernel from this many keys on, where it measured faster than einsum
(experiments/recurrence_vs_attention.py; README.md, "The measurements behind the defaults")."""


def choose_kernel(backend: str, dtype: jnp.dtype, width: int, keys: int, key_mask: bool) -> str:
    """The kernel "auto" runs: "cudnn" on a GPU in float16 / bfloat16 when cuDNN's flash
    attention takes the shape (head width <= 128, a multiple of 8, no padding mask: only the
    causal mask is passed to it), else "blockwise" from LONG_SEQUENCE (512) keys on, else
    "einsum"."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if backend == "gpu" and half and width <= 128 and width % 8 == 0 and not key_mask:
        return "cudnn"
    return "blockwise" if keys >= LONG_SEQUENCE else "einsum"


def attention_mask(
    batch: int, queries: int, keys: int, key_mask: jax.Array | None, causal: bool
) -> jax.Array | None:
    """The boolean mask [b or 1, 1, q, k] (True: attend) of a padding mask and / or causality."""
    mask = None
    if key_mask is not None:
        if key_mask.shape != (batch, keys):
            raise ValueError(
                f"key_mask must be [batch, keys] = {(batch, keys)}, got {key_mask.shape}"
            )
        mask = key_mask.astype(bool)[:, None, None, :]  # [b, 1, 1, k]
    if causal:
        if queries != keys:
            raise ValueError(
                f"causal attention needs as many queries as keys, got {queries}, {keys}"
            )
        lower = jnp.tril(jnp.ones((queries, keys), bool))[None, None]  # [1, 1, q, k]: j <= i
        mask = lower if mask is None else mask & lower
    return mask


def einsum_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None, scale: float
) -> jax.Array:
    """The reference kernel: [b, q, h, e] x [b, k, h, e] x [b, k, h, e] -> [b, q, h, e]."""
    scores = jnp.einsum("bqhe,bkhe->bhqk", query, key, preferred_element_type=jnp.float32)
    scores = scores * scale  # q k^T / sqrt(e), [b, h, q, k] in float32
    if mask is not None:
        scores = jnp.where(mask, scores, MASKED)
    weights = jax.nn.softmax(scores, axis=-1)  # softmax over keys, in float32
    return jnp.einsum("bhqk,bkhe->bqhe", weights.astype(value.dtype), value)


def flash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    scale: float,
    causal: bool,
    implementation: Literal["cudnn"] | None = "cudnn",
) -> jax.Array:
    """The "cudnn" kernel: cuDNN's fused flash attention through `jax.nn.dot_product_attention`
    ([b, q, h, e] layout, only the causal mask). implementation=None makes the same call run
    through XLA, which is how the tests check its arguments on a machine without a GPU."""
    if causal and query.shape[1] != key.shape[1]:
        raise ValueError(
            f"causal attention needs as many queries as keys, got {query.shape[1]}, {key.shape[1]}"
        )
    return jax.nn.dot_product_attention(
        query, key, value, scale=scale, is_causal=causal, implementation=implementation
    )


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    causal: bool = False,
    kernel: Kernel = "auto",
    scale: float | None = None,
    block_size: int = 512,
) -> jax.Array:
    """softmax(q k^T * scale + masks) v: query [b, q, h, e], key / value [b, k, h, e] ->
    [b, q, h, e] in the query's dtype. scale defaults to 1 / sqrt(e); block_size is the
    blockwise kernel's number of keys (and queries) per block."""
    batch, queries, heads, width = query.shape
    if key.shape[0] != batch or key.shape[2:] != (heads, width) or key.shape != value.shape:
        raise ValueError(
            f"query [b, q, h, e] {query.shape} needs key and value [b, k, h, e] of the same "
            f"b, h, e; got {key.shape}, {value.shape}"
        )
    scale = width**-0.5 if scale is None else scale
    if kernel == "auto":
        kernel = choose_kernel(
            jax.default_backend(), query.dtype, width, key.shape[1], key_mask is not None
        )
    if kernel == "cudnn":
        if key_mask is not None:
            raise ConfigError("the cudnn kernel takes no key_mask here; use 'xla' or 'blockwise'")
        return flash_attention(query, key, value, scale=scale, causal=causal)
    if kernel == "blockwise":
        return blockwise_attention(
            query, key, value, key_mask=key_mask, causal=causal, scale=scale, block_size=block_size
        )
    mask = attention_mask(batch, queries, key.shape[1], key_mask, causal)
    if kernel == "einsum":
        return einsum_attention(query, key, value, mask, scale).astype(query.dtype)
    if kernel == "xla":
        return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale)
    raise ConfigError(f"unknown attention kernel {kernel!r}; choose one of {KERNELS}")


def rotary_embedding(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """RoPE (Su et al. 2021): rotate each pair (x_2i, x_2i+1) of x [b, t, h, e] by the angle
    p * base^(-2i/e) of its position p [b or 1, t]; q_m . k_n then depends on m - n only."""
    width = x.shape[-1]
    if width % 2:
        raise ConfigError(
            f"rotary embeddings need an even head width, got {width}; choose features and "
            "num_heads with an even features / num_heads"
        )
    frequencies = base ** (-jnp.arange(0, width, 2, dtype=jnp.float32) / width)  # [e/2]
    angles = positions.astype(jnp.float32)[..., None, None] * frequencies  # [b, t, 1, e/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], width // 2, 2)  # [b, t, h, e/2, 2]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)  # [b, t, h, e]


def heads_problem(
    features: int, num_heads: int, features_name: str = "features", heads_name: str = "num_heads"
) -> str:
    """Why num_heads cannot split features, with the values that would; the names are how the
    caller's user sets the two (e.g. "--model.features")."""
    divisors = ", ".join(str(n) for n in range(1, features + 1) if features % n == 0)
    below, above = features // num_heads * num_heads, -(-features // num_heads) * num_heads
    multiples = " or ".join(str(m) for m in (below, above) if m > 0)
    return (
        f"{features_name} {features} is not divisible by {heads_name} {num_heads}; set "
        f"{heads_name} to a divisor of {features} ({divisors}) or {features_name} to a "
        f"multiple of {num_heads} (e.g. {multiples})"
    )


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017) for self, causal and cross attention, with a
    key / value cache for decoding. Parameters are named and shaped as Flax's
    `MultiHeadDotProductAttention` (query / key / value kernels [d, h, e], out [h, e, d])."""

    features: int
    """d: the width of the inputs and of the output."""
    num_heads: int
    head_dim: int | None = None
    """e; None: features // num_heads."""
    kernel: Kernel = "auto"
    block_size: int = 512
    """Queries / keys per block of the blockwise kernel (experiments/attention_speed.py)."""
    rotary: bool = False
    """Rotary position embeddings on queries and keys (needs positions)."""
    use_bias: bool = True
    init_std: float | None = None
    """The kernels' normal standard deviation; None: LeCun normal over each one's fan-in."""
    out_init_std: float | None = None
    """The out projection's (a residual output: GPT-2 scales it by depth); None: init_std."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def width(self) -> int:
        if self.head_dim is None and self.features % self.num_heads:
            raise ConfigError(heads_problem(self.features, self.num_heads))
        return self.head_dim or self.features // self.num_heads

    def setup(self) -> None:
        projection = lambda name: RowDense(
            (self.num_heads, self.width),
            use_bias=self.use_bias,
            init_std=self.init_std,
            axes=("embed", "heads", "head_dim"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        self.query, self.key, self.value = (projection(n) for n in ("query", "key", "value"))
        self.out = RowDense(
            self.features,
            in_axes=2,
            use_bias=self.use_bias,
            init_std=self.init_std if self.out_init_std is None else self.out_init_std,
            axes=("heads", "head_dim", "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def project(
        self, inputs_q: jax.Array, inputs_kv: jax.Array, positions_q, positions_kv
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries [b, q, h, e], keys and values [b, k, h, e] (rotated when `rotary`)."""
        query, key, value = self.query(inputs_q), self.key(inputs_kv), self.value(inputs_kv)
        if self.rotary:
            if positions_q is None or positions_kv is None:
                raise ValueError("rotary attention needs the positions of queries and keys")
            query = rotary_embedding(query, positions_q)
            key = rotary_embedding(key, positions_kv)
        return query, key, value

    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array | None = None,
        *,
        key_mask: jax.Array | None = None,
        causal: bool = False,
        positions_q: jax.Array | None = None,
        positions_kv: jax.Array | None = None,
    ) -> jax.Array:
        """inputs_q [b, q, d]; inputs_kv [b, k, d] (None: self-attention) -> [b, q, d]."""
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        if positions_kv is None and inputs_kv is inputs_q:
            positions_kv = positions_q
        query, key, value = self.project(inputs_q, inputs_kv, positions_q, positions_kv)
        attended = dot_product_attention(
            query,
            key,
            value,
            key_mask=key_mask,
            causal=causal,
            kernel=self.kernel,
            block_size=self.block_size,
        )
        return self.out(attended)  # [b, q, d]

    @nn.nowrap
    def init_cache(self, batch: int, max_len: int) -> dict[str, jax.Array]:
        """Room for the keys and values of every position to come (`kv_cache`'s layout)."""
        return kv_cache(batch, max_len, self.num_heads, self.width, self.dtype)

    def decode_step(
        self, cache: dict[str, jax.Array], inputs: jax.Array, index: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Causal self-attention of one new position `index` (a scalar): inputs [b, 1, d] ->
        ([b, 1, d], cache with this position's key and value written in)."""
        positions = jnp.full((1, 1), index)
        query, key, value = self.project(inputs, inputs, positions, positions)
        start = (0, 0, 0, index)
        written = lambda old, new: jax.lax.dynamic_update_slice(  # new [b, 1, h, e] -> column
            old, jnp.transpose(new, (0, 2, 3, 1)).astype(old.dtype), start
        )
        keys, values = written(cache["key"], key), written(cache["value"], value)
        attended = cached_attention(query, keys, values, index)
        return self.out(attended), {"key": keys, "value": values}


def kv_cache(batch: int, max_len: int, heads: int, width: int, dtype: str) -> dict[str, jax.Array]:
    """An empty key / value cache, each [b, h, e, max_len]: heads first and positions last,
    the layout both of a decoding step's products read directly (with [b, max_len, h, e],
    XLA:CPU transposed the whole cache twice per layer and token: 14.7x the time per token
    from 128 to 2048 positions for 2.35x the FLOPs)."""
    shape = (batch, heads, width, max_len)
    return {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}


def cached_attention(
    query: jax.Array, keys: jax.Array, values: jax.Array, index: jax.Array
) -> jax.Array:
    """One query [b, 1, h, e] against a cache's keys and values [b, h, e, max_len], of which
    positions 0 .. index are written -> [b, 1, h, e]; einsum_attention's numbers."""
    scale = query.shape[-1] ** -0.5  # as dot_product_attention
    scores = jnp.einsum("bqhe,bhek->bhqk", query, keys, preferred_element_type=jnp.float32)
    seen = jnp.arange(keys.shape[-1]) <= index  # [max_len]
    scores = jnp.where(seen, scores * scale, MASKED)
    weights = jax.nn.softmax(scores, axis=-1)  # [b, h, 1, max_len], in float32
    return jnp.einsum("bhqk,bhek->bqhe", weights.astype(values.dtype), values)


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score(s, h_j) = v^T tanh(W_s s + W_h h_j); context = sum_j a_j h_j."""

    hidden_size: int
    """Width of the tanh layer."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(
        self, query: jax.Array, memory: jax.Array, memory_mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """query [b, d_q], memory [b, s, d_m], mask [b, s] -> (context [b, d_m], weights [b, s])."""
        dense = lambda name, use_bias=False, features=self.hidden_size: nn.Dense(
            features, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        projected = dense("query")(query)[:, None, :] + dense("memory", True)(memory)  # [b, s, a]
        scores = dense("score", features=1)(jnp.tanh(projected))[..., 0]  # v^T tanh(...): [b, s]
        return attend(scores.astype(jnp.float32), memory, memory_mask)


class LuongAttention(nn.Module):
    """Luong attention: score(s, h_j) = s^T h_j ("dot") or s^T W h_j ("general")."""

    score: Literal["dot", "general"] = "general"
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(
        self, query: jax.Array, memory: jax.Array, memory_mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """query [b, d], memory [b, s, d_m], mask [b, s] -> (context [b, d_m], weights [b, s])."""
        if self.score == "general":
            query = nn.Dense(
                memory.shape[-1], use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype
            )(query)  # W^T s, so that s^T W h_j = (W^T s) . h_j
        elif query.shape[-1] != memory.shape[-1]:
            raise ValueError(f"dot scores need equal widths, got {query.shape}, {memory.shape}")
        scores = jnp.einsum("bd,bsd->bs", query, memory, preferred_element_type=jnp.float32)
        return attend(scores, memory, memory_mask)


def attend(
    scores: jax.Array, memory: jax.Array, memory_mask: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """softmax over source positions of scores [b, s] (masked ones get zero weight) ->
    (context sum_j a_j m_j [b, d_m], weights a [b, s])."""
    if memory_mask is not None:
        scores = jnp.where(memory_mask.astype(bool), scores, MASKED)
    weights = jax.nn.softmax(scores, axis=-1)  # [b, s], float32
    context = jnp.einsum("bs,bsd->bd", weights.astype(memory.dtype), memory)
    return context, weights
