"""Attention modules: multi-head attention against Flax's, its cache, rotary and sinusoidal
positions, additive and Luong attention, the feed-forward block (the kernels themselves are
tested in tests/test_attention_kernels.py).

Legend: b batch, q query positions, k key positions, s source positions, d model width,
h heads, e head width, a width of the additive score layer, f feed-forward width.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_inputs, random_variables

from arch.attention import AdditiveAttention, LuongAttention, MultiHeadAttention, rotary_embedding
from arch.errors import ConfigError
from arch.layers import FeedForward, PositionalEncoding, sinusoidal_encoding

B, Q, K, D, H = 2, 5, 7, 16, 4  # e = 4
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def lengths_mask(lengths, time: int) -> np.ndarray:
    """[b, time] booleans, True at the first `length` positions of each row."""
    return np.arange(time)[None, :] < np.asarray(lengths)[:, None]


QUERY_MASK = lengths_mask([Q, 3], Q)  # [b, q]: the second row has two padded positions
KEY_MASK = lengths_mask([K, 2], K)  # [b, k]


# Multi-head attention equals Flax's under the same parameters.


def flax_attention() -> nn.MultiHeadDotProductAttention:
    return nn.MultiHeadDotProductAttention(num_heads=H, qkv_features=D, out_features=D)


def test_parameters_are_named_and_shaped_as_flax_multi_head_attention():
    x = jax.ShapeDtypeStruct((B, Q, D), jnp.float32)
    shapes = lambda module: jax.tree.map(
        jnp.shape, jax.eval_shape(module.init, jax.random.key(0), x)
    )
    ours = shapes(MultiHeadAttention(D, H))
    assert ours == shapes(flax_attention())
    e = D // H
    assert ours["params"]["query"] == {"kernel": (D, H, e), "bias": (H, e)}
    assert ours["params"]["out"] == {"kernel": (H, e, D), "bias": (D,)}


@functools.cache
def ours_and_flax(kernel: str) -> dict:
    """case -> (our output, Flax's output) under one set of random parameters."""
    ours, theirs = MultiHeadAttention(D, H, kernel=kernel), flax_attention()
    x, y = random_inputs(B, Q, D), random_inputs(B, K, D, seed=2)
    variables = random_variables(ours, x)
    causal = nn.make_causal_mask(jnp.ones((B, Q)))  # [b, 1, q, q]
    padding = QUERY_MASK[:, None, None, :]  # [b, 1, 1, q]

    @jax.jit
    def run(variables):
        mine = functools.partial(ours.apply, variables)
        flax = functools.partial(theirs.apply, variables)
        return {
            "self": (mine(x), flax(x)),
            "padding": (mine(x, key_mask=QUERY_MASK), flax(x, mask=padding)),
            "causal": (mine(x, causal=True), flax(x, mask=causal)),
            "causal_padding": (
                mine(x, key_mask=QUERY_MASK, causal=True),
                flax(x, mask=nn.combine_masks(causal, padding)),
            ),
            "cross": (mine(x, y, key_mask=KEY_MASK), flax(x, y, mask=KEY_MASK[:, None, None, :])),
        }

    return run(variables)


CASES = ["self", "padding", "causal", "causal_padding", "cross"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kernel", ["einsum", "xla"])
def test_multi_head_attention_equals_flax(kernel, case):
    ours, theirs = ours_and_flax(kernel)[case]
    chex.assert_shape(ours, (B, Q, D))
    chex.assert_trees_all_close(ours, theirs, **TOLERANCE)
    assert float(jnp.std(ours)) > 0.1


def test_masks_change_the_output():
    results = ours_and_flax("einsum")
    full = np.asarray(results["self"][0])
    # the first row has no padding: only the second row changes
    chex.assert_trees_all_close(results["padding"][0][0], full[0], **TOLERANCE)
    assert not np.allclose(results["padding"][0][1], full[1], atol=1e-3)
    # the last query sees every key with or without the causal mask; the first sees only itself
    causal = np.asarray(results["causal"][0])
    chex.assert_trees_all_close(causal[:, -1], full[:, -1], **TOLERANCE)
    assert not np.allclose(causal[:, 0], full[:, 0], atol=1e-3)


# The key / value cache: one position at a time equals the causal full call.


@pytest.mark.parametrize("rotary", [False, True])
def test_decode_step_equals_the_causal_full_call(rotary):
    attention = MultiHeadAttention(D, H, rotary=rotary)
    x = random_inputs(B, Q, D)
    variables = random_variables(MultiHeadAttention(D, H), x)  # rotary adds no parameter
    positions = jnp.arange(Q)[None, :]  # [1, q]

    @jax.jit
    def both(variables):
        full = attention.apply(variables, x, causal=True, positions_q=positions)

        def step(cache, inputs):
            index, x_t = inputs  # x_t [b, 1, d]
            out, cache = attention.apply(variables, cache, x_t, index, method=attention.decode_step)
            return cache, out[:, 0]

        # room for three positions more than are fed: unwritten slots must not be seen
        cache = attention.init_cache(B, Q + 3)
        cache, stepped = jax.lax.scan(step, cache, (jnp.arange(Q), x.swapaxes(0, 1)[:, :, None]))
        return full, stepped.swapaxes(0, 1), cache

    full, stepped, cache = both(variables)
    chex.assert_trees_all_close(stepped, full, **TOLERANCE)
    chex.assert_shape([cache["key"], cache["value"]], (B, H, D // H, Q + 3))  # positions last
    assert np.all(np.asarray(cache["key"][..., Q:]) == 0)
    assert not np.any(np.all(np.asarray(cache["key"][..., :Q]) == 0, axis=(1, 2)))


def test_rotary_attention_needs_positions():
    x = random_inputs(B, Q, D)
    with pytest.raises(ValueError, match="needs the positions"):
        jax.eval_shape(MultiHeadAttention(D, H, rotary=True).init, jax.random.key(0), x)


# Rotary position embeddings.

rotate = jax.jit(rotary_embedding)


def test_rotary_embedding_rotates_each_pair_by_its_angle():
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    position = 3
    angles = position * 10000.0 ** (-np.array([0, 2]) / 4)  # [3, 0.03]
    cos, sin = np.cos(angles), np.sin(angles)
    expected = [
        x[0] * cos[0] - x[1] * sin[0],
        x[0] * sin[0] + x[1] * cos[0],
        x[2] * cos[1] - x[3] * sin[1],
        x[2] * sin[1] + x[3] * cos[1],
    ]
    rotated = rotate(jnp.asarray(x)[None, None, None], jnp.array([[position]]))
    chex.assert_trees_all_close(rotated[0, 0, 0], np.array(expected, np.float32), rtol=1e-6)
    # position 0 is the identity
    unrotated = rotate(jnp.asarray(x)[None, None, None], jnp.array([[0]]))
    chex.assert_trees_all_close(unrotated[0, 0, 0], x)


def rotated_dot_products(query, key, query_positions, key_positions) -> np.ndarray:
    """rot(q, m) . rot(k, n) for each pair (m, n): one query and one key vector [e]."""
    count = len(query_positions)
    rotated = lambda x, positions: rotate(
        jnp.broadcast_to(x, (1, count, 1, x.shape[-1])), jnp.asarray(positions)[None]
    )
    products = rotated(query, query_positions) * rotated(key, key_positions)  # [1, n, 1, e]
    return np.sum(np.asarray(products), axis=(0, 2, 3))


def test_rotated_query_key_product_depends_only_on_the_offset():
    query, key = random_inputs(8, seed=3), random_inputs(8, seed=4)
    m = np.array([0, 1, 5, 9, 2, 7])
    n = np.array([0, 4, 5, 1, 9, 3])
    dots = rotated_dot_products(query, key, m, n)
    for shift in (1, 13, 40):
        shifted = rotated_dot_products(query, key, m + shift, n + shift)
        chex.assert_trees_all_close(shifted, dots, atol=1e-4)
    # equal positions (offset 0) rotate both vectors alike: the plain dot product
    chex.assert_trees_all_close(dots[[0, 2]], np.full(2, query @ key), rtol=1e-5)
    # different offsets give different products
    assert len(np.unique(np.round(dots[[1, 3, 4, 5]], 3))) == 4


def test_rotary_embedding_preserves_the_norm_of_each_head_vector():
    x = random_inputs(B, Q, H, 8)
    positions = np.array([[0, 3, 17, 100, 1000]])
    rotated = rotate(jnp.asarray(x), jnp.asarray(positions))
    chex.assert_trees_all_close(
        jnp.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5
    )
    assert not np.allclose(rotated[:, 1:], x[:, 1:], atol=1e-2)


def test_rotary_embedding_needs_an_even_head_width():
    with pytest.raises(ConfigError, match="even head width, got 5"):
        rotary_embedding(jnp.ones((1, 2, 1, 5)), jnp.arange(2)[None])


# Sinusoidal and learned positions.


def sinusoids(positions: np.ndarray, d: int) -> np.ndarray:
    """PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d)): [..., t, d]."""
    encoding = np.zeros((*positions.shape, d))
    for i in range(d // 2):
        angle = positions / 10000 ** (2 * i / d)
        encoding[..., 2 * i] = np.sin(angle)
        encoding[..., 2 * i + 1] = np.cos(angle)
    return encoding.astype(np.float32)


def test_sinusoidal_encoding_equals_the_formula():
    d, positions = 6, np.array([[0, 1, 2, 7, 50], [3, 4, 5, 6, 9]])
    result = jax.jit(sinusoidal_encoding, static_argnums=1)(jnp.asarray(positions), d)
    assert result.dtype == jnp.float32
    chex.assert_trees_all_close(result, sinusoids(positions, d), atol=1e-5)
    with pytest.raises(ConfigError, match="even width, got 5"):
        sinusoidal_encoding(jnp.asarray(positions), 5)


def apply_positions(kind: str, x: np.ndarray, max_len: int = 8) -> tuple[jax.Array, dict]:
    encoding = PositionalEncoding(kind, max_len)
    positions = jnp.arange(x.shape[1])[None]
    return jax.jit(encoding.init_with_output)(jax.random.key(0), x, positions)


def test_positional_encodings_add_their_vectors():
    x = random_inputs(B, Q, D)
    sinusoidal, variables = apply_positions("sinusoidal", x)
    assert variables == {}
    chex.assert_trees_all_close(sinusoidal, x + sinusoids(np.arange(Q)[None], D), **TOLERANCE)
    learned, variables = apply_positions("learned", x)
    table = np.asarray(variables["params"]["table"]["embedding"])
    chex.assert_shape(table, (8, D))
    chex.assert_trees_all_close(learned, x + table[:Q], **TOLERANCE)


@pytest.mark.parametrize("kind", ["none", "rotary"])
def test_rotary_and_none_leave_the_embeddings_unchanged(kind):
    x = random_inputs(B, Q, D)
    out, variables = apply_positions(kind, x)
    assert variables == {}
    np.testing.assert_array_equal(out, x)


def test_learned_positions_reject_sequences_longer_than_their_table():
    x = random_inputs(1, 9, D)
    with pytest.raises(ConfigError, match="sequence of 9 positions exceeds max_len 8"):
        apply_positions("learned", x, max_len=8)


@pytest.mark.parametrize("kind", ["sinusoidal", "rotary", "none"])
def test_positions_without_a_table_take_any_length(kind):
    x = random_inputs(1, 9, D)
    out, _ = apply_positions(kind, x, max_len=8)
    assert out.shape == x.shape


def test_unknown_positional_encoding_is_named():
    with pytest.raises(ConfigError, match="unknown positional encoding 'relative'"):
        apply_positions("relative", random_inputs(1, 3, D))


# Additive (Bahdanau) and Luong attention against their formulas.


S, QUERY_WIDTH, MEMORY_WIDTH, SCORE_WIDTH = 6, 5, 7, 9
MEMORY_MASK = np.array([[1, 1, 0, 1, 1, 0], [0, 1, 0, 0, 1, 1]], bool)  # holes, not only ends


def softmax(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    exp = np.exp(scores - scores.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def check_attention(module, expected_scores, query, memory, variables):
    """The module's context and weights, with and without the memory mask, equal the softmax
    of the expected scores [b, s]; masked positions get weight exactly 0."""
    run = jax.jit(lambda mask: module.apply(variables, query, memory, mask))
    for mask in (None, MEMORY_MASK):
        context, weights = run(mask)
        expected = softmax(expected_scores, mask)
        chex.assert_shape([context, weights], [(B, MEMORY_WIDTH), (B, S)])
        chex.assert_trees_all_close(weights, expected, **TOLERANCE)
        chex.assert_trees_all_close(context, np.einsum("bs,bsd->bd", expected, memory), **TOLERANCE)
        chex.assert_trees_all_close(jnp.sum(weights, -1), np.ones(B), rtol=1e-6)
        if mask is not None:
            assert np.all(np.asarray(weights)[~mask] == 0)
            assert np.all(np.asarray(weights)[mask] > 0)


def test_additive_attention_equals_its_formula():
    query, memory = random_inputs(B, QUERY_WIDTH), random_inputs(B, S, MEMORY_WIDTH, seed=2)
    module = AdditiveAttention(SCORE_WIDTH)
    variables = random_variables(module, query, memory)
    p = jax.tree.map(np.asarray, variables["params"])
    assert jax.tree.map(np.shape, p) == {
        "query": {"kernel": (QUERY_WIDTH, SCORE_WIDTH)},
        "memory": {"kernel": (MEMORY_WIDTH, SCORE_WIDTH), "bias": (SCORE_WIDTH,)},
        "score": {"kernel": (SCORE_WIDTH, 1)},
    }
    # e_j = v^T tanh(W_s s + W_h h_j + b)
    hidden = np.tanh(
        (query @ p["query"]["kernel"])[:, None]
        + memory @ p["memory"]["kernel"]
        + p["memory"]["bias"]
    )  # [b, s, a]
    scores = (hidden @ p["score"]["kernel"])[..., 0]
    check_attention(module, scores, query, memory, variables)


@pytest.mark.parametrize("score", ["dot", "general"])
def test_luong_attention_equals_its_formula(score):
    width = MEMORY_WIDTH if score == "dot" else QUERY_WIDTH
    query, memory = random_inputs(B, width), random_inputs(B, S, MEMORY_WIDTH, seed=2)
    module = LuongAttention(score)
    variables = random_variables(module, query, memory)
    if score == "dot":
        assert variables == {}
        scores = np.einsum("bd,bsd->bs", query, memory)  # s^T h_j
    else:
        kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])  # W [d_q, d_m]
        assert variables["params"] == {"Dense_0": {"kernel": kernel}}
        scores = np.einsum("bq,qm,bsm->bs", query, kernel, memory)  # s^T W h_j
    check_attention(module, scores, query, memory, variables)


def test_luong_dot_scores_need_equal_widths():
    query, memory = random_inputs(B, 3), random_inputs(B, S, 4)
    with pytest.raises(ValueError, match="equal widths"):
        LuongAttention("dot").init(jax.random.key(0), query, memory)


# The feed-forward block.


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU by its tanh approximation (jax.nn.gelu's default)."""
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize(
    "activation, function", [("relu", lambda x: np.maximum(x, 0)), ("gelu", gelu_tanh)]
)
def test_feed_forward_is_dense_activation_dense(activation, function):
    x = random_inputs(B, Q, D)
    block = FeedForward(32, D, activation)
    variables = random_variables(block, x)
    p = jax.tree.map(np.asarray, variables["params"])
    chex.assert_shape([p["hidden"]["kernel"], p["output"]["kernel"]], [(D, 32), (32, D)])
    hidden = function(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])  # [b, q, f]
    expected = hidden @ p["output"]["kernel"] + p["output"]["bias"]  # [b, q, d]
    chex.assert_trees_all_close(jax.jit(block.apply)(variables, x), expected, **TOLERANCE)
