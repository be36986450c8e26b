"""Greedy and beam search: width 1 equals greedy on both encoder-decoders, beam search beats
greedy on a hand-set model, length normalisation by hand, EOS handling, scores equal the
teacher-forced log-likelihood, source padding changes nothing, caches tiled and gathered.

Legend: b batch, s source positions, t new tokens, v vocabulary, k beam width.
"""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_variables

from arch import EncoderDecoderTransformer
from arch.decoding import (
    beam_search,
    gather_beams,
    greedy_search,
    length_normaliser,
    tile_beams,
    translate,
)
from arch.errors import ConfigError
from arch.seq2seq import RNNSeq2Seq

PAD, EOS, BOS = 0, 1, 2
VOCAB, B, S, NEW = 7, 4, 6, 8
SOURCE = np.random.default_rng(0).integers(3, VOCAB, (B, S)).astype(np.int32)
LENGTHS = np.array([6, 3, 5, 1])
SOURCE_MASK = np.arange(S)[None, :] < LENGTHS[:, None]
EOS_BIAS, WEIGHT_SCALE = 1.5, 3.0
WIDE = 4
MODELS = {
    "rnn_bahdanau": RNNSeq2Seq(
        vocab_size=VOCAB,
        num_outputs=VOCAB,
        hidden_size=8,
        embed_size=6,
        attention="bahdanau",
        bidirectional=True,
    ),
    "transformer": EncoderDecoderTransformer(
        vocab_size=VOCAB,
        num_outputs=VOCAB,
        features=16,
        num_heads=2,
        num_layers=1,
        max_len=16,
        tie_embeddings=False,
    ),
}


def model_and_variables(name: str):
    model = MODELS[name]
    inputs = {"source": SOURCE, "target": SOURCE[:, :3], "source_mask": SOURCE_MASK}
    variables = random_variables(model, inputs, seed=3)
    variables = jax.tree.map(lambda x: x * WEIGHT_SCALE, variables)  # livelier dynamics
    # no random output bias (it would decide every step alone) but one on EOS, so that some
    # hypotheses stop early
    output = variables["params"]["head"]
    output["bias"] = jnp.zeros_like(output["bias"]).at[EOS].set(EOS_BIAS)
    return model, variables


@pytest.fixture(scope="module", params=list(MODELS))
def seq2seq(request):
    return (request.param, *model_and_variables(request.param))


def encode(model, variables, source, mask):
    return model.apply(variables, source, mask, method=model.encode)


def log_likelihood(model, variables, sequences: np.ndarray) -> np.ndarray:
    """Teacher-forced sum of log P(token) over each sequence up to and including its EOS."""
    decoder_inputs = np.concatenate([np.full((B, 1), BOS), sequences[:, :-1]], axis=1)
    inputs = {"source": SOURCE, "target": decoder_inputs, "source_mask": SOURCE_MASK}
    log_probs = jax.nn.log_softmax(jax.jit(model.apply)(variables, inputs), axis=-1)  # [b, t, v]
    picked = np.take_along_axis(np.asarray(log_probs), sequences[..., None], axis=-1)[..., 0]
    ended = np.cumsum(sequences == EOS, axis=1) - (sequences == EOS)  # EOS seen before
    return np.sum(np.where(ended == 0, picked, 0.0), axis=1)


def decode(model, variables, source, mask, width: int):
    """translate(), always called the same way so that its compiled programs are reused."""
    return translate(model, variables, source, mask, NEW, BOS, EOS, PAD, width, 0.0)


def test_beam_width_1_is_greedy_and_scores_are_log_likelihoods(seq2seq):
    _, model, variables = seq2seq
    greedy, greedy_scores = greedy_search(
        model,
        variables,
        model.init_cache(B, NEW, encode(model, variables, SOURCE, SOURCE_MASK), SOURCE_MASK),
        jnp.full((B,), BOS, jnp.int32),
        NEW,
        EOS,
        PAD,
    )
    beam, beam_scores = decode(model, variables, SOURCE, SOURCE_MASK, 1)
    np.testing.assert_array_equal(beam, greedy)
    chex.assert_trees_all_close(beam_scores, greedy_scores, rtol=1e-6)
    chex.assert_shape(greedy, (B, NEW))
    assert len(np.unique(np.asarray(greedy))) > 1
    wide, wide_scores = decode(model, variables, SOURCE, SOURCE_MASK, WIDE)
    for sequences, scores in ((greedy, greedy_scores), (wide, wide_scores)):
        sequences = np.asarray(sequences)
        for row in sequences[(sequences == EOS).any(axis=1)]:  # after EOS only PAD follows
            assert np.all(row[list(row).index(EOS) + 1 :] == PAD)
        expected = log_likelihood(model, variables, sequences)
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_source_padding_changes_no_decode(seq2seq):
    _, model, variables = seq2seq
    extra = 3
    source = np.concatenate([SOURCE, np.full((B, extra), 5, np.int32)], axis=1)  # noisy pads
    mask = np.arange(S + extra)[None, :] < LENGTHS[:, None]
    for width in (1, WIDE):
        short, short_scores = decode(model, variables, SOURCE, SOURCE_MASK, width)
        long, long_scores = decode(model, variables, source, mask, width)
        np.testing.assert_array_equal(long, short)
        chex.assert_trees_all_close(long_scores, short_scores, rtol=1e-5, atol=1e-5)


class TableModel(nn.Module):
    """A hand-set decoder: a small automaton whose node (the cache) fixes the next-token
    probabilities. Tokens: 0 PAD, 1 EOS, 2 BOS, 3 "a", 4 "b"."""

    probabilities: tuple[tuple[float, ...], ...]
    """[node, v]; node 0 is before BOS."""
    transitions: tuple[tuple[int, ...], ...]
    """[node, v] -> the node after that token."""

    @nn.nowrap
    def init_cache(self, batch: int, max_len: int | None = None) -> dict:
        return {"node": jnp.zeros((batch,), jnp.int32)}

    def decode_step(self, cache: dict, tokens: jax.Array) -> tuple[jax.Array, dict]:
        node = jnp.asarray(self.transitions)[cache["node"], tokens]
        return jnp.log(jnp.asarray(self.probabilities))[node], {"node": node}


# nodes: 0 before BOS, 1 start, 2 after "a", 3 after "b", 4 ended
GREEDY_TRAP = TableModel(
    probabilities=(
        (0, 0, 1, 0, 0),
        (0, 0, 0, 0.55, 0.45),  # start: "a" looks better ...
        (0, 0.3, 0, 0.36, 0.34),  # ... but every continuation of "a" is unlikely
        (0, 0.9, 0, 0.05, 0.05),  # "b" then EOS: 0.45 * 0.9 = 0.405
        (1, 0, 0, 0, 0),
    ),
    transitions=((1,) * 5, (4, 4, 1, 2, 3), (4, 4, 2, 2, 2), (4, 4, 3, 2, 2), (4,) * 5),
)


def run(search, model, width: int | None = None, **options):
    cache, start = model.init_cache(1), jnp.full((1,), BOS, jnp.int32)
    if width is None:
        return search(model, {}, cache, start, 4, EOS, PAD)
    return search(model, {}, cache, start, 4, width, EOS, PAD, **options)


def test_beam_search_finds_a_likelier_sequence_than_greedy():
    greedy, greedy_score = run(greedy_search, GREEDY_TRAP)
    np.testing.assert_array_equal(greedy, [[3, 3, 3, 3]])  # a a a a
    assert float(greedy_score[0]) == pytest.approx(math.log(0.55) + 3 * math.log(0.36), 1e-6)
    beam, beam_score = run(beam_search, GREEDY_TRAP, 2)
    np.testing.assert_array_equal(beam, [[4, EOS, PAD, PAD]])  # b EOS, then padding
    assert float(beam_score[0]) == pytest.approx(math.log(0.45 * 0.9), 1e-6)
    assert float(beam_score[0]) > float(greedy_score[0])
    one, one_score = run(beam_search, GREEDY_TRAP, 1)
    np.testing.assert_array_equal(one, greedy)
    assert float(one_score[0]) == float(greedy_score[0])


SHORT_OR_LONG = TableModel(
    probabilities=(
        (0, 0, 1, 0, 0),
        (0, 0.55, 0, 0.45, 0),  # start: EOS at once, or "a"
        (0, 0.8, 0, 0.1, 0.1),  # after "a": EOS
        (1, 0, 0, 0, 0),
        (1, 0, 0, 0, 0),
    ),
    transitions=((1,) * 5, (4, 4, 1, 2, 4), (4, 4, 2, 2, 2), (4,) * 5, (4,) * 5),
)


def test_length_normalisation_by_hand():
    short, long = math.log(0.55), math.log(0.45) + math.log(0.8)  # "EOS" and "a EOS"
    greedy, greedy_score = run(greedy_search, SHORT_OR_LONG)  # EOS at once, then padding
    np.testing.assert_array_equal(greedy, [[EOS, PAD, PAD, PAD]])
    assert float(greedy_score[0]) == pytest.approx(short, 1e-6)
    plain, plain_score = run(beam_search, SHORT_OR_LONG, 2)
    np.testing.assert_array_equal(plain, [[EOS, PAD, PAD, PAD]])
    assert float(plain_score[0]) == pytest.approx(short, 1e-6)
    # per-token log-likelihood (|Y|^1): "a EOS" scores long / 2 > short / 1
    power, power_score = run(
        beam_search, SHORT_OR_LONG, 2, length_penalty=1.0, normalisation="power"
    )
    np.testing.assert_array_equal(power, [[3, EOS, PAD, PAD]])
    assert float(power_score[0]) == pytest.approx(long / 2, 1e-6)
    # GNMT: ((5 + 2) / 6)^1 = 7/6 is not enough to prefer the long one
    gnmt, gnmt_score = run(beam_search, SHORT_OR_LONG, 2, length_penalty=1.0)
    np.testing.assert_array_equal(gnmt, plain)
    assert float(gnmt_score[0]) == pytest.approx(short / 1.0, 1e-6)
    lengths = jnp.array([1, 2, 10])
    chex.assert_trees_all_close(
        length_normaliser(lengths, 0.6, "gnmt"), ((5 + np.array([1, 2, 10])) / 6) ** 0.6
    )
    chex.assert_trees_all_close(length_normaliser(lengths, 0.0, "power"), np.ones(3))
    with pytest.raises(ConfigError, match="gnmt"):
        length_normaliser(lengths, 1.0, "linear")


def test_caches_are_tiled_and_gathered_along_the_beams():
    cache = {"state": jnp.arange(6).reshape(2, 3), "index": jnp.array(5)}  # b = 2
    tiled = tile_beams(cache, 2)
    np.testing.assert_array_equal(tiled["state"], [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])
    assert int(tiled["index"]) == 5  # a scalar is shared
    gathered = gather_beams(tiled, jnp.array([3, 2, 1, 0]))
    np.testing.assert_array_equal(gathered["state"], [[3, 4, 5]] * 2 + [[0, 1, 2]] * 2)
    with pytest.raises(ConfigError, match="beam_width"):
        run(beam_search, GREEDY_TRAP, 0)
