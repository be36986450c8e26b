"""Memory-efficient attention in pure JAX: the FlashAttention forward pass (Dao et al. 2022)
and the FlashAttention-2 backward pass (Dao 2023).

Legend: b batch, q queries, k keys, h heads, e head width; c queries and r keys per block; q'
and k' the lengths padded up to whole blocks.

softmax(q k^T * scale + masks) v is computed for one head and one block of queries against one
block of keys at a time, so that the working set is [b, 1, c, r] and never [b, h, q, k]:
- forward: for each (head, query block), an online softmax over the key blocks keeps the
  running max m, the denominator l and the unnormalised output; it saves the output and the
  logsumexp L = m + log l [b, h, q] for the backward pass;
- backward (a `jax.custom_vjp`): for each (head, key block), a loop over the query blocks
  recomputes the probabilities P = exp(S - L) from q, k and L, accumulates dK and dV of the key
  block and adds to dQ of each query block.
All loops are `fori_loop`s, never Python loops, so compile time does not grow with the length.
Causal attention visits only the blocks at or below the diagonal (faster than masking them
all) and masks only the diagonal ones. One head at a time makes a block's
[b, c, 1, e] slice of the [b, t, h, e] inputs a [b, 1, c, e] operand for free, where all heads
at once would need a transpose of every block in every pair (or a transposed copy of q, k and
v, as much memory again as the output); it measured faster and needs less of the scores'
memory at the same block size (README.md, "The measurements behind the defaults").

The numbers are those of `arch.attention.einsum_attention`: masked keys get exactly zero
weight, and a query with no key to attend gets the uniform average of all k values, as the
reference's softmax of all-equal masked scores gives. Softmax statistics are float32.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from arch.errors import ConfigError

F32 = jnp.float32
F32_OUT = {"preferred_element_type": F32}  # products of any dtype accumulate in float32
Residuals = tuple[jax.Array, jax.Array, jax.Array, jax.Array | None, jax.Array, jax.Array]


class Tiling(NamedTuple):
    """The static settings of one call (hashable: the custom VJP's non-differentiable argument)."""

    causal: bool
    scale: float
    keys: int
    """k, the number of keys before padding."""
    blocks: tuple[int, int]
    """(c, r): queries and keys per block."""


def blockwise_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    causal: bool = False,
    scale: float,
    block_size: int = 512,
) -> jax.Array:
    """softmax(q k^T * scale + masks) v: query [b, q, h, e], key / value [b, k, h, e], key_mask
    [b, k] (True / 1: attend) -> [b, q, h, e] in the query's dtype. Causal: query i attends
    keys j <= i (needs q == k). A block holds min(block_size, length) queries or keys."""
    batch, queries, heads, width = query.shape
    keys = key.shape[1]
    if key_mask is not None and key_mask.shape != (batch, keys):
        raise ValueError(f"key_mask must be [batch, keys] = {(batch, keys)}, got {key_mask.shape}")
    if causal and queries != keys:
        raise ValueError(f"causal attention needs as many queries as keys, got {queries}, {keys}")
    if block_size < 1:
        raise ConfigError(f"block_size must be positive, got {block_size}")
    blocks = (min(block_size, queries), min(block_size, keys))  # (c, r)
    padded_keys = math.ceil(keys / blocks[1]) * blocks[1]
    valid = None  # [b or 1, k']: True for a key to attend; None: all k' are
    if key_mask is not None or padded_keys != keys:
        valid = (jnp.arange(padded_keys) < keys)[None]  # [1, k']: the padding is masked
        if key_mask is not None:
            valid = valid & jnp.pad(key_mask.astype(bool), ((0, 0), (0, padded_keys - keys)))
    query, key, value = pad(query, blocks[0]), pad(key, blocks[1]), pad(value, blocks[1])
    return _attention(query, key, value, valid, Tiling(causal, scale, keys, blocks))[:, :queries]


def pad(x: jax.Array, size: int) -> jax.Array:
    """[b, t, h, e] -> [b, t', h, e], zeros appended up to a multiple t' of size (no copy when
    t is one)."""
    missing = -x.shape[1] % size
    return jnp.pad(x, ((0, 0), (0, missing), (0, 0), (0, 0))) if missing else x


def block(x: jax.Array, index: jax.Array, size: int) -> jax.Array:
    """Block `index` of `size` positions along axis 1."""
    return jax.lax.dynamic_slice_in_dim(x, index * size, size, axis=1)


def tile(x: jax.Array, index: jax.Array, size: int, head: jax.Array) -> jax.Array:
    """Block `index` of `size` positions of one head: [b, t, h, e] -> [b, 1, size, e] (moving
    the head axis of size 1 is free: no transpose)."""
    batch, _, _, width = x.shape
    start = (0, index * size, head, 0)
    return jax.lax.dynamic_slice(x, start, (batch, size, 1, width)).reshape(batch, 1, size, width)


def put_tile(x: jax.Array, update: jax.Array, index: jax.Array, head: jax.Array) -> jax.Array:
    """x [b, t, h, e] with `tile` (index, head) replaced by update [b, 1, size, e]."""
    batch, _, size, width = update.shape
    update = update.reshape(batch, size, 1, width).astype(x.dtype)
    return jax.lax.dynamic_update_slice(x, update, (0, index * size, head, 0))


def row_tile(x: jax.Array, index: jax.Array, size: int, head: jax.Array) -> jax.Array:
    """Block `index` of one head of per-query statistics: [b, h, q'] -> [b, 1, size]."""
    return jax.lax.dynamic_slice(x, (0, head, index * size), (x.shape[0], 1, size))


def attend(valid: jax.Array | None, j: jax.Array, block_k: int, diagonal: bool) -> jax.Array | None:
    """The mask [b or 1, 1, c, r] (True: attend) of key block j: the padding mask, and on a
    causal diagonal block (c = r) query a attends key b <= a; None where every key is attended.
    Blocks below the diagonal need no causal mask, blocks above it are never visited."""
    mask = None if valid is None else block(valid, j, block_k)[:, None, None, :]
    if diagonal:
        lower = jnp.tril(jnp.ones((block_k, block_k), bool))  # [c, r]: b <= a
        mask = lower if mask is None else mask & lower
    return mask


def forward(
    query: jax.Array, key: jax.Array, value: jax.Array, valid: jax.Array | None, tiling: Tiling
) -> tuple[jax.Array, jax.Array]:
    """query [b, q', h, e], key / value [b, k', h, e] -> (output [b, q', h, e] in the query's
    dtype, logsumexp L [b, h, q'] float32: +inf for a query that attends no key, so that each
    of its exp(S - L) in the backward pass is 0)."""
    batch, queries, heads, width = query.shape
    causal, scale, keys, (block_q, block_k) = tiling
    q_blocks, k_blocks = queries // block_q, key.shape[1] // block_k
    mean_value = value.astype(F32).sum(axis=1) / keys  # [b, h, e]; the padding is zeros
    rows = (batch, 1, block_q)

    def query_block(n: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple:
        out, lse = carry  # [b, q', h, e], [b, h, q']
        head, i = n // q_blocks, n % q_blocks  # one loop over (head, query block)
        # scaled once here, not in a pass over each [c, r] block of scores
        query_i = tile(query, i, block_q, head) * scale  # q * scale, [b, 1, c, e]

        def key_step(j: jax.Array, state: tuple, diagonal: bool = False) -> tuple:
            row_max, row_sum, acc = state  # m, l [b, 1, c]; acc [b, 1, c, e]
            key_j, value_j = tile(key, j, block_k, head), tile(value, j, block_k, head)
            s = jnp.einsum("bhqe,bhke->bhqk", query_i, key_j, **F32_OUT)  # S_j [b, 1, c, r]
            mask = attend(valid, j, block_k, diagonal)
            s = s if mask is None else jnp.where(mask, s, -jnp.inf)
            new_max = jnp.maximum(row_max, s.max(axis=-1))  # m_j = max(m_{j-1}, rowmax(S_j))
            shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)  # no inf - inf: all masked
            p = jnp.exp(s - shift[..., None])  # P_j = exp(S_j - m_j), 0 where masked
            rescale = jnp.exp(row_max - shift)  # exp(m_{j-1} - m_j)
            row_sum = row_sum * rescale + p.sum(axis=-1)  # l_j = rescale l_{j-1} + rowsum(P_j)
            pv = jnp.einsum("bhqk,bhke->bhqe", p.astype(value.dtype), value_j, **F32_OUT)
            return new_max, row_sum, acc * rescale[..., None] + pv  # rescale O_{j-1} + P_j V_j

        init = (jnp.full(rows, -jnp.inf), jnp.zeros(rows), jnp.zeros((*rows, width)))
        if causal:  # the diagonal block, masked, then the ones below it (this order: XLA plans
            state = key_step(i, init, diagonal=True)  # 10% less scratch memory than the other)
            row_max, row_sum, acc = jax.lax.fori_loop(0, i, key_step, state)
        else:
            row_max, row_sum, acc = jax.lax.fori_loop(0, k_blocks, key_step, init)
        empty = row_sum == 0  # [b, 1, c]: no key to attend
        row_sum = jnp.where(empty, 1.0, row_sum)
        mean = jax.lax.dynamic_slice_in_dim(mean_value, head, 1, axis=1)[:, :, None]  # [b,1,1,e]
        out_i = jnp.where(empty[..., None], mean, acc / row_sum[..., None])  # O = acc / l
        lse_i = jnp.where(empty, jnp.inf, row_max + jnp.log(row_sum))  # L = m + log l
        lse = jax.lax.dynamic_update_slice(lse, lse_i, (0, head, i * block_q))
        return put_tile(out, out_i, i, head), lse

    init = (jnp.zeros_like(query), jnp.zeros((batch, heads, queries), F32))
    return jax.lax.fori_loop(0, heads * q_blocks, query_block, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(
    query: jax.Array, key: jax.Array, value: jax.Array, valid: jax.Array | None, tiling: Tiling
) -> jax.Array:
    """`forward`'s output."""
    return forward(query, key, value, valid, tiling)[0]


def _attention_forward(
    query: jax.Array, key: jax.Array, value: jax.Array, valid: jax.Array | None, tiling: Tiling
) -> tuple[jax.Array, Residuals]:
    out, lse = forward(query, key, value, valid, tiling)
    return out, (query, key, value, valid, out, lse)


def _attention_backward(
    tiling: Tiling, residuals: Residuals, d_out: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, None]:
    """dQ, dK, dV [b, q' or k', h, e] from d_out [b, q', h, e]; the mask gets no gradient."""
    query, key, value, valid, out, lse = residuals
    causal, scale, keys, (block_q, block_k) = tiling
    heads = query.shape[2]
    q_blocks, k_blocks = query.shape[1] // block_q, key.shape[1] // block_k
    delta = jnp.einsum("bqhe,bqhe->bhq", d_out, out, **F32_OUT)  # D = rowsum(dO * O), [b, h, q']
    # a query that attends no key weighs every value by 1 / k: dV_j += sum of its dO / k
    empty = (lse == jnp.inf).transpose(0, 2, 1)[..., None]  # [b, q', h, 1]
    d_mean = (d_out.astype(F32) * empty).sum(axis=1)[:, :, None] / keys  # [b, h, 1, e]

    def key_block(n: jax.Array, carry: tuple) -> tuple:
        d_query, d_key, d_value = carry  # [b, q', h, e] float32, [b, k', h, e] x2
        head, j = n // k_blocks, n % k_blocks  # one loop over (head, key block)
        key_j, value_j = tile(key, j, block_k, head), tile(value, j, block_k, head)  # [b,1,r,e]
        key_j_t = key_j.swapaxes(2, 3)  # [b, 1, e, r]

        # transposed scores S^T [b, 1, r, c]: every product below then contracts the minor
        # axis of its left operand, the layout XLA:CPU's fast matmul path takes
        def query_step(i: jax.Array, state: tuple, diagonal: bool = False) -> tuple:
            d_query, d_key_j, d_value_j = state  # [b, q', h, e], [b, 1, r, e] x2; float32
            query_i, d_out_i = tile(query, i, block_q, head), tile(d_out, i, block_q, head)
            lse_i = row_tile(lse, i, block_q, head)[:, :, None, :]  # [b, 1, 1, c]
            s_t = jnp.einsum("bhke,bhqe->bhkq", key_j, query_i, **F32_OUT) * scale  # S^T
            p_t = jnp.exp(s_t - lse_i)  # P^T = exp(S^T - L), [b, 1, r, c]
            mask = attend(valid, j, block_k, diagonal)
            p_t = p_t if mask is None else jnp.where(mask.swapaxes(-1, -2), p_t, 0.0)
            d_value_j += jnp.einsum(
                "bhkq,bhqe->bhke", p_t.astype(d_out.dtype), d_out_i, **F32_OUT
            )  # dV_j += P^T dO_i
            d_p_t = jnp.einsum("bhke,bhqe->bhkq", value_j, d_out_i, **F32_OUT)  # dP^T = V dO^T
            delta_i = row_tile(delta, i, block_q, head)[:, :, None, :]  # [b, 1, 1, c]
            d_s_t = (p_t * (d_p_t - delta_i) * scale).astype(query.dtype)  # dS = P (dP - D) s
            d_key_j += jnp.einsum("bhkq,bhqe->bhke", d_s_t, query_i, **F32_OUT)  # dK_j += dS^T Q
            d_q_t = jnp.einsum("bhek,bhkq->bheq", key_j_t, d_s_t, **F32_OUT)  # (dS K_j)^T
            d_query_i = tile(d_query, i, block_q, head) + d_q_t.swapaxes(2, 3)  # dQ_i += dS K_j
            return put_tile(d_query, d_query_i, i, head), d_key_j, d_value_j

        zeros = jnp.zeros(key_j.shape, F32)
        state = (d_query, zeros, zeros)
        if causal:  # the diagonal block, masked, then the query blocks below it
            state = query_step(j, state, diagonal=True)
        first = j + 1 if causal else 0
        d_query, d_key_j, d_value_j = jax.lax.fori_loop(first, q_blocks, query_step, state)
        d_value_j += jax.lax.dynamic_slice_in_dim(d_mean, head, 1, axis=1)
        return d_query, put_tile(d_key, d_key_j, j, head), put_tile(d_value, d_value_j, j, head)

    init = (jnp.zeros(query.shape, F32), jnp.zeros_like(key), jnp.zeros_like(value))
    d_query, d_key, d_value = jax.lax.fori_loop(0, heads * k_blocks, key_block, init)
    return d_query.astype(query.dtype), d_key, d_value, None


_attention.defvjp(_attention_forward, _attention_backward)
