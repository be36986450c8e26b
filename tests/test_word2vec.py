"""Skip-gram with negative sampling (arch/word2vec.py) and the planted corpus
(train/tasks/corpus.py): logits, queries on hand-built tables, the corpus's statistics, the
loss, and a short fit that answers the planted analogies."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from arch import MODELS
from arch.errors import ConfigError
from arch.word2vec import (
    SkipGram,
    analogy,
    analogy_accuracy,
    nearest_neighbours,
    word_vectors,
)
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.state import parameter_count
from train.tasks import TASKS, DataPosition, PlantedCorpus
from train.tasks.corpus import ATTRIBUTES
from train.validate import adapt_model

TASK = PlantedCorpus()


def skipgram_variables(center: np.ndarray, context: np.ndarray) -> dict:
    return {"params": {"center": {"embedding": center}, "context": {"embedding": context}}}


def test_logits_are_the_dot_products_of_center_and_context_vectors():
    center = np.array([[1, 2], [0, 1], [3, -1], [2, 2]], np.float32)  # v_w [v=4, d=2]
    context = np.array([[1, 0], [1, 1], [-2, 5], [0, 3]], np.float32)  # u_w [v, d]
    model = SkipGram(vocab_size=4, embed_size=2, num_outputs=3)
    inputs = np.array([[0, 1, 2, 3], [2, 0, 0, 3]], np.int32)  # (center, context, 2 negatives)
    logits = model.apply(skipgram_variables(center, context), inputs)
    # row 0: v_0 = (1, 2) against u_1 = (1, 1), u_2 = (-2, 5), u_3 = (0, 3)
    # row 1: v_2 = (3, -1) against u_0 = (1, 0), u_0, u_3 = (0, 3)
    expected = np.array([[3, 8, 6], [3, 3, -3]], np.float32)
    np.testing.assert_array_equal(np.asarray(logits), expected)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32


def test_defaults_parameters_and_initialisation():
    model = SkipGram(vocab_size=72, embed_size=32, num_outputs=6)
    inputs = np.zeros((3, 7), np.int32)
    variables = jax.jit(model.init)(jax.random.key(0), inputs)
    assert parameter_count(variables["params"]) == 2 * 72 * 32 == 4608
    center, context = (variables["params"][k]["embedding"] for k in ("center", "context"))
    # word2vec: input vectors U(-0.5 / d, 0.5 / d), output vectors zero, so every logit is 0
    assert np.all(np.abs(center) <= 0.5 / 32) and np.std(center) > 0.1 / 32
    assert np.all(context == 0)
    np.testing.assert_array_equal(model.apply(variables, inputs), np.zeros((3, 6)))
    default = SkipGram()
    shapes = jax.eval_shape(default.init, jax.random.key(0), jnp.zeros((1, 7), jnp.int32))
    assert parameter_count(shapes["params"]) == 2 * 64 * 32  # vocab 64, d 32 by default


def test_inputs_of_the_wrong_width_are_refused():
    with pytest.raises(ConfigError, match=r"\[batch, 7\] = \(center, context, 5 negatives\)"):
        SkipGram().init(jax.random.key(0), jnp.zeros((2, 4), jnp.int32))


# Unit vectors on a (base, gender, royal) grid and one unrelated word: king - man + woman is
# exactly queen, and the nearest words of each are known.
GRID = np.array(
    [
        [1, -1, -1, 0],  # 0 man
        [1, 1, -1, 0],  # 1 woman
        [1, -1, 1, 0],  # 2 king
        [1, 1, 1, 0],  # 3 queen
        [0, 0, 0, 1],  # 4 apple: orthogonal to all
    ],
    np.float32,
)


def test_nearest_neighbours_by_cosine_exclude_the_query():
    table = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, -0.1], [0.2, 0.8]], np.float32)
    neighbours = np.asarray(nearest_neighbours(table, np.array([0, 2]), k=3))
    # cosines to word 0: 0.994, 0, -0.995, 0.243; to word 2: 0, 0.110, -0.0995, 0.970
    np.testing.assert_array_equal(neighbours, [[1, 4, 2], [4, 1, 0]])
    scaled = table * np.array([[10], [0.1], [3], [1], [7]], np.float32)  # cosine ignores norms
    np.testing.assert_array_equal(
        np.asarray(nearest_neighbours(scaled, np.array([0, 2]), 3)), neighbours
    )


def test_analogy_b_is_to_a_as_c_is_to_d():
    # man is to king as woman is to queen; king is to queen as man is to woman
    a, b, c = np.array([2, 3, 1]), np.array([0, 2, 0]), np.array([1, 0, 2])
    np.testing.assert_array_equal(np.asarray(analogy(GRID, a, b, c)), [3, 1, 3])
    # with a = b the target is c itself, which is excluded: the answer is c's nearest other word
    np.testing.assert_array_equal(np.asarray(analogy(GRID, [2], [2], [0])), [1])
    quadruples = np.array([[2, 0, 1, 3], [3, 2, 0, 1], [2, 0, 1, 4]])
    assert analogy_accuracy(GRID, quadruples) == pytest.approx(2 / 3)


def test_word_vectors_are_the_center_table_or_the_sum():
    params = skipgram_variables(GRID, 2 * GRID)["params"]
    np.testing.assert_array_equal(word_vectors(params), GRID)
    np.testing.assert_array_equal(word_vectors(params, "sum"), 3 * GRID)


def test_registries_and_the_fields_the_task_sets():
    assert MODELS["word2vec"] is SkipGram and TASKS["planted_corpus"] is PlantedCorpus
    model = adapt_model(SkipGram(), PlantedCorpus(num_negatives=3))
    assert (model.vocab_size, model.num_outputs) == (72, 4)


def test_vocabulary_and_planted_analogies():
    vocab = TASK.vocabulary
    assert len(vocab) == len(set(vocab)) == TASK.vocab_size == 72
    counts = {kind: len(rows) for kind, rows in TASK.analogies.items()}
    # (b, c) pairs sharing the attribute's value times its other values: 24 * 11, 24 * 3 * 5
    assert counts == {"group": 360, "gender": 264, "age": 264}
    named = {
        kind: {tuple(vocab[i] for i in row) for row in rows}
        for kind, rows in TASK.analogies.items()
    }
    assert ("king", "man", "woman", "queen") in named["group"]
    assert ("queen", "king", "man", "woman") in named["gender"]
    assert ("colt", "stallion", "mother", "daughter") in named["age"]
    attributes = TASK.entity_attributes
    for column, kind in enumerate(ATTRIBUTES):
        a, b, c, d = (attributes[TASK.analogies[kind][:, i]] for i in range(4))
        others = np.arange(3) != column
        assert np.all(a[:, others] == b[:, others]) and np.all(a[:, column] != b[:, column])
        assert np.all(c[:, others] == d[:, others]) and np.all(d[:, column] == a[:, column])
        assert np.all(c[:, column] == b[:, column])


def test_pmi_offsets_are_planted_exactly():
    # P(context | entity) from the generator's law: log P(x | a) - log P(x | b) equals
    # log P(x | d) - log P(x | c) for every word x except the entities themselves
    law = TASK.slot_distributions[:, 1:].sum(axis=1)  # [e, v], the entity slot left out
    log_p = np.log(law[:, 24:])  # every marker and filler has P > 0 when noise > 0
    for rows in TASK.analogies.values():
        a, b, c, d = (log_p[rows[:, i]] for i in range(4))
        np.testing.assert_allclose(a - b, d - c, atol=1e-12)
    np.testing.assert_allclose(TASK.slot_distributions.sum(axis=-1), 1.0)


def test_batches_are_a_pure_function_of_the_position():
    first = TASK.train_batch(DataPosition(0, 3))
    again = PlantedCorpus().train_batch(DataPosition(0, 3))
    for key in ("inputs", "targets", "mask"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["inputs"], TASK.train_batch(DataPosition(0, 4))["inputs"])
    other_seed = PlantedCorpus(seed=1).train_batch(DataPosition(0, 3))
    assert not np.array_equal(first["inputs"], other_seed["inputs"])
    assert first["inputs"].shape == (256, 7) and first["inputs"].dtype == np.int32
    expected_targets = np.zeros((256, 6), np.float32)
    expected_targets[:, 0] = 1
    np.testing.assert_array_equal(first["targets"], expected_targets)
    np.testing.assert_array_equal(first["mask"], np.ones(256, np.float32))


def test_contexts_come_from_the_centers_sentence_within_the_window():
    task = PlantedCorpus(window=2)
    inputs, _, _ = task.sample(np.random.default_rng(7), 4000)
    rng = np.random.default_rng(7)  # the same draws, step by step
    sentences = task.sentences(rng, 4000)
    center, context = task.pair_positions(rng, 4000)
    rows = np.arange(4000)
    np.testing.assert_array_equal(inputs[:, 0], sentences[rows, center])
    np.testing.assert_array_equal(inputs[:, 1], sentences[rows, context])
    distance = np.abs(context - center)
    assert set(np.unique(distance)) == {1, 2}  # both distances occur, never 0 or beyond 2
    assert np.all((context >= 0) & (context < task.sentence_length))


def test_corpus_words_follow_the_unigram_and_negatives_its_three_quarter_power():
    # chi-square goodness of fit on fixed draws: p > 1e-3 for the right law; the wrong law
    # (negatives against the plain unigram) is rejected with p < 1e-20
    rng = np.random.default_rng(0)
    words = TASK.sentences(rng, 20_000).ravel()  # 180,000 words
    observed = np.bincount(words, minlength=TASK.vocab_size)
    assert stats.chisquare(observed, TASK.unigram * observed.sum()).pvalue > 1e-3
    inputs, _, _ = TASK.sample(rng, 20_000)
    negatives = np.bincount(inputs[:, 2:].ravel(), minlength=TASK.vocab_size)  # 100,000 draws
    noise = TASK.unigram**0.75 / np.sum(TASK.unigram**0.75)
    np.testing.assert_allclose(TASK.noise_distribution, noise)
    assert stats.chisquare(negatives, noise * negatives.sum()).pvalue > 1e-3
    assert stats.chisquare(negatives, TASK.unigram * negatives.sum()).pvalue < 1e-20


def test_loss_is_the_negative_sampling_objective():
    logits = np.array([[2.0, -1.0, 0.5], [-0.5, 1.0, -2.0], [3.0, 3.0, 3.0]], np.float32)
    targets = np.array([[1, 0, 0]] * 3, np.float32)
    mask = np.array([1, 1, 0], np.float32)  # the third row is padding
    log_sigmoid = lambda z: -math.log1p(math.exp(-z))
    per_pair = [
        -log_sigmoid(row[0]) - log_sigmoid(-row[1]) - log_sigmoid(-row[2]) for row in logits[:2]
    ]
    loss_fn = jax.jit(TASK.loss)  # one compilation instead of one per operation
    loss, metrics = loss_fn(jnp.asarray(logits), {"targets": targets, "mask": mask})
    assert float(loss) == pytest.approx(np.mean(per_pair), rel=1e-6)
    assert float(metrics["accuracy"]) == 0.5  # row 0 ranks its context first, row 1 does not
    # at initialisation every logit is 0: the loss is (1 + k) log 2
    zero_batch = {"targets": np.tile(np.eye(1, 6, dtype=np.float32), (3, 1)), "mask": np.ones(3)}
    zero_loss, zero_metrics = loss_fn(jnp.zeros((3, 6)), zero_batch)
    assert float(zero_loss) == pytest.approx(6 * math.log(2), rel=1e-6)
    assert float(zero_metrics["accuracy"]) == 0.0  # ties are not a win


def test_bad_configuration_is_refused():
    with pytest.raises(ConfigError, match="task.noise must be in"):
        PlantedCorpus(noise=1.0)
    with pytest.raises(ConfigError, match="task.window must be >= 1"):
        PlantedCorpus(window=0)


def test_a_short_fit_answers_the_planted_analogies_far_above_chance():
    result = fit(SkipGram(), TASK, OptimConfig(name="adam", lr=1e-2), RunConfig.quiet(300))
    assert result.summary["final"]["test"]["loss"] < 2.7  # from 6 log 2 = 4.16 at init
    table = word_vectors(result.state.params)
    chance = 1 / (TASK.vocab_size - 3)
    for kind, quadruples in TASK.analogies.items():
        assert analogy_accuracy(table, quadruples) >= 0.5, kind  # chance is 0.0145
    assert chance == pytest.approx(0.0145, abs=1e-4)


def test_bfloat16_compute_returns_float32_logits_close_to_float32():
    rng = np.random.default_rng(0)
    center, context = (rng.standard_normal((72, 32)).astype(np.float32) for _ in range(2))
    inputs = TASK.train_batch(DataPosition())["inputs"][:16]
    variables = skipgram_variables(center, context)
    exact = SkipGram(vocab_size=72).apply(variables, inputs)
    low = SkipGram(vocab_size=72, dtype="bfloat16").apply(variables, inputs)
    assert low.dtype == jnp.float32  # products accumulated in float32
    np.testing.assert_allclose(low, exact, atol=0.1 * float(np.abs(exact).max()) / 8)
