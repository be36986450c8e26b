"""Language tasks: the Markov source of known entropy rate, the LM loss, byte-level text files."""

import math

import jax
import numpy as np
import pytest
from helpers import TEXT_ALPHABETS, TEXT_BOUNDS

from arch.errors import ConfigError
from train.tasks import DataPosition, MarkovLanguage, TextFile
from train.tasks.language import LanguageModelLoss, MarkovChain, stationary_distribution

QUIET = dict(progress="off", tensorboard=False, compilation_cache=False)
SPLITS = ("train", "validation", "test")


def jit_loss(task):
    """The task's loss as one compiled program (eager dispatch compiles every primitive)."""
    return jax.jit(task.loss)


def binary_entropy(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_entropy_rate_of_a_two_state_chain_by_hand():
    # P(1 | 0) = 1/2, P(0 | 1) = 1/4: pi = (1/3, 2/3), H = 1/3 h(1/2) + 2/3 h(1/4)
    chain = MarkovChain(np.array([[0.5, 0.5], [0.25, 0.75]]), vocab_size=2, order=1)
    np.testing.assert_allclose(chain.stationary, [1 / 3, 2 / 3], atol=1e-12)
    assert binary_entropy(0.25) == pytest.approx(0.811278124, abs=1e-9)
    assert chain.entropy_rate_bits == pytest.approx(1 / 3 + 2 / 3 * 0.811278124, abs=1e-9)


def test_entropy_rate_of_a_periodic_chain_and_of_an_iid_source():
    cycle = MarkovChain(np.array([[0.0, 1.0], [1.0, 0.0]]), vocab_size=2, order=1)
    np.testing.assert_allclose(cycle.stationary, [0.5, 0.5], atol=1e-12)  # despite period 2
    assert cycle.entropy_rate_bits == 0.0
    q = np.array([0.5, 0.25, 0.25])  # the same next-symbol law after every context: H(q)
    iid = MarkovChain(np.tile(q, (9, 1)), vocab_size=3, order=2)
    assert iid.entropy_rate_bits == pytest.approx(1.5, abs=1e-12)


def test_stationary_distribution_of_an_order_two_chain_is_a_left_eigenvector():
    vocab, order = 3, 2
    transitions = np.random.default_rng(3).dirichlet(np.ones(vocab), size=vocab**order)
    # the context chain built entry by entry: (x1, x2) -> (x2, y) with probability P(y | x1, x2)
    matrix = np.zeros((vocab**order, vocab**order))
    for x1 in range(vocab):
        for x2 in range(vocab):
            for y in range(vocab):
                matrix[x1 * vocab + x2, x2 * vocab + y] = transitions[x1 * vocab + x2, y]
    eigenvalues, eigenvectors = np.linalg.eig(matrix.T)
    reference = np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1))])
    reference /= reference.sum()
    pi = stationary_distribution(transitions, vocab, order)
    np.testing.assert_allclose(pi, reference, atol=1e-10)
    np.testing.assert_allclose(pi @ matrix, pi, atol=1e-12)


def test_markov_chain_rejects_a_table_of_the_wrong_shape_or_not_distributions():
    with pytest.raises(ConfigError, match="shape"):
        MarkovChain(np.full((3, 2), 0.5), vocab_size=2, order=2)
    with pytest.raises(ConfigError, match="probability distribution"):
        MarkovChain(np.array([[0.5, 0.6], [0.5, 0.5]]), vocab_size=2, order=1)


def true_logits(task: MarkovLanguage, inputs: np.ndarray) -> np.ndarray:
    """log P(next | the previous `order` tokens) at every step with a full context [n, t, v]."""
    n, length = inputs.shape
    context = np.zeros((n, length), np.int64)
    for lag in range(task.order):  # context index: sum_i x_i v ** (k - i), oldest first
        shifted = np.roll(inputs, lag, axis=1)
        context += shifted * task.vocab_size**lag
    return np.log(np.maximum(task.chain.transitions[context], 1e-30)).astype(np.float32)


def test_markov_true_probabilities_score_the_entropy_rate():
    task = MarkovLanguage()
    inputs, targets, mask = task.data["test"]
    np.testing.assert_array_equal(mask[:, : task.order - 1], 0)
    np.testing.assert_array_equal(mask[:, task.order - 1 :], 1)
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])  # targets: the next token
    batch = {"inputs": inputs, "targets": targets, "mask": mask}
    metrics = jit_loss(task)(true_logits(task, inputs), batch)[1]
    assert 2.5 < task.entropy_rate_bits < math.log2(task.vocab_size)
    assert float(metrics["bits_per_char"]) == pytest.approx(task.entropy_rate_bits, abs=0.05)


def test_markov_sequences_start_and_stay_in_the_stationary_distribution():
    task = MarkovLanguage(vocab_size=3, order=2, length=20, num_eval=4000)
    inputs = task.data["validation"][0]
    pi = task.chain.stationary
    for step in (0, 18):  # the context (x_t, x_{t+1}) at the start and at the end
        context = inputs[:, step] * 3 + inputs[:, step + 1]
        frequencies = np.bincount(context, minlength=9) / len(context)
        assert 0.5 * np.abs(frequencies - pi).sum() < 0.04  # total variation distance


def test_markov_language_depends_on_source_seed_not_on_seed():
    base = MarkovLanguage(vocab_size=4, order=1)
    same = MarkovLanguage(vocab_size=4, order=1, seed=7)
    other = MarkovLanguage(vocab_size=4, order=1, source_seed=1)
    np.testing.assert_array_equal(base.chain.transitions, same.chain.transitions)
    assert not np.allclose(base.chain.transitions, other.chain.transitions)
    assert base.entropy_rate_bits != other.entropy_rate_bits
    assert not np.array_equal(base.data["test"][0], same.data["test"][0])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"vocab_size": 1}, "vocab_size"),
        ({"order": 0}, "order"),
        ({"order": 3, "length": 2}, "length"),
        ({"concentration": 0.0}, "concentration"),
        ({"vocab_size": 256, "order": 3}, "too many"),
    ],
)
def test_markov_language_rejects_bad_fields(fields, message):
    with pytest.raises(ConfigError, match=message):
        MarkovLanguage(**fields)


@pytest.mark.parametrize("task_class", [MarkovLanguage, TextFile])
def test_language_model_loss_by_hand(task_class):
    assert task_class.loss is LanguageModelLoss.loss  # one loss for every language task
    task = MarkovLanguage(vocab_size=2, order=1) if task_class is MarkovLanguage else TextFile()
    vocab = task.vocab_size
    # softmax([0, ln 3]) = (1/4, 3/4); targets 1 then 0; the third step is masked (and wrong)
    logits = np.zeros((1, 3, vocab), np.float32)
    logits[0, :2, 1] = math.log(3.0)
    logits[0, 2, 0] = 5.0
    if vocab > 2:
        logits[..., 2:] = -1e9
    batch = {
        "inputs": np.zeros((1, 3), np.int32),
        "targets": np.array([[1, 0, 1]], np.int32),
        "mask": np.array([[1.0, 1.0, 0.0]], np.float32),
    }
    loss, metrics = jit_loss(task)(logits, batch)
    # (-ln 3/4 - ln 1/4) / 2 = ln(16/3) / 2 nats = (4 - log2 3) / 2 bits; perplexity 4 / sqrt 3
    assert float(loss) == pytest.approx(0.5 * math.log(16 / 3), rel=1e-6)
    assert float(metrics["bits_per_char"]) == pytest.approx((4 - math.log2(3)) / 2, rel=1e-6)
    assert float(metrics["bits_per_char"]) == pytest.approx(float(loss) / math.log(2), rel=1e-6)
    assert float(metrics["perplexity"]) == pytest.approx(4 / math.sqrt(3), rel=1e-6)
    assert float(metrics["accuracy"]) == 0.5


def test_text_regions_are_contiguous_disjoint_and_windows_stay_in_theirs(text_file):
    path, content = text_file
    task = TextFile(path=str(path), length=16, num_eval=8, batch_size=64)
    assert task.region_bounds == TEXT_BOUNDS
    np.testing.assert_array_equal(task.text, np.frombuffer(content, np.uint8))

    def located(inputs, targets, split):
        """Each window's bytes (inputs then the last target) found in `split`'s region."""
        start, stop = TEXT_BOUNDS[split]
        np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
        offsets = []
        for x, y in zip(inputs, targets, strict=True):
            window = bytes(np.append(x, y[-1]).astype(np.uint8).tolist())
            assert set(window) <= set(TEXT_ALPHABETS[split])
            offsets.append(content.find(window, start, stop))
            assert offsets[-1] >= 0
        return np.array(offsets)

    for split in SPLITS:
        inputs, targets, mask = task.data[split]
        np.testing.assert_array_equal(mask, 1.0)
        offsets = located(inputs, targets, split)
        assert np.all(np.diff(offsets) >= 16)  # non-overlapping, in order
    assert len(task.data["train"][0]) == 8  # capped at num_eval
    assert len(task.data["validation"][0]) == 8  # (200 - 1) // 16 = 12 windows fit
    batch = task.train_batch(DataPosition(2, 5))
    offsets = located(batch["inputs"], batch["targets"], "train")
    assert len(set(offsets.tolist())) > 50  # random offsets, not the evaluation windows
    assert any(offset % 16 for offset in offsets)


def test_text_round_trips_the_bytes(tmp_path):
    text = "Grüße, 世界! " * 40
    path = tmp_path / "utf8.txt"
    path.write_text(text, encoding="utf-8")
    task = TextFile(path=str(path), length=8, num_eval=1000)
    raw = text.encode("utf-8")
    start, stop = task.region_bounds["train"]
    inputs, targets, _ = task.data["train"]
    joined = np.concatenate([inputs.ravel(), targets[-1:, -1]])  # consecutive windows share ends
    assert bytes(joined.astype(np.uint8).tolist()) == raw[start : start + len(joined)]
    assert inputs.max() >= 128  # multi-byte characters arrive as their UTF-8 bytes


def test_text_asks_for_a_path(tmp_path):
    with pytest.raises(ConfigError, match="--task.path"):
        TextFile().train_batch(DataPosition())
    with pytest.raises(ConfigError, match="--task.path"):
        TextFile(path=str(tmp_path / "missing.txt")).data  # noqa: B018 - loading is lazy


def test_text_rejects_a_file_too_small_for_a_window(tmp_path):
    path = tmp_path / "small.txt"
    path.write_bytes(b"x" * 200)  # validation and test regions of 10 bytes
    with pytest.raises(ConfigError, match="validation region holds 10 bytes"):
        TextFile(path=str(path), length=16).data  # noqa: B018 - loading is lazy
    with pytest.raises(ConfigError, match="fraction"):
        TextFile(validation_fraction=0.6, test_fraction=0.4)


def test_the_source_scores_its_test_tokens_near_the_entropy_rate():
    task = MarkovLanguage()  # 256 x 127 scored tokens: noise ~0.01 bits
    assert task.source_bits_per_char("test") == pytest.approx(task.entropy_rate_bits, abs=0.05)


def test_surprisal_under_the_chain_is_minus_log2_of_each_transition():
    chain = MarkovChain.random(vocab_size=3, order=2, concentration=1.0, seed=0)
    tokens = np.array([[0, 1, 2, 2, 0], [2, 2, 1, 0, 1]])
    expected = [
        [-np.log2(chain.transitions[row[s - 2] * 3 + row[s - 1], row[s]]) for s in range(2, 5)]
        for row in tokens
    ]
    np.testing.assert_allclose(chain.surprisal_bits(tokens, 2), expected)
    np.testing.assert_allclose(chain.surprisal_bits(tokens, 3), np.array(expected)[:, 1:])
    with pytest.raises(ValueError, match="first must be >= order 2"):
        chain.surprisal_bits(tokens, 1)
