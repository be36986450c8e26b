"""The attention kernels of arch/attention.py (einsum, xla, blockwise, auto; cudnn on a GPU)
against a NumPy softmax(q k^T * scale + mask) v with hand-written gradients, and facts about
masks, dtypes, errors, the blockwise kernel's memory and what "auto" chooses.

Legend: b batch, q queries, k keys, h heads, e head width.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch.attention import (
    KERNELS,
    LONG_SEQUENCE,
    MASKED,
    choose_kernel,
    dot_product_attention,
    flash_attention,
)
from arch.blockwise_attention import blockwise_attention
from arch.errors import ConfigError

BATCH, HEADS, WIDTH, BLOCK = 2, 3, 8, 16
SCALE = WIDTH**-0.5
TOLERANCE = dict(rtol=1e-5, atol=2e-5)

# (queries, keys, key padding mask, causal); 37 is no multiple of the block size 16, 5 and 7
# are shorter than a block
CASES = {
    "plain": (37, 37, False, False),
    "padding mask": (37, 37, True, False),
    "causal": (37, 37, False, True),
    "causal and padding mask": (37, 37, True, True),
    "cross attention": (20, 45, True, False),
    "shorter than a block": (5, 7, True, False),
}

MASKABLE = [k for k in KERNELS if k != "cudnn"]
"""Kernels that take any mask and dtype on any backend ("cudnn": GPU, half precision, causal
or no mask only; tested on its own below, where a GPU is present)."""
GPU = jax.default_backend() == "gpu"


def random_inputs(queries: int, keys: int, masked: bool, seed: int = 0) -> dict:
    """query [b, q, h, e], key and value [b, k, h, e], a cotangent like query and a key_mask
    [b, k] whose batch 1 masks its first 6 keys: with causal, its first queries attend none."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    arrays = {
        "query": normal(BATCH, queries, HEADS, WIDTH),
        "key": normal(BATCH, keys, HEADS, WIDTH),
        "value": normal(BATCH, keys, HEADS, WIDTH),
        "d_out": normal(BATCH, queries, HEADS, WIDTH),
        "key_mask": None,
    }
    if masked:
        key_mask = rng.random((BATCH, keys)) < 0.7
        key_mask[0, -1], key_mask[1, :6] = True, False
        arrays["key_mask"] = key_mask
    return arrays


def numpy_attention(query, key, value, key_mask, causal, d_out) -> tuple[np.ndarray, ...]:
    """softmax(q k^T * scale + mask) v in float64 and its gradients, written out:
    dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)), dQ = dS K s, dK = dS^T Q s;
    masked scores are the constant MASKED (no gradient), as in the reference kernel."""
    query, key, value, d_out = (np.asarray(x, np.float64) for x in (query, key, value, d_out))
    queries, keys = query.shape[1], key.shape[1]
    mask = np.ones((BATCH, 1, queries, keys), bool)  # [b, 1, q, k]
    if key_mask is not None:
        mask &= np.asarray(key_mask, bool)[:, None, None, :]
    if causal:
        mask &= np.tril(np.ones((queries, keys), bool))
    scores = np.where(mask, np.einsum("bqhe,bkhe->bhqk", query, key) * SCALE, MASKED)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)  # [b, h, q, k]
    out = np.einsum("bhqk,bkhe->bqhe", p, value)
    d_value = np.einsum("bhqk,bqhe->bkhe", p, d_out)
    d_p = np.einsum("bqhe,bkhe->bhqk", d_out, value)
    d_s = np.where(mask, p * (d_p - (d_p * p).sum(axis=-1, keepdims=True)), 0.0)
    d_query = np.einsum("bhqk,bkhe->bqhe", d_s, key) * SCALE
    d_key = np.einsum("bhqk,bqhe->bkhe", d_s, query) * SCALE
    return out, d_query, d_key, d_value


@functools.cache
def attention_and_gradients(kernel: str, causal: bool, block_size: int = BLOCK):
    """jit of (query, key, value, key_mask, d_out) -> (output, (dQ, dK, dV)) of one kernel."""

    def run(query, key, value, key_mask, d_out):
        attention = lambda q, k, v: dot_product_attention(
            q, k, v, key_mask=key_mask, causal=causal, kernel=kernel, block_size=block_size
        )
        out, vjp = jax.vjp(attention, query, key, value)
        return out, vjp(d_out.astype(out.dtype))

    return jax.jit(run)


def run_kernel(kernel: str, arrays: dict, causal: bool, block_size: int = BLOCK):
    function = attention_and_gradients(kernel, causal, block_size)
    names = ("query", "key", "value", "key_mask", "d_out")
    return function(*(arrays[name] for name in names))


@pytest.mark.parametrize("kernel", MASKABLE)
@pytest.mark.parametrize("case", CASES)
def test_kernel_values_and_gradients_match_numpy(kernel, case):
    queries, keys, masked, causal = CASES[case]
    arrays = random_inputs(queries, keys, masked)
    out, grads = run_kernel(kernel, arrays, causal)
    expected = numpy_attention(**arrays, causal=causal)
    assert out.shape == (BATCH, queries, HEADS, WIDTH) and out.dtype == jnp.float32
    names = ("out", "d_query", "d_key", "d_value")
    for name, value, reference in zip(names, (out, *grads), expected, strict=True):
        np.testing.assert_allclose(value, reference, **TOLERANCE, err_msg=name)


@pytest.mark.parametrize("kernel", ["xla", "blockwise"])
@pytest.mark.parametrize("case", ["causal and padding mask", "cross attention"])
def test_kernel_gradients_match_the_einsum_reference(kernel, case):
    queries, keys, masked, causal = CASES[case]
    arrays = random_inputs(queries, keys, masked, seed=3)
    _, grads = run_kernel(kernel, arrays, causal)
    _, reference = run_kernel("einsum", arrays, causal)
    for value, expected in zip(grads, reference, strict=True):
        np.testing.assert_allclose(value, expected, **TOLERANCE)


def test_a_query_with_no_key_to_attend_averages_all_values():
    arrays = random_inputs(37, 37, masked=True)
    expected = arrays["value"][1].mean(axis=0)  # [h, e]: uniform weights over all 37 keys
    for kernel in MASKABLE:
        out, _ = run_kernel(kernel, arrays, causal=True)
        # batch 1 masks keys 0-5, so causal queries 0-5 have none
        np.testing.assert_allclose(out[1, :6], np.broadcast_to(expected, (6, HEADS, WIDTH)), 1e-5)


@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_blockwise_is_independent_of_the_block_size(block_size):
    arrays = random_inputs(37, 37, masked=True, seed=1)
    out, grads = run_kernel("blockwise", arrays, True, block_size)
    expected = numpy_attention(**arrays, causal=True)
    for value, reference in zip((out, *grads), expected, strict=True):
        np.testing.assert_allclose(value, reference, **TOLERANCE)


@pytest.mark.parametrize("kernel", MASKABLE)
def test_bfloat16_inputs_give_bfloat16_outputs_and_gradients_near_the_reference(kernel):
    arrays = random_inputs(37, 37, masked=True, seed=2)
    low = {n: x if n == "key_mask" else jnp.asarray(x, jnp.bfloat16) for n, x in arrays.items()}
    out, grads = run_kernel(kernel, low, causal=True)
    rounded = {n: x if n == "key_mask" else np.asarray(x, np.float32) for n, x in low.items()}
    expected = numpy_attention(**rounded, causal=True)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    for value, reference in zip((out, *grads), expected, strict=True):
        np.testing.assert_allclose(np.asarray(value, np.float32), reference, rtol=0.01, atol=0.02)


@pytest.mark.parametrize("kernel", MASKABLE)
def test_causal_output_depends_on_no_later_key_or_value(kernel):
    """d out_t / d key_s = d out_t / d value_s = 0 exactly for s > t, and not for s <= t."""
    queries, keys, masked, causal = CASES["causal"]
    arrays = random_inputs(queries, keys, masked, seed=4)
    size = {"key": np.zeros((queries, keys)), "value": np.zeros((queries, keys))}  # [t, s]
    for t in range(queries):
        one_hot = np.zeros_like(arrays["d_out"])
        one_hot[:, t] = 1.0  # the cotangent of out_t
        _, (_, d_key, d_value) = run_kernel(kernel, {**arrays, "d_out": one_hot}, causal)
        size["key"][t] = np.abs(np.asarray(d_key)).sum(axis=(0, 2, 3))
        size["value"][t] = np.abs(np.asarray(d_value)).sum(axis=(0, 2, 3))
    later = np.triu(np.ones((queries, keys), bool), k=1)  # s > t
    for name in ("key", "value"):
        assert np.all(size[name][later] == 0), name
    assert np.all(size["value"][~later] > 0)
    assert np.all(size["key"][1:][~later[1:]] > 0)  # out_0 = v_0 whatever key_0 is


@pytest.mark.parametrize("kernel", MASKABLE)
def test_masked_keys_get_zero_weight(kernel):
    """Changing keys and values where key_mask is False changes no output."""
    arrays = random_inputs(37, 37, masked=True, seed=5)
    arrays["key_mask"][1, :6] = True  # every query attends some key
    out, _ = run_kernel(kernel, arrays, causal=False)
    masked = ~arrays["key_mask"][:, :, None, None]  # [b, k, 1, 1]
    changed = dict(arrays)
    changed["key"] = np.where(masked, 100.0, arrays["key"]).astype(np.float32)
    changed["value"] = np.where(masked, -1e4, arrays["value"]).astype(np.float32)
    changed_out, _ = run_kernel(kernel, changed, causal=False)
    np.testing.assert_array_equal(changed_out, out)


@pytest.mark.parametrize("kernel", MASKABLE)
def test_bad_masks_raise_clear_errors(kernel):
    query, key = jnp.zeros((BATCH, 6, HEADS, WIDTH)), jnp.zeros((BATCH, 9, HEADS, WIDTH))
    with pytest.raises(ValueError, match="causal attention needs as many queries as keys"):
        dot_product_attention(query, key, key, causal=True, kernel=kernel)
    with pytest.raises(ValueError, match=r"key_mask must be \[batch, keys\]"):
        dot_product_attention(query, key, key, key_mask=jnp.ones((BATCH, 6), bool), kernel=kernel)


def test_blockwise_program_size_does_not_grow_with_the_length():
    """No Python loop over blocks: the jaxpr of the gradient has as many equations at 64 keys as
    at 1024 (the block count is only a loop bound)."""

    def equations(length: int) -> int:
        x = jnp.zeros((1, length, 1, 8))
        loss = lambda q, k, v: blockwise_attention(
            q, k, v, causal=True, scale=1.0, block_size=16
        ).sum()
        return len(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(x, x, x).eqns)

    assert equations(64) == equations(1024)


def gradient_temp_bytes(kernel: str, length: int, block_size: int) -> int:
    """Scratch memory XLA plans for jax.grad of causal attention at batch 2, 2 heads, width 16."""
    x = jax.ShapeDtypeStruct((2, length, 2, 16), jnp.float32)
    loss = lambda q, k, v: dot_product_attention(
        q, k, v, causal=True, kernel=kernel, block_size=block_size
    ).sum()
    compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(x, x, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_backward_stores_nothing_of_size_queries_times_keys():
    length = 1024
    score_matrix = 2 * 2 * length * length * 4  # one float32 [b, h, q, k]: 8 MiB
    assert gradient_temp_bytes("einsum", length, 128) > score_matrix
    blockwise = gradient_temp_bytes("blockwise", length, 128)
    assert blockwise < score_matrix / 8  # working set: a few [b, h, 128, 128] blocks


@pytest.mark.parametrize(
    ("backend", "dtype", "width", "keys", "key_mask", "expected"),
    [
        ("gpu", jnp.bfloat16, 64, 512, False, "cudnn"),
        ("gpu", jnp.float16, 128, 64, False, "cudnn"),
        ("gpu", jnp.float32, 64, 256, False, "einsum"),  # cuDNN flash: half precision only
        ("gpu", jnp.float32, 64, LONG_SEQUENCE, False, "blockwise"),
        ("gpu", jnp.bfloat16, 256, 256, False, "einsum"),  # head too wide for cuDNN
        ("gpu", jnp.bfloat16, 64, 256, True, "einsum"),  # padding mask: not passed to cuDNN
        ("cpu", jnp.bfloat16, 64, 256, False, "einsum"),
        ("cpu", jnp.float32, 64, LONG_SEQUENCE - 1, False, "einsum"),
        ("cpu", jnp.float32, 64, LONG_SEQUENCE, True, "blockwise"),
        ("tpu", jnp.bfloat16, 64, 8192, False, "blockwise"),
    ],
)
def test_auto_chooses_the_backends_fast_path(backend, dtype, width, keys, key_mask, expected):
    assert choose_kernel(backend, dtype, width, keys, key_mask) == expected


@pytest.mark.skipif(GPU, reason="checks the CPU choice")
def test_auto_on_cpu_is_einsum_for_short_and_blockwise_for_long_sequences():
    short = random_inputs(37, 37, masked=True, seed=6)
    auto, einsum = run_kernel("auto", short, True), run_kernel("einsum", short, True)
    for x, y in zip(jax.tree.leaves(auto), jax.tree.leaves(einsum), strict=True):
        np.testing.assert_array_equal(x, y)
    shape = (1, LONG_SEQUENCE, 1, 8)
    q, k, v = (jax.random.normal(jax.random.key(i), shape) for i in range(3))
    auto = dot_product_attention(q, k, v, causal=True, kernel="auto")
    blockwise = dot_product_attention(q, k, v, causal=True, kernel="blockwise")
    np.testing.assert_array_equal(auto, blockwise)


def test_cudnn_kernel_refuses_a_padding_mask():
    q = jnp.zeros((1, 8, 1, 8), jnp.bfloat16)
    with pytest.raises(ConfigError, match="cudnn kernel takes no key_mask"):
        dot_product_attention(q, q, q, key_mask=jnp.ones((1, 8), bool), kernel="cudnn")


@pytest.mark.parametrize("causal", [False, True])
def test_the_cudnn_kernels_call_run_by_xla_matches_numpy(causal):
    """The cudnn kernel's exact call (layout, scale, is_causal) with XLA doing the work: what
    can be checked of it without a GPU."""
    arrays = random_inputs(37, 37, masked=False, seed=5)
    expected_out, *expected_grads = numpy_attention(**arrays, causal=causal)
    attention = lambda q, k, v: flash_attention(
        q, k, v, scale=SCALE, causal=causal, implementation=None
    )
    out, vjp = jax.vjp(attention, arrays["query"], arrays["key"], arrays["value"])
    np.testing.assert_allclose(out, expected_out, **TOLERANCE)
    for gradient, expected in zip(vjp(arrays["d_out"]), expected_grads, strict=True):
        np.testing.assert_allclose(gradient, expected, **TOLERANCE)


def test_causal_flash_attention_needs_as_many_queries_as_keys():
    q, k = jnp.zeros((1, 4, 1, 8), jnp.bfloat16), jnp.zeros((1, 6, 1, 8), jnp.bfloat16)
    with pytest.raises(ValueError, match="as many queries as keys, got 4, 6"):
        flash_attention(q, k, k, scale=1.0, causal=True)


@pytest.mark.skipif(not GPU, reason="cuDNN flash attention needs an NVIDIA GPU")
@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_matches_the_einsum_reference_in_bfloat16(causal):
    arrays = random_inputs(64, 64, masked=False, seed=7)
    low = {n: x if n == "key_mask" else jnp.asarray(x, jnp.bfloat16) for n, x in arrays.items()}
    low["key_mask"] = None
    out, grads = run_kernel("cudnn", low, causal)
    expected_out, expected_grads = run_kernel("einsum", low, causal)
    for value, reference in zip((out, *grads), (expected_out, *expected_grads), strict=True):
        np.testing.assert_allclose(
            np.asarray(value, np.float32), np.asarray(reference, np.float32), rtol=0.02, atol=0.02
        )
