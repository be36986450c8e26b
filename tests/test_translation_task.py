"""The translation task: batches (shapes, masks, the rules by hand), fixed-length sets, the
evaluation batches through take_rows, the loss and the decoded metrics (BLEU by hand)."""

import jax.numpy as jnp
import numpy as np
import pytest

from arch.errors import ConfigError
from train.tasks import TASKS, DataPosition, Translation
from train.tasks.translation import BOS, EOS, FIRST_WORD, PAD, corpus_bleu, reorder

TASK = Translation(batch_size=16, num_words=6, min_length=2, max_length=7, num_eval=40)


def words(task: Translation, tokens: np.ndarray) -> list[int]:
    return [int(t) for t in tokens if t >= FIRST_WORD]


def test_batches_follow_the_rules():
    batch = TASK.train_batch(DataPosition(0, 3))
    inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
    assert set(inputs) == {"source", "target", "source_mask"}
    assert inputs["source"].shape == inputs["source_mask"].shape == (16, 7)
    assert inputs["target"].shape == targets.shape == mask.shape == (16, 8)
    assert inputs["source"].dtype == targets.dtype == np.int32
    assert TASK.vocab_size == 3 + 2 * 6 and TASK.model_fields == {
        "num_outputs": 15,
        "vocab_size": 15,
    }
    lexicon = {w: TASK.lexicon[w - FIRST_WORD] for w in range(FIRST_WORD, FIRST_WORD + 6)}
    assert sorted(lexicon.values()) == list(range(FIRST_WORD + 6, FIRST_WORD + 12))  # bijection
    lengths = inputs["source_mask"].sum(axis=1)
    assert lengths.min() >= 2 and lengths.max() <= 7 and len(set(lengths)) > 2
    for row, length in enumerate(lengths):
        source = inputs["source"][row]
        assert np.all(inputs["source_mask"][row] == (np.arange(7) < length))
        assert np.all(source[length:] == PAD) and np.all(source[:length] >= FIRST_WORD)
        expected = [lexicon[w] for w in source[:length][::-1]]  # mapped, reversed
        assert list(targets[row, :length]) == expected
        assert targets[row, length] == EOS and np.all(targets[row, length + 1 :] == PAD)
        assert list(mask[row]) == [1.0] * (length + 1) + [0.0] * (7 - length)  # words + EOS
        assert inputs["target"][row, 0] == BOS  # BOS + targets shifted right, no EOS
        assert list(inputs["target"][row, 1 : length + 1]) == expected
        assert np.all(inputs["target"][row, length + 1 :] == PAD)
    again = TASK.train_batch(DataPosition(0, 3))
    np.testing.assert_array_equal(again["inputs"]["source"], inputs["source"])


def test_orders_by_hand():
    words_ = np.arange(5)[None].repeat(2, axis=0)  # two rows, lengths 5 and 4
    lengths = np.array([5, 4])
    np.testing.assert_array_equal(
        reorder(words_, lengths, "reverse"), [[4, 3, 2, 1, 0], [3, 2, 1, 0, 0]]
    )
    np.testing.assert_array_equal(
        reorder(words_, lengths, "swap_pairs"), [[1, 0, 3, 2, 4], [1, 0, 3, 2, 0]]
    )
    np.testing.assert_array_equal(
        reorder(words_, lengths, "copy"), [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0]]
    )


def test_length_splits_and_evaluation_batches():
    inputs, targets, mask = TASK.length_split(4, 10)
    assert inputs["source"].shape == (10, 7) and targets.shape == (10, 8)
    assert np.all(inputs["source_mask"].sum(axis=1) == 4) and np.all(mask.sum(axis=1) == 5)
    np.testing.assert_array_equal(TASK.length_split(4, 10)[1], targets)  # fixed
    with pytest.raises(ConfigError, match="length"):
        TASK.length_split(8)
    batches = list(TASK.eval_batches("test", 16))  # 40 examples: 16, 16, 8 + 8 padding
    assert len(batches) == 3 and batches[-1]["inputs"]["source"].shape == (16, 7)
    assert batches[-1]["mask"][8:].sum() == 0 and batches[-1]["mask"][:8].sum() > 0
    validation = TASK.data["validation"][0]["source"]
    assert not np.array_equal(validation, TASK.data["test"][0]["source"])


def test_teacher_forced_loss_of_perfect_logits():
    batch = TASK.train_batch(DataPosition())
    logits = 50.0 * np.eye(TASK.vocab_size)[batch["targets"]]  # [b, t, v]
    wrong = np.where(batch["mask"][..., None] > 0, logits, 0.0)
    wrong[0, 0] = 50.0 * np.eye(TASK.vocab_size)[PAD]  # one mistake in the first sequence
    loss, metrics = TASK.loss(jnp.asarray(wrong), batch)
    tokens = batch["mask"].sum()
    assert float(metrics["accuracy"]) == pytest.approx((tokens - 1) / tokens)
    assert float(metrics["sequence_accuracy"]) == pytest.approx(15 / 16)
    assert float(TASK.loss(jnp.asarray(logits), batch)[0]) < 1e-6


def test_bleu_is_100_for_identical_outputs_and_hand_checked_values():
    rows = np.array([[3, 4, 5, 6, 7, EOS, PAD], [8, 9, 10, 11, EOS, PAD, PAD]])
    assert corpus_bleu(rows, rows) == pytest.approx(100.0)
    reference = np.array([[3, 4, 5, 6, 7, EOS]])
    last_wrong = np.array([[3, 4, 5, 6, 8, EOS]])  # n-gram precisions 4/5, 3/4, 2/3, 1/2
    expected = 100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert corpus_bleu(last_wrong, reference) == pytest.approx(expected, abs=1e-9)
    short = np.array([[3, 4, 5, 6, EOS, PAD]])  # precisions 1; brevity penalty e^(1 - 5/4)
    assert corpus_bleu(short, reference) == pytest.approx(100 * np.exp(1 - 5 / 4), abs=1e-9)


def test_decoded_metrics_by_hand():
    targets = np.array([[9, 10, EOS, PAD], [11, EOS, PAD, PAD]])
    mask = (targets != PAD).astype(np.float32)
    predictions = np.array([[9, 10, EOS, PAD], [11, 11, EOS, PAD]])  # the second runs on
    metrics = TASK.decoded_metrics(predictions, targets, mask)
    assert metrics["token_accuracy"] == pytest.approx(4 / 5)
    assert metrics["exact_match"] == 0.5
    assert metrics["bleu"] == corpus_bleu(predictions, targets) == 0.0  # no 4-gram at all


def test_registered_and_errors():
    assert TASKS["translation"] is Translation
    with pytest.raises(ConfigError, match="max_length"):
        Translation(min_length=5, max_length=4)
    with pytest.raises(ConfigError, match="unknown order"):
        Translation(order="shuffle")
