"""RNN encoder-decoder: teacher forcing equals step-by-step decoding, padding changes nothing,
attention weights are distributions over the real source positions, the hoisted attention equals
arch/attention.py's modules, pinned parameter counts and errors.

Legend: b batch, s source positions, t target positions, e embedding width, n hidden units,
m memory width, a attention width, v vocabulary.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_variables

from arch import MODELS, EncoderDecoderTransformer
from arch.attention import AdditiveAttention, LuongAttention, attend
from arch.errors import ConfigError
from arch.seq2seq import RNNSeq2Seq

VOCAB, B, S, T = 13, 3, 7, 6
LENGTHS = [S, 4, 1]
SOURCE = np.random.default_rng(1).integers(3, VOCAB, (B, S)).astype(np.int32)  # [b, s]
TARGET = np.random.default_rng(2).integers(3, VOCAB, (B, T)).astype(np.int32)  # [b, t]
SOURCE_MASK = np.arange(S)[None, :] < np.asarray(LENGTHS)[:, None]  # [b, s]
SMALL = dict(vocab_size=VOCAB, num_outputs=VOCAB, hidden_size=8, embed_size=6)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)

VARIANTS = {
    "none_gru_bidirectional": dict(attention="none", cell="gru", bidirectional=True),
    "none_lstm": dict(attention="none", cell="lstm"),
    "bahdanau_gru_bidirectional": dict(attention="bahdanau", cell="gru", bidirectional=True),
    "bahdanau_lstm_2_layers": dict(attention="bahdanau", cell="lstm", num_layers=2),
    "luong_dot_gru": dict(attention="luong_dot", cell="gru"),
    "luong_general_lstm_bidirectional": dict(
        attention="luong_general", cell="lstm", bidirectional=True
    ),
}
ATTENTIONS = [k for k, v in VARIANTS.items() if v["attention"] != "none"]
PADDING_VARIANTS = [
    "none_gru_bidirectional",
    "bahdanau_gru_bidirectional",
    "luong_general_lstm_bidirectional",
]


def inputs_of(source=SOURCE, mask=SOURCE_MASK, target=TARGET) -> dict:
    return {"source": source, "target": target, "source_mask": mask}


def pad_source(extra: int, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """SOURCE with `extra` more padded columns, and every padded token replaced by another."""
    width = S + extra
    mask = np.arange(width)[None, :] < np.asarray(LENGTHS)[:, None]
    source = np.zeros((B, width), np.int32)
    source[:, :S] = SOURCE
    if noise:
        shift = np.random.default_rng(3).integers(1, VOCAB, source.shape)
        source = np.where(mask, source, (source + shift) % VOCAB).astype(np.int32)
    return source, mask


@functools.cache
def variant(name: str) -> tuple[RNNSeq2Seq, dict]:
    model = RNNSeq2Seq(**SMALL, **VARIANTS[name])
    return model, random_variables(model, inputs_of())


def step_through(model, variables, source, mask, target):
    memory = model.apply(variables, source, mask, method=model.encode)
    cache = model.init_cache(source.shape[0], target.shape[1], memory, mask)

    def step(cache, tokens):
        logits, cache = model.apply(variables, cache, tokens, method=model.decode_step)
        return cache, logits

    return jnp.swapaxes(jax.lax.scan(step, cache, target.T)[1], 0, 1)  # [b, t, v]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_teacher_forcing_equals_step_by_step_decoding(name):
    model, variables = variant(name)

    @jax.jit
    def both(variables):
        full = model.apply(variables, inputs_of())
        return full, step_through(model, variables, SOURCE, SOURCE_MASK, TARGET)

    full, stepped = both(variables)
    chex.assert_shape(full, (B, T, VOCAB))
    chex.assert_trees_all_close(stepped, full, **TOLERANCE)
    assert float(jnp.std(full)) > 0.1


@pytest.mark.parametrize("name", PADDING_VARIANTS)
def test_extra_source_padding_does_not_change_the_logits(name):
    """(Decodes under padding, greedy and beam search: tests/test_beam_search.py.)"""
    model, variables = variant(name)
    source, mask = pad_source(extra=4)
    forward = jax.jit(model.apply)
    chex.assert_trees_all_close(
        forward(variables, inputs_of(source, mask)), forward(variables, inputs_of()), **TOLERANCE
    )


def test_encoder_final_state_is_the_state_after_the_last_real_token():
    """Each row encoded alone, cut to its real length, gives the padded batch's final states
    (both directions: the bidirectional bridge sees the same two states; an LSTM, whose state
    is the pair (C, h); the GRU's is covered by the padding test above)."""
    model = RNNSeq2Seq(**SMALL, cell="lstm", bidirectional=True, attention="bahdanau")
    variables = random_variables(model, inputs_of())
    encode = jax.jit(lambda source, mask: model.apply(variables, source, mask, method="encode"))
    padded = encode(*pad_source(extra=2))
    for row, length in enumerate(LENGTHS):
        alone = encode(SOURCE[row : row + 1, :length], None)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, r=row: x[r : r + 1], padded["initial_state"]),
            alone["initial_state"],
            **TOLERANCE,
        )
        chex.assert_trees_all_close(padded["states"][row, :length], alone["states"][0], **TOLERANCE)
        assert np.all(np.asarray(padded["states"][row, length:]) == 0)  # padded steps output 0


@pytest.mark.parametrize("name", ATTENTIONS)
def test_attention_weights_are_distributions_over_the_real_source_positions(name):
    model, variables = variant(name)
    source, mask = pad_source(extra=2)
    weights = np.asarray(
        model.apply(variables, inputs_of(source, mask), method="attention_weights")
    )
    chex.assert_shape(weights, (B, T, S + 2))
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert np.all(weights[~np.broadcast_to(mask[:, None], weights.shape)] == 0)
    assert np.all(weights[:, :, 0][np.asarray(LENGTHS) == 1] == 1)  # one real token: all on it
    assert np.std(weights[0]) > 0.01  # not uniform


def test_bahdanau_hoisted_keys_equal_additive_attention():
    model = RNNSeq2Seq(**SMALL, attention="bahdanau", bidirectional=True)
    variables = random_variables(model, inputs_of())
    params = variables["params"]
    memory = model.apply(variables, SOURCE, SOURCE_MASK, method=model.encode)
    query = np.random.default_rng(4).standard_normal((B, 8)).astype(np.float32)  # s [b, n]
    scores = model.apply(variables, query, memory["keys"], method=model.additive_scores)
    ours = attend(scores, memory["states"], SOURCE_MASK)
    reference = AdditiveAttention(8).apply(
        {
            "params": {
                "query": {"kernel": params["attention_query"]},
                "memory": params["attention_memory"],
                "score": {"kernel": params["attention_score"]},
            }
        },
        query,
        memory["states"],
        SOURCE_MASK,
    )
    chex.assert_trees_all_close(ours, reference, **TOLERANCE)


def test_luong_general_equals_luong_attention():
    model = RNNSeq2Seq(**SMALL, attention="luong_general", bidirectional=True)
    variables = random_variables(model, inputs_of())
    memory = model.apply(variables, SOURCE, SOURCE_MASK, method=model.encode)
    hidden = np.random.default_rng(5).standard_normal((B, 1, 8)).astype(np.float32)
    context, weights = model.apply(
        variables, hidden, memory, SOURCE_MASK, method=model.luong_context
    )
    kernel = variables["params"]["attention_memory"]["kernel"]  # [m, n]: keys = h_j W^T
    reference = LuongAttention("general").apply(
        {"params": {"Dense_0": {"kernel": kernel.T}}}, hidden[:, 0], memory["states"], SOURCE_MASK
    )
    chex.assert_trees_all_close((context[:, 0], weights[:, 0]), reference, **TOLERANCE)


def gru_parameters(inputs: int, hidden: int) -> int:
    return 3 * hidden * (inputs + hidden + 1)  # W_x, W_h, b of the three gates


@pytest.mark.parametrize("attention", ["none", "bahdanau"])
def test_parameter_count_by_hand(attention):
    v, e, n, a = VOCAB, 6, 8, 5
    model = RNNSeq2Seq(**SMALL, attention=attention, bidirectional=True, attention_size=a)
    shapes = jax.eval_shape(model.init, jax.random.key(0), inputs_of())
    counted = sum(x.size for x in jax.tree.leaves(shapes))
    encoder = 2 * gru_parameters(e, n) + (2 * n + 1) * n  # two directions, the bridge
    if attention == "none":
        decoder = gru_parameters(e, n) + (n + 1) * v
    else:  # W_s, W_h + b, v; the cell reads [y; c]; W_c [c; h] + b; the output layer
        attend = n * a + (2 * n + 1) * a + a
        decoder = attend + gru_parameters(e + 2 * n, n) + (3 * n + 1) * n + (n + 1) * v
    assert counted == v * e + encoder + decoder


def test_registered_and_trains_from_the_same_inputs_as_the_transformer():
    assert MODELS["rnn_seq2seq"] is RNNSeq2Seq
    transformer = EncoderDecoderTransformer(
        vocab_size=VOCAB, num_outputs=VOCAB, features=8, num_heads=2, num_layers=1, max_len=8
    )
    for model in (RNNSeq2Seq(**SMALL), transformer):
        logits = jax.eval_shape(model.init_with_output, jax.random.key(0), inputs_of())[0]
        assert logits.shape == (B, T, VOCAB)


def test_errors():
    with pytest.raises(ConfigError, match="luong_dot"):
        RNNSeq2Seq(**SMALL, attention="luong_dot", bidirectional=True).init(
            jax.random.key(0), inputs_of()
        )
    model = RNNSeq2Seq(**SMALL)
    variables = random_variables(model, inputs_of())
    with pytest.raises(ValueError, match="no attention weights"):
        model.apply(variables, inputs_of(), method="attention_weights")
    with pytest.raises(ValueError, match="memory"):
        model.init_cache(B, T)
