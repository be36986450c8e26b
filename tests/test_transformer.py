"""Transformer models: cached decoding against the full pass, causality and padding proved on
outputs and gradients, pre- and post-norm blocks by hand, dropout, tied embeddings, pinned
a decoding program of fixed size, the blockwise kernel through a whole model (presets, ViT and
errors: tests/test_transformer_presets.py).

Legend: b batch, t time (tokens), s source positions, d model width, h heads, e head width,
f feed-forward width, v vocabulary, p prompt length / patch size, n new tokens.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from helpers import dropout_outputs, generation_programs, random_inputs, random_variables

from arch import (
    EncoderDecoderTransformer,
    MaskedLanguageModel,
    TransformerClassifier,
    TransformerLM,
)
from arch.decoding import generate
from arch.errors import ConfigError
from arch.transformer_layers import TransformerBlock

VOCAB, D, H, F = 11, 16, 2, 32  # e = 8
B, T, S = 2, 6, 7
SMALL = dict(features=D, num_heads=H, ffn_hidden=F, num_layers=1, max_len=16)
TOKEN_MODEL = dict(SMALL, vocab_size=VOCAB, num_outputs=VOCAB)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)

TOKENS = np.random.default_rng(0).integers(0, VOCAB, (B, T)).astype(np.int32)  # [b, t]
SOURCE = np.random.default_rng(1).integers(0, VOCAB, (B, S)).astype(np.int32)  # [b, s]


def lengths_mask(lengths, time: int) -> np.ndarray:
    """[b, time] booleans, True at the first `length` positions of each row."""
    return np.arange(time)[None, :] < np.asarray(lengths)[:, None]


def replace_padding(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Tokens with every padded position (mask False) changed to another token."""
    shift = np.random.default_rng(2).integers(1, VOCAB, tokens.shape)  # never 0 mod VOCAB
    return np.where(mask, tokens, (tokens + shift) % VOCAB)


def step_through(model, variables, tokens, cache) -> jax.Array:
    """Logits [b, t, v] of feeding tokens [b, t] one at a time through `decode_step`."""

    def step(cache, token):
        logits, cache = model.apply(variables, cache, token, method=model.decode_step)
        return cache, logits

    return jax.lax.scan(step, cache, tokens.T)[1].swapaxes(0, 1)


# Cached decoding equals the full forward pass.


@pytest.mark.parametrize(
    "positional, norm, layers",
    [
        ("learned", "pre", 2),  # the default, with a cache per layer
        ("sinusoidal", "pre", 1),
        ("rotary", "pre", 1),
        ("none", "pre", 1),
        ("learned", "post", 1),
        ("rotary", "post", 2),
    ],
)
def test_language_model_decode_step_equals_the_full_forward_pass(positional, norm, layers):
    model = TransformerLM(**{**TOKEN_MODEL, "num_layers": layers}, positional=positional, norm=norm)
    variables = random_variables(model, TOKENS)

    @jax.jit
    def both(variables):
        # a cache with room for three more positions than are fed
        return model.apply(variables, TOKENS), step_through(
            model, variables, TOKENS, model.init_cache(B, T + 3)
        )

    full, stepped = both(variables)
    chex.assert_shape(full, (B, T, VOCAB))
    chex.assert_trees_all_close(stepped, full, **TOLERANCE)
    assert float(jnp.std(full)) > 0.1


def test_encoder_decoder_decode_step_equals_the_full_forward_pass():
    model = EncoderDecoderTransformer(**{**TOKEN_MODEL, "num_layers": 2})
    source_mask = lengths_mask([S, 4], S)
    inputs = {"source": SOURCE, "target": TOKENS, "source_mask": source_mask}
    variables = random_variables(model, inputs)

    @jax.jit
    def both(variables):
        full = model.apply(variables, inputs)
        memory = model.apply(variables, SOURCE, source_mask, method=model.encode)  # [b, s, d]
        cache = model.init_cache(B, T, memory, source_mask)
        return full, step_through(model, variables, TOKENS, cache)

    full, stepped = both(variables)
    chex.assert_shape(full, (B, T, VOCAB))
    chex.assert_trees_all_close(stepped, full, **TOLERANCE)
    assert float(jnp.std(full)) > 0.1


GPT = TransformerLM(**{**TOKEN_MODEL, "max_len": 80})
PROMPT = TOKENS[:, :3]  # [b, p]


@pytest.fixture(scope="module")
def gpt_variables() -> dict:
    return random_variables(GPT, PROMPT, seed=1)


def test_greedy_generation_is_the_arg_max_of_repeated_full_forward_passes(gpt_variables):
    p, new_tokens = PROMPT.shape[1], 5
    generated = generate(GPT, gpt_variables, PROMPT, new_tokens)
    # the growing sequence sits at the front of a fixed-length buffer, so the forward pass
    # compiles once; what follows it cannot matter (causality is proved below)
    forward = jax.jit(GPT.apply)
    sequence = np.zeros((B, p + new_tokens), np.int32)
    sequence[:, :p] = PROMPT
    for length in range(p, p + new_tokens):
        logits = np.asarray(forward(gpt_variables, sequence)[:, length - 1])  # [b, v]
        top_two = np.sort(logits, axis=-1)[:, -2:]
        assert np.min(top_two[:, 1] - top_two[:, 0]) > 1e-4  # no close call
        sequence[:, length] = np.argmax(logits, axis=-1)
    np.testing.assert_array_equal(generated, sequence)
    assert len(np.unique(sequence[:, p:])) > 1  # not one token repeated


def test_lowered_generation_program_does_not_grow_with_the_number_of_tokens(gpt_variables):
    programs = generation_programs(GPT, gpt_variables, PROMPT, 8, 64)
    assert programs[0] == programs[1]
    assert programs[0].count("stablehlo.while") == 2  # the prefill scan and the extension scan


# Causality, proved by gradients: a perturbation of the embedding at position s moves the
# logits at position t only when s <= t.


def embedding_sensitivity(model, variables, tokens: np.ndarray) -> np.ndarray:
    """[t, s]: the largest |d logits[t, :] / d delta[s, :]| where delta [t, d] is added to the
    token embeddings of tokens [1, t] (the output of the module named "embedding")."""

    def logits_of(delta):
        def add_delta(call, args, kwargs, context):
            out = call(*args, **kwargs)
            is_lookup = context.module.name == "embedding" and context.method_name == "__call__"
            return out + delta if is_lookup else out

        with nn.intercept_methods(add_delta):
            return model.apply(variables, tokens)[0]  # [t, v]

    jacobian = jax.jit(jax.jacrev(logits_of))(jnp.zeros((tokens.shape[1], D)))  # [t, v, s, d]
    return np.max(np.abs(np.asarray(jacobian)), axis=(1, 3))


def test_language_model_is_causal_by_gradients():
    model = TransformerLM(**TOKEN_MODEL)
    tokens = TOKENS[:1]
    sensitivity = embedding_sensitivity(model, random_variables(model, tokens), tokens)
    future = np.triu(np.ones((T, T), bool), k=1)  # s > t
    assert np.all(sensitivity[future] == 0)
    assert np.all(sensitivity[~future] > 1e-4)


def test_encoder_is_not_causal_by_gradients():
    model = MaskedLanguageModel(**TOKEN_MODEL)
    tokens = TOKENS[:1]
    sensitivity = embedding_sensitivity(model, random_variables(model, tokens), tokens)
    assert np.all(sensitivity > 1e-4)  # every position sees every other, later ones included


# Padding: tokens at padded positions change nothing at real positions.


PAD_MASK = lengths_mask([T, 4], T)  # the second row has two padded positions
NOISY = replace_padding(TOKENS, PAD_MASK)


def padded_and_noisy(apply):
    """apply(tokens, mask) on the tokens and on NOISY, with the mask and without."""
    return jax.jit(
        lambda: {
            "masked": apply(TOKENS, PAD_MASK),
            "noisy_masked": apply(NOISY, PAD_MASK),
            "unmasked": apply(TOKENS, None),
            "noisy_unmasked": apply(NOISY, None),
        }
    )()


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_classifier_ignores_padded_tokens(pool):
    model = TransformerClassifier(**SMALL, vocab_size=VOCAB, num_outputs=3, pool=pool)
    variables = random_variables(model, TOKENS)
    out = padded_and_noisy(lambda x, mask: model.apply(variables, x, mask=mask))
    chex.assert_shape(out["masked"], (B, 3))
    chex.assert_trees_all_close(out["noisy_masked"], out["masked"], **TOLERANCE)
    # without the mask the changed tokens are read: the mask is what hides them
    assert not np.allclose(out["noisy_unmasked"][1], out["unmasked"][1], atol=1e-4)
    chex.assert_trees_all_close(out["unmasked"][0], out["masked"][0], **TOLERANCE)  # no padding


def test_masked_language_model_ignores_padded_tokens_at_real_positions():
    model = MaskedLanguageModel(**TOKEN_MODEL)
    variables = random_variables(model, TOKENS)
    out = padded_and_noisy(lambda x, mask: model.apply(variables, x, mask=mask))
    chex.assert_shape(out["masked"], (B, T, VOCAB))
    real = lambda logits: np.asarray(logits)[PAD_MASK]  # [real positions, v]
    chex.assert_trees_all_close(real(out["noisy_masked"]), real(out["masked"]), **TOLERANCE)
    assert not np.allclose(real(out["noisy_unmasked"]), real(out["unmasked"]), atol=1e-4)


def test_encoder_decoder_ignores_padded_source_tokens():
    model = EncoderDecoderTransformer(**TOKEN_MODEL)
    source_mask = lengths_mask([S, 3], S)
    noisy_source = replace_padding(SOURCE, source_mask)
    variables = random_variables(model, {"source": SOURCE, "target": TOKENS})
    apply = lambda source, mask: model.apply(
        variables, {"source": source, "target": TOKENS, "source_mask": mask}
    )
    out = jax.jit(
        lambda: {
            "masked": apply(SOURCE, source_mask),
            "noisy_masked": apply(noisy_source, source_mask),
            "noisy_unmasked": apply(noisy_source, None),
        }
    )()
    chex.assert_trees_all_close(out["noisy_masked"], out["masked"], **TOLERANCE)
    assert not np.allclose(out["noisy_unmasked"][1], out["masked"][1], atol=1e-4)


# Pre-norm and post-norm.


def parameter_shapes(model, inputs) -> dict:
    """{path: shape} of the model's parameters."""
    variables = jax.eval_shape(model.init, jax.random.key(0), inputs)
    return {path: leaf.shape for path, leaf in flatten_dict(variables["params"]).items()}


@pytest.mark.parametrize(
    "cls, inputs, stacks",
    [
        (TransformerLM, TOKENS, ["decoder"]),
        (EncoderDecoderTransformer, {"source": SOURCE, "target": TOKENS}, ["encoder", "decoder"]),
    ],
)
def test_pre_and_post_norm_parameters_differ_only_by_the_final_layer_norm(cls, inputs, stacks):
    pre, post = (
        parameter_shapes(cls(**{**TOKEN_MODEL, "num_layers": 2}, norm=norm), inputs)
        for norm in ("pre", "post")
    )
    final_norms = {
        (stack, "final_norm", name): (D,) for stack in stacks for name in ("scale", "bias")
    }
    assert pre == {**post, **final_norms}
    assert not set(final_norms) & set(post)


def layer_norm(x: np.ndarray, p: dict) -> np.ndarray:
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]  # Flax's epsilon 1e-6


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def multi_head_attention(x: np.ndarray, p: dict, causal: bool) -> np.ndarray:
    """softmax(q k^T / sqrt(e)) v per head, then the output projection: [b, t, d]."""
    project = lambda name: np.einsum("btd,dhe->bthe", x, p[name]["kernel"]) + p[name]["bias"]
    query, key, value = project("query"), project("key"), project("value")  # [b, t, h, e]
    scores = np.einsum("bqhe,bkhe->bhqk", query, key) / np.sqrt(query.shape[-1])
    if causal:
        scores = np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = np.einsum("bhqk,bkhe->bqhe", weights, value)
    return np.einsum("bqhe,hed->bqd", attended, p["out"]["kernel"]) + p["out"]["bias"]


def feed_forward(x: np.ndarray, p: dict) -> np.ndarray:
    hidden = gelu_tanh(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    return hidden @ p["output"]["kernel"] + p["output"]["bias"]


@pytest.mark.parametrize("norm, causal", [("post", False), ("pre", True)])
def test_one_block_by_hand(norm, causal):
    block = TransformerBlock(D, H, F, norm=norm, parent=None)  # dropout 0, gelu
    x = random_inputs(B, T, D)
    variables = random_variables(block, x)
    p = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), variables["params"])
    attend = lambda y: multi_head_attention(y, p["self_attention"], causal)
    ffn = lambda y: feed_forward(y, p["feed_forward"])
    if norm == "post":  # x = LayerNorm(x + sublayer(x))
        hidden = layer_norm(x + attend(x), p["norms_0"])
        expected = layer_norm(hidden + ffn(hidden), p["norms_1"])
    else:  # x = x + sublayer(LayerNorm(x))
        hidden = x + attend(layer_norm(x, p["norms_0"]))
        expected = hidden + ffn(layer_norm(hidden, p["norms_1"]))
    out = jax.jit(lambda v: block.apply(v, x, causal=causal))(variables)
    chex.assert_trees_all_close(out, expected.astype(np.float32), rtol=1e-4, atol=1e-5)


# Dropout is random in training and off in evaluation.


def test_dropout_is_active_only_in_training():
    model = TransformerLM(**TOKEN_MODEL, dropout_rate=0.3)
    variables = random_variables(model, TOKENS)

    @jax.jit
    def outputs(key_a, key_b):
        apply = lambda train, key: model.apply(
            variables, TOKENS, train=train, rngs={"dropout": key}
        )
        return dropout_outputs(apply, lambda: model.apply(variables, TOKENS), key_a, key_b)

    out = outputs(jax.random.key(2), jax.random.key(3))
    np.testing.assert_array_equal(out["eval_a"], out["eval_b"])
    np.testing.assert_array_equal(out["eval_a"], out["eval_no_rng"])
    np.testing.assert_array_equal(out["train_a"], out["train_a_again"])  # the key decides
    assert not np.allclose(out["train_a"], out["eval_a"], atol=1e-3)
    assert not np.allclose(out["train_a"], out["train_b"], atol=1e-3)


# Tied embeddings.


def test_tied_logits_are_the_final_hidden_state_times_the_embedding():
    model = TransformerLM(**TOKEN_MODEL)
    variables = random_variables(model, TOKENS)
    assert set(variables["params"]) == {"embedding", "positions", "decoder"}  # no output layer
    logits, state = jax.jit(
        lambda v: model.apply(v, TOKENS, capture_intermediates=True, mutable=["intermediates"])
    )(variables)
    hidden = state["intermediates"]["decoder"]["__call__"][0]  # after the final norm [b, t, d]
    embedding = variables["params"]["embedding"]["embedding"]  # [v, d]
    chex.assert_trees_all_close(logits, np.asarray(hidden) @ np.asarray(embedding).T, **TOLERANCE)


def test_untied_embeddings_add_one_output_head():
    tied = parameter_shapes(TransformerLM(**TOKEN_MODEL), TOKENS)
    untied = parameter_shapes(TransformerLM(**TOKEN_MODEL, tie_embeddings=False), TOKENS)
    assert untied == {
        **tied,
        ("head", "kernel"): (D, VOCAB),
        ("head", "bias"): (VOCAB,),
    }
    fewer = TransformerLM(**{**TOKEN_MODEL, "num_outputs": 5}, tie_embeddings=False)
    logits = jax.eval_shape(lambda: fewer.init_with_output(jax.random.key(0), TOKENS)[0])
    assert logits.shape == (B, T, 5)


@pytest.mark.parametrize("cls", [TransformerLM, EncoderDecoderTransformer])
def test_tied_embeddings_need_as_many_outputs_as_tokens(cls):
    model = cls(**{**TOKEN_MODEL, "num_outputs": 5})
    inputs = TOKENS if cls is TransformerLM else {"source": SOURCE, "target": TOKENS}
    with pytest.raises(ConfigError, match="tied embeddings need num_outputs == vocab_size"):
        jax.eval_shape(model.init, jax.random.key(0), inputs)


def test_a_language_model_on_the_blockwise_kernel_equals_the_einsum_one():
    """Values and gradients through the whole model, with a length that is not a multiple of
    the block (37 = 2 * 16 + 5)."""
    tokens = np.random.default_rng(0).integers(0, 11, (2, 37)).astype(np.int32)
    models = {
        kernel: TransformerLM(
            vocab_size=11, num_outputs=11, features=16, num_heads=2, kernel=kernel, block_size=16
        )
        for kernel in ("einsum", "blockwise")
    }
    variables = models["einsum"].init(jax.random.key(0), tokens)

    @jax.jit
    def value_and_grads(variables):
        loss = lambda v, model: jnp.mean(model.apply(v, tokens) ** 2)
        return {k: jax.value_and_grad(loss)(variables, m) for k, m in models.items()}

    results = value_and_grads(variables)
    chex.assert_trees_all_close(results["blockwise"], results["einsum"], rtol=1e-4, atol=1e-6)
