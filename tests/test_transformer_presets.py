"""Transformer presets and inputs: pinned parameter counts of the registered defaults, the
Vision Transformer, parameter dtypes, and clear errors on bad input.

Legend: b batch, t time (tokens), d model width, h heads, f feed-forward width, v vocabulary,
p patch size.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from arch import (
    MODELS,
    EncoderDecoderTransformer,
    MaskedLanguageModel,
    TransformerClassifier,
    TransformerLM,
    ViT,
)
from arch.attention import MultiHeadAttention
from arch.errors import ConfigError
from arch.vit import patchify
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.state import parameter_count
from train.tasks import Digits

VOCAB, D, H, F = 11, 16, 2, 32  # the small sizes of tests/test_transformer.py
B, T = 2, 6
SMALL = dict(features=D, num_heads=H, ffn_hidden=F, num_layers=1, max_len=16)
TOKEN_MODEL = dict(SMALL, vocab_size=VOCAB, num_outputs=VOCAB)
KEY = jax.random.key(0)

# Pinned parameter counts of the registered defaults (d 64, 4 heads, f 256, 2 layers, learned
# positions of max_len 512).


def dense(f_in: int, f_out: int) -> int:
    return f_in * f_out + f_out


def encoder_block(d: int, f: int) -> int:
    attention = 4 * dense(d, d)  # query, key, value, output: 4 (d * d + d)
    return attention + 2 * 2 * d + dense(d, f) + dense(f, d)  # two LayerNorms, the FFN


def decoder_block(d: int, f: int) -> int:
    return encoder_block(d, f) + 4 * dense(d, d) + 2 * d  # cross-attention and its LayerNorm


WIDTH, FFN_WIDTH, LAYERS = 64, 256, 2
POSITIONS = 512 * WIDTH  # the learned table
ENCODER = LAYERS * encoder_block(WIDTH, FFN_WIDTH) + 2 * WIDTH  # and pre-norm's final LayerNorm
DECODER = LAYERS * decoder_block(WIDTH, FFN_WIDTH) + 2 * WIDTH
FEATURE_SEQUENCES = jax.ShapeDtypeStruct((2, 8, 8), jnp.float32)  # digits rows [b, t, f]
BYTES = jax.ShapeDtypeStruct((2, 8), jnp.int32)
IMAGES = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
PARAMETERS = {
    # features 8 -> d, a [CLS] vector, positions, the encoder, the head to 10 classes
    "transformer": (
        FEATURE_SEQUENCES,
        dense(8, WIDTH) + WIDTH + POSITIONS + ENCODER + dense(WIDTH, 10),
    ),
    # 257 tokens, positions, the encoder, Dense - LayerNorm, the output bias (tied to tokens)
    "bert": (BYTES, 257 * WIDTH + POSITIONS + ENCODER + dense(WIDTH, WIDTH) + 2 * WIDTH + 257),
    # 256 tokens, positions, the decoder stack (no cross-attention: an encoder's count; tied)
    "gpt": (BYTES, 256 * WIDTH + POSITIONS + ENCODER),
    # one embedding and one position table shared by source and target
    "transformer_seq2seq": (
        {"source": BYTES, "target": BYTES},
        256 * WIDTH + POSITIONS + ENCODER + DECODER,
    ),
    # 2x2 patches of one channel -> d, a [CLS] vector, 64 learned positions, the encoder, head
    "vit": (IMAGES, dense(4, WIDTH) + WIDTH + 64 * WIDTH + ENCODER + dense(WIDTH, 10)),
}


def test_hand_computed_parameter_counts():
    assert encoder_block(64, 256) == 49984
    assert decoder_block(64, 256) == 66752
    assert {name: count for name, (_, count) in PARAMETERS.items()} == {
        "transformer": 134154,
        "bert": 153857,
        "gpt": 149248,
        "transformer_seq2seq": 282880,
        "vit": 105226,
    }


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_parameter_count_of_the_registered_defaults(name):
    inputs, expected = PARAMETERS[name]
    variables = jax.eval_shape(MODELS[name]().init, jax.random.key(0), inputs)
    assert parameter_count(variables["params"]) == expected


# Initial values: the default's pinned, GPT-2's statistics.

# Of each registered default (key 0): (arrays, sum of squares, sum of x * sin(1, 2, ...) per
# array), equal to the values before initializer / embed_scale / layer_norm_eps existed (1992
# arrays of 41 configurations compared bit for bit then).
DEFAULT_INIT = {
    "transformer": (40, 1563.204100, 9.403438),
    "bert": (41, 1617.822201, 2.577103),
    "gpt": (36, 1492.933698, -7.965481),
    "transformer_seq2seq": (90, 3608.321706, 11.950052),
    "vit": (40, 1542.705498, 9.823714),
}


def concrete(inputs):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), inputs)


@pytest.mark.parametrize("name", list(DEFAULT_INIT))
def test_default_initial_values_are_pinned(name):
    inputs, _ = PARAMETERS[name]
    params = MODELS[name]().init(jax.random.key(0), concrete(inputs))["params"]
    arrays = [np.asarray(a, np.float64) for a in jax.tree.leaves(params)]
    signature = sum(float(a.ravel() @ np.sin(np.arange(a.size) + 1.0)) for a in arrays)
    count, squares, expected_signature = DEFAULT_INIT[name]
    assert len(arrays) == count
    assert sum(float((a**2).sum()) for a in arrays) == pytest.approx(squares, rel=1e-6)
    assert signature == pytest.approx(expected_signature, abs=1e-4)


def residual_sublayers(path: str, model) -> int | None:
    """N of GPT-2's 0.02 / sqrt(N) for a residual output projection at `path`, else None."""
    if not path.endswith(("/out/kernel", "feed_forward/output/kernel")):
        return None
    cross = path.startswith("decoder/") and isinstance(model, EncoderDecoderTransformer)
    return (3 if cross else 2) * model.num_layers


WIDE = dict(features=128, num_heads=4, num_layers=2, max_len=32)
GPT2_MODELS = {
    "gpt": (TransformerLM(**WIDE, vocab_size=300, num_outputs=300, tie_embeddings=False), BYTES),
    "bert": (MaskedLanguageModel(**WIDE, vocab_size=300, num_outputs=300, norm="post"), BYTES),
    "transformer": (TransformerClassifier(**WIDE, num_outputs=10), FEATURE_SEQUENCES),
    "transformer_seq2seq": (
        EncoderDecoderTransformer(**WIDE, vocab_size=300, num_outputs=300, source_vocab_size=200),
        {"source": BYTES, "target": BYTES},
    ),
    "vit": (ViT(**WIDE, num_outputs=10), IMAGES),
}


@pytest.mark.parametrize("name", list(GPT2_MODELS))
def test_gpt2_initialisation_of_every_parameter(name):
    """normal(0.02) for every kernel and table, 0.02 / sqrt(N) for the residual outputs (N: the
    stack's residual sublayers), zero biases, LayerNorms at ones: each array's std within 5
    standard errors (0.02 / sqrt(2 n) for n draws) of its target, its mean within 5 too."""
    model, inputs = GPT2_MODELS[name]
    model = model.clone(initializer="gpt2")
    params = model.init(jax.random.key(0), concrete(inputs))["params"]
    for path, array in flatten_dict(params, sep="/").items():
        array = np.asarray(array, np.float64)
        if path.endswith("bias"):
            np.testing.assert_array_equal(array, 0, err_msg=path)
        elif path.endswith("scale"):
            np.testing.assert_array_equal(array, 1, err_msg=path)
        else:
            sublayers = residual_sublayers(path, model)
            target = 0.02 if sublayers is None else 0.02 / np.sqrt(sublayers)
            error = target / np.sqrt(2 * array.size)
            assert abs(array.std() - target) < 5 * error, (path, array.std(), target)
            assert abs(array.mean()) < 5 * target / np.sqrt(array.size), (path, array.mean())


def test_gpt2_initialisation_statistics_of_a_measurable_model():
    """A GPT of 4 layers, d 256: each kind of kernel, gathered over the layers, within 2% of
    its target; the residual outputs at 0.02 / sqrt(2 * 4)."""
    model = TransformerLM(features=256, num_heads=4, num_layers=4, initializer="gpt2")
    shapes = jax.eval_shape(model.init, jax.random.key(0), BYTES)["params"]
    params = jax.jit(model.init)(jax.random.key(0), concrete(BYTES))["params"]
    flat = flatten_dict(params, sep="/")
    assert set(flat) == set(flatten_dict(shapes, sep="/"))
    kinds = {
        "self_attention/query/kernel": 0.02,
        "self_attention/key/kernel": 0.02,
        "self_attention/value/kernel": 0.02,
        "feed_forward/hidden/kernel": 0.02,
        "self_attention/out/kernel": 0.02 / np.sqrt(8),
        "feed_forward/output/kernel": 0.02 / np.sqrt(8),
        "embedding/embedding": 0.02,
        "positions/table/embedding": 0.02,
    }
    for kind, target in kinds.items():
        arrays = [np.asarray(v).ravel() for k, v in flat.items() if k.endswith(kind)]
        layered = kind.startswith(("self_attention", "feed_forward"))
        assert len(arrays) == (4 if layered else 1), kind
        assert np.concatenate(arrays).std() == pytest.approx(target, rel=0.02), kind
    biases = [v for k, v in flat.items() if k.endswith("bias")]
    assert biases and all(not np.any(np.asarray(b)) for b in biases)
    # the default draws LeCun normal: std 1 / sqrt(fan-in), 1 / sqrt(256) = 0.0625 for the query
    default = TransformerLM(features=256, num_heads=4, num_layers=4)
    query = default.init(jax.random.key(0), concrete(BYTES))["params"]["decoder"]["blocks_0"]
    kernel = np.asarray(query["self_attention"]["query"]["kernel"])
    assert kernel.std() == pytest.approx(1 / 16, rel=0.03)


@pytest.mark.parametrize(
    "positional, embed_scale, scaled",
    [
        ("sinusoidal", "auto", True),  # the 2017 paper's: positions of amplitude 1, rows x sqrt(d)
        ("learned", "auto", False),  # GPT-2's: a learned table of the embeddings' own scale
        ("rotary", "auto", False),
        ("learned", "sqrt_d", True),
        ("sinusoidal", "none", False),
    ],
)
def test_embed_scale_multiplies_the_looked_up_rows_and_the_tied_head_reads_the_plain_table(
    positional, embed_scale, scaled
):
    model = TransformerLM(**TOKEN_MODEL, positional=positional, embed_scale=embed_scale)
    tokens = jnp.array([[3, 1, 4, 1, 5, 9]])  # [b, t]
    params = model.init(KEY, tokens)["params"]
    _, state = model.apply(
        {"params": params}, tokens, capture_intermediates=True, mutable=["intermediates"]
    )
    captured = state["intermediates"]
    table = np.asarray(params["embedding"]["embedding"])  # [v, d]
    rows = table[np.asarray(tokens)]  # [b, t, d]
    np.testing.assert_array_equal(captured["embedding"]["__call__"][0], rows)
    added = np.asarray(captured["positions"]["__call__"][0])  # rows (scaled or not) + positions
    multiplier = np.sqrt(D) if scaled else 1.0
    if positional == "sinusoidal":
        angles = np.arange(T)[:, None] / 10000 ** (np.arange(0, D, 2) / D)  # [t, d/2]
        table_of_positions = np.zeros((T, D))
        table_of_positions[:, 0::2], table_of_positions[:, 1::2] = np.sin(angles), np.cos(angles)
        np.testing.assert_allclose(added, multiplier * rows + table_of_positions, atol=1e-6)
    elif positional == "learned":
        learned = np.asarray(params["positions"]["table"]["embedding"])[:T]
        np.testing.assert_allclose(added, multiplier * rows + learned, atol=1e-6)
    else:  # rotary positions act inside attention: the rows pass unchanged
        np.testing.assert_allclose(added, multiplier * rows, atol=1e-6)
    # the tied output layer is x E^T with the unscaled table, whatever embed_scale says
    x = jax.random.normal(jax.random.key(1), (B, T, D))
    logits = model.apply({"params": params}, x, method=lambda m, y: m.logits(y))
    np.testing.assert_allclose(logits, np.asarray(x) @ table.T, rtol=1e-5, atol=1e-5)


def test_unknown_initializer_and_embed_scale_are_named():
    with pytest.raises(ConfigError, match=r"unknown initializer 'xavier'; choose one of"):
        jax.eval_shape(TransformerLM(**TOKEN_MODEL, initializer="xavier").init, KEY, BYTES)
    with pytest.raises(ConfigError, match=r"unknown embed_scale 'sqrt'; choose one of"):
        jax.eval_shape(TransformerLM(**TOKEN_MODEL, embed_scale="sqrt").init, KEY, BYTES)


# The Vision Transformer.


def test_patchify_cuts_row_major_patches():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4)  # [b, y, x]
    patches = patchify(jnp.asarray(image), 2)
    expected = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    np.testing.assert_array_equal(patches, np.array([expected], np.float32))
    # two channels: pixel (y, x) holds 8y + 2x + c; a patch lists its pixels row by row, the
    # channels of each pixel together
    colour = np.arange(16, dtype=np.float32).reshape(1, 2, 4, 2)  # [b, y, x, c]
    expected = [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]
    np.testing.assert_array_equal(patchify(jnp.asarray(colour), 2), np.array([expected]))
    chex.assert_shape(patchify(jnp.zeros((3, 8, 8, 1)), 4), (3, 4, 16))


def test_patchify_rejects_images_not_divisible_by_the_patch():
    with pytest.raises(ConfigError, match="image 8x6 is not divisible into 4x4 patches"):
        patchify(jnp.zeros((1, 8, 6, 1)), 4)
    with pytest.raises(ConfigError, match=r"ViT expects images \[batch, height, width, channels\]"):
        patchify(jnp.zeros((1, 8)), 4)


def test_vit_output_shape():
    model = ViT(**SMALL, num_outputs=7, patch_size=4)
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], IMAGES)
    assert out.shape == (2, 7) and out.dtype == jnp.float32


def test_vit_learns_digits():
    model = ViT(features=32, num_heads=4, num_layers=1, patch_size=4)  # 4 patches of 4x4
    result = fit(
        model, Digits(), OptimConfig(lr=3e-3), RunConfig.quiet(150, compilation_cache=False)
    )
    # 150 steps reach 0.93-0.97 test accuracy over seeds 0-3
    assert result.summary["final"]["test"]["accuracy"] >= 0.9


# Clear errors on bad input.


@pytest.mark.parametrize(
    "model, inputs, message",
    [
        (
            TransformerClassifier(**SMALL),
            BYTES,
            r"TransformerClassifier got token ids .*vocab-size",
        ),
        (TransformerLM(**SMALL, vocab_size=None), BYTES, "TransformerLM needs vocab_size"),
        (
            TransformerClassifier(**SMALL),
            jax.ShapeDtypeStruct((2, 8), jnp.float32),
            r"\[batch, time, features\], got shape \(2, 8\)",
        ),
        (
            TransformerClassifier(**SMALL),
            jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32),
            r"\[batch, time, features\], got shape \(2, 8, 8, 1\)",
        ),
        (TransformerClassifier(**SMALL, pool="max"), FEATURE_SEQUENCES, "unknown pool 'max'"),
        (
            TransformerLM(**TOKEN_MODEL, kernel="flash"),
            BYTES,
            r"unknown attention kernel 'flash'; choose one of \('auto', 'einsum', 'xla', 'cudnn', "
            r"'blockwise'\)",
        ),
        (
            TransformerLM(**{**TOKEN_MODEL, "max_len": 4}),
            BYTES,
            "sequence of 8 positions exceeds max_len 4",
        ),
        (TransformerLM(**{**TOKEN_MODEL, "num_heads": 3}), BYTES, "not divisible by num_heads 3"),
        (ViT(**SMALL, patch_size=3), IMAGES, "not divisible into 3x3 patches"),
    ],
)
def test_clear_errors(model, inputs, message):
    with pytest.raises(ConfigError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), inputs)


def test_causal_attention_needs_as_many_queries_as_keys():
    attention = MultiHeadAttention(D, H)
    queries, keys = jnp.zeros((B, 3, D)), jnp.zeros((B, 5, D))
    with pytest.raises(
        ValueError, match="causal attention needs as many queries as keys, got 3, 5"
    ):
        jax.eval_shape(
            functools.partial(attention.init, causal=True), jax.random.key(0), queries, keys
        )


def test_decoding_errors():
    with pytest.raises(ConfigError, match="a cache of 17 positions exceeds max_len 16"):
        TransformerLM(**TOKEN_MODEL).init_cache(B, 17)
    with pytest.raises(ValueError, match="decodes against a memory"):
        EncoderDecoderTransformer(**TOKEN_MODEL).init_cache(B, T)


def test_vit_reads_integer_pixels_as_intensities():
    model = ViT(num_outputs=3, num_layers=1, features=16, num_heads=2, patch_size=4)
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1)).astype(np.uint8)
    variables = model.init(jax.random.key(0), images)
    logits = model.apply(variables, images)
    chex.assert_trees_all_close(logits, model.apply(variables, images.astype(np.float32)))


def test_every_parameter_follows_param_dtype():
    tokens = np.zeros((2, 5), np.int32)
    models = [
        TransformerClassifier(vocab_size=7, num_outputs=3, features=16, num_heads=2),
        MaskedLanguageModel(vocab_size=7, num_outputs=7, features=16, num_heads=2),
        TransformerLM(vocab_size=7, num_outputs=7, features=16, num_heads=2),
    ]
    for model in models:
        model = model.clone(param_dtype="bfloat16")
        shapes = jax.eval_shape(model.init, jax.random.key(0), tokens)
        assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype("bfloat16")}
