"""The shared `generate` and `sample_logits`: greedy decoding against the full forward pass,
top-k, sampling keys, errors, and a program that does not grow with the number of tokens.

Legend: b batch, p prompt length, s new tokens, v vocabulary.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import generation_programs

from arch.decoding import generate, sample_logits
from arch.errors import ConfigError
from arch.rnn import RNNLanguageModel
from arch.transformer import EncoderDecoderTransformer

VOCAB = 13
MODEL = RNNLanguageModel(vocab_size=VOCAB, num_outputs=VOCAB, embed_size=8, hidden_size=16)
PROMPT = np.random.default_rng(0).integers(0, VOCAB, (2, 3)).astype(np.int32)  # [b, p]
NEW_TOKENS = 6


def random_variables(model, inputs, seed: int = 0, output_scale: float = 1.0) -> dict:
    """Parameters from NumPy (standard normal over sqrt(fan-in)); `output_scale` shrinks the
    output layer, which flattens the next-token distribution towards uniform."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), inputs)
    scale = lambda shape: 1 / np.sqrt(shape[0]) if len(shape) > 1 else 0.5
    fill = lambda s: (scale(s.shape) * rng.standard_normal(s.shape)).astype(s.dtype)
    variables = jax.tree.map(fill, shapes)
    head = variables["params"]["head"]
    variables["params"]["head"] = jax.tree.map(lambda w: w * output_scale, head)
    return variables


@pytest.fixture(scope="module")
def variables() -> dict:
    return random_variables(MODEL, PROMPT)


@pytest.fixture(scope="module")
def flat_variables() -> dict:
    """A model whose next-token distribution is close to uniform: samples vary with the key."""
    return random_variables(MODEL, PROMPT, seed=1, output_scale=0.05)


@pytest.fixture(scope="module")
def forward():
    return jax.jit(MODEL.apply)


@pytest.fixture(scope="module")
def greedy(variables) -> jax.Array:
    return generate(MODEL, variables, PROMPT, NEW_TOKENS)


def test_output_keeps_the_prompt_and_adds_the_new_tokens(greedy):
    chex.assert_shape(greedy, (2, PROMPT.shape[1] + NEW_TOKENS))
    assert greedy.dtype == PROMPT.dtype
    np.testing.assert_array_equal(greedy[:, : PROMPT.shape[1]], PROMPT)
    assert np.all((np.asarray(greedy) >= 0) & (np.asarray(greedy) < VOCAB))


def test_greedy_is_the_arg_max_of_the_full_forward_pass(greedy, variables, forward):
    p = PROMPT.shape[1]
    logits = forward(variables, greedy[:, :-1])  # [b, p + s - 1, v]: causal, so one pass
    np.testing.assert_array_equal(greedy[:, p:], np.argmax(logits[:, p - 1 :], axis=-1))
    # the choices are not close calls, so the check does not hinge on rounding
    top_two = np.sort(np.asarray(logits[:, p - 1 :]), axis=-1)[..., -2:]
    assert np.min(top_two[..., 1] - top_two[..., 0]) > 1e-4


def test_greedy_continuation_of_a_greedy_output_is_the_longer_greedy_output(greedy, variables):
    longer = generate(MODEL, variables, PROMPT, NEW_TOKENS + 4)
    continued = generate(MODEL, variables, greedy, 4)
    np.testing.assert_array_equal(continued, longer)


def test_prompt_of_one_token(variables, forward):
    out = generate(MODEL, variables, PROMPT[:, :1], 3)
    chex.assert_shape(out, (2, 4))
    np.testing.assert_array_equal(out[:, 1:], np.argmax(forward(variables, out[:, :-1]), -1))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_top_1_sampling_is_greedy(temperature, greedy, variables):
    key = jax.random.key(7)
    sampled = generate(MODEL, variables, PROMPT, NEW_TOKENS, key, temperature, top_k=1)
    np.testing.assert_array_equal(sampled, greedy)


def test_sampling_is_decided_by_the_key(flat_variables):
    sample = lambda seed: generate(
        MODEL, flat_variables, PROMPT, 12, jax.random.key(seed), temperature=1.0
    )
    first, again, other = sample(0), sample(0), sample(1)
    np.testing.assert_array_equal(first, again)
    p = PROMPT.shape[1]
    np.testing.assert_array_equal(other[:, :p], PROMPT)
    # 24 draws from nearly uniform 13-way distributions: most differ between keys
    assert np.mean(np.asarray(first[:, p:]) != np.asarray(other[:, p:])) > 0.5
    greedy = generate(MODEL, flat_variables, PROMPT, 12)
    assert not np.array_equal(first, greedy)


def test_each_new_token_gets_its_own_randomness(variables):
    # no output weights: every next-token distribution is uniform, whatever came before, so
    # only the keys make the draws differ from step to step and from row to row
    no_output = jax.tree.map(jnp.zeros_like, variables["params"]["head"])
    uniform = {"params": {**variables["params"], "head": no_output}}
    out = generate(MODEL, uniform, PROMPT, 48, jax.random.key(4), temperature=1.0)
    new = np.asarray(out[:, PROMPT.shape[1] :])
    for row in new:
        assert len(np.unique(row)) >= 8  # of 13 equally likely tokens in 48 draws
    assert np.mean(new[0] != new[1]) > 0.5


@pytest.mark.parametrize("top_k", [1, 3, 10])
def test_top_k_sampling_stays_among_the_k_largest_logits(top_k):
    logits = np.random.default_rng(3).standard_normal((4000, 50)).astype(np.float32)
    tokens = np.asarray(sample_logits(jnp.asarray(logits), jax.random.key(0), 4.0, top_k))
    chex.assert_shape(tokens, (4000,))
    # the rank of each drawn token among its row's logits (0: the largest)
    rank = np.sum(logits > logits[np.arange(len(logits)), tokens][:, None], axis=-1)
    assert np.max(rank) < top_k
    # at a high temperature every rank up to k is drawn
    assert set(np.unique(rank)) == set(range(top_k))


def test_top_k_sampling_follows_the_renormalised_softmax():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0], np.float32)
    temperature, top_k, draws = 2.0, 3, 20000
    rows = jnp.asarray(np.tile(logits, (draws, 1)))
    tokens = np.asarray(sample_logits(rows, jax.random.key(1), temperature, top_k))
    kept = np.argsort(logits)[-top_k:]  # tokens 5, 0, 1
    expected = np.zeros_like(logits)
    expected[kept] = np.exp(logits[kept] / temperature) / np.sum(np.exp(logits[kept] / temperature))
    frequencies = np.bincount(tokens, minlength=len(logits)) / draws
    chex.assert_trees_all_close(frequencies, expected, atol=0.015)
    assert np.all(frequencies[expected == 0] == 0)


def test_temperature_zero_is_the_arg_max_whatever_the_key_or_top_k():
    logits = jnp.asarray(np.random.default_rng(4).standard_normal((64, 20)), jnp.float32)
    for top_k in (None, 1, 5):
        tokens = sample_logits(logits, jax.random.key(5), 0.0, top_k)
        np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature=-0.5), "temperature >= 0"),
        (dict(temperature=1.0, top_k=0, key=jax.random.key(0)), "top_k >= 1"),
        (dict(temperature=0.0, top_k=-1), "top_k >= 1"),
        (dict(temperature=1.0), "needs a PRNG key"),
    ],
)
def test_generate_rejects_bad_options(options, message, variables):
    # a missing key is the calling code's bug (ValueError); the other options are the user's
    with pytest.raises(ValueError if "PRNG" in message else ConfigError, match=message):
        generate(MODEL, variables, PROMPT, 2, **options)


def test_lowered_program_does_not_grow_with_the_number_of_tokens(variables):
    programs = generation_programs(MODEL, variables, PROMPT, 4, 256)
    assert programs[0] == programs[1]
    assert programs[0].count("stablehlo.while") == 2  # the prefill scan and the extension scan


# Decoding: stepping through a sequence gives the logits of the full forward pass.


DECODE_CELLS = {
    "elman": dict(cell="elman"),
    "lstm": dict(cell="lstm"),
    "gru": dict(cell="gru"),
    "gru_reset_after": dict(cell="gru", reset_after=True),
    "lstm_hoisted_unrolled": dict(cell="lstm", hoist_inputs=True, unroll=3),
}


@pytest.mark.parametrize("name", list(DECODE_CELLS))
def test_decode_step_equals_the_full_forward_pass(name):
    model = RNNLanguageModel(
        vocab_size=11,
        num_outputs=11,
        embed_size=6,
        hidden_size=5,
        num_layers=2,
        **DECODE_CELLS[name],
    )
    tokens = np.random.default_rng(6).integers(0, 11, (3, 7)).astype(np.int32)
    variables = random_variables(model, tokens)

    @jax.jit
    def both(variables):
        full = model.apply(variables, tokens)  # [b, t, v]

        def step(cache, token):
            logits, cache = model.apply(variables, cache, token, method=model.decode_step)
            return cache, logits

        _, stepped = jax.lax.scan(step, model.init_cache(3, 7), tokens.T)  # [t, b, v]
        return full, jnp.swapaxes(stepped, 0, 1)

    full, stepped = both(variables)
    chex.assert_shape(full, (3, 7, 11))
    chex.assert_trees_all_close(stepped, full, rtol=1e-5, atol=1e-5)
    assert float(jnp.std(full)) > 0.1


@pytest.mark.parametrize("cell, state_shapes", [("lstm", ((2, 5), (2, 5))), ("gru", (2, 5))])
def test_cache_is_one_state_per_layer_whatever_the_length(cell, state_shapes):
    model = RNNLanguageModel(cell=cell, hidden_size=5, num_layers=2)
    caches = [model.init_cache(2, max_len) for max_len in (4, 100_000)]
    shapes = [jax.tree.map(jnp.shape, cache) for cache in caches]
    assert shapes[0] == shapes[1] == [state_shapes] * 2
    for leaf in jax.tree.leaves(caches):
        assert leaf.dtype == jnp.float32
        assert np.all(np.asarray(leaf) == 0)


def test_encoder_decoder_generates_from_a_cache_made_by_the_caller():
    """generate(cache=init_cache(..., memory)) == greedy decoding by full forward passes."""
    model = EncoderDecoderTransformer(
        vocab_size=VOCAB,
        num_outputs=VOCAB,
        num_layers=1,
        features=16,
        num_heads=2,
        tie_embeddings=False,
    )
    source = jnp.asarray(np.random.default_rng(3).integers(0, VOCAB, (2, 7)), jnp.int32)
    source_mask = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3])
    start = jnp.zeros((2, 1), jnp.int32)
    variables = random_variables(model, {"source": source, "target": start})
    output_bias = variables["params"]["head"]["bias"]
    variables["params"]["head"]["bias"] = jnp.zeros_like(output_bias)  # would dominate
    memory = model.apply(variables, source, source_mask, method=model.encode)
    cache = model.init_cache(2, 6, memory, source_mask)
    generated = generate(model, variables, start, 5, cache=cache)

    # a fixed-length buffer compiles the forward pass once; the decoder is causal, so the
    # not-yet-written positions do not change the logits read at position i
    forward = jax.jit(lambda target: model.apply(variables, {**inputs, "target": target}))
    inputs = {"source": source, "source_mask": source_mask}
    sequence = jnp.zeros((2, 6), jnp.int32)
    for i in range(5):
        logits = forward(sequence)[:, i]  # [b, v]
        sequence = sequence.at[:, i + 1].set(jnp.argmax(logits, -1))
    np.testing.assert_array_equal(generated, sequence)
    assert len(set(np.asarray(generated[:, 1:]).ravel().tolist())) > 1  # not a degenerate run
