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
