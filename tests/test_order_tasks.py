"""Order tasks: reverse a sequence, tell a sorted one from a hard negative with the same tokens."""

import collections
import dataclasses
import math

import jax
import numpy as np
import pytest

from arch import RNNClassifier, RNNTagger
from arch.errors import ConfigError
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import TASKS, DataPosition, Reverse, Sorted
from train.tasks.order import AnchoredReverse

SPLITS = ("train", "validation", "test")
POSITIONS = [DataPosition(0, 0), DataPosition(0, 1), DataPosition(3, 2)]


def is_sorted(inputs: np.ndarray) -> np.ndarray:
    """[n, t] -> [n]: whether each row is non-decreasing."""
    return np.all(np.diff(inputs, axis=1) >= 0, axis=1)


@pytest.mark.parametrize(("name", "cls"), [("reverse", Reverse), ("sorted", Sorted)])
def test_registered_under_its_name_and_setting_the_vocabulary(name, cls):
    assert TASKS[name] is cls
    task = cls(vocab_size=7)
    outputs = {"reverse": 7, "sorted": 1}[name]
    assert task.model_fields == {"num_outputs": outputs, "vocab_size": 7}


@pytest.mark.parametrize(
    ("task", "targets_shape", "targets_dtype", "output_shape"),
    [
        (Reverse(length=6, vocab_size=5), (6,), np.int32, (6, 5)),
        (Sorted(length=6, vocab_size=5), (), np.float32, (1,)),
    ],
    ids=["reverse", "sorted"],
)
def test_batches_are_a_pure_function_of_the_position(
    task, targets_shape, targets_dtype, output_shape
):
    other = dataclasses.replace(task)  # a fresh instance: nothing loaded is shared
    b = task.batch_size
    seen = []
    for position in POSITIONS:
        batch, again = task.train_batch(position), other.train_batch(position)
        assert batch["inputs"].shape == (b, 6) and batch["inputs"].dtype == np.int32
        assert batch["targets"].shape == (b, *targets_shape)
        assert batch["targets"].dtype == targets_dtype
        assert batch["mask"].shape == (b, *targets_shape) and batch["mask"].dtype == np.float32
        np.testing.assert_array_equal(batch["mask"], 1.0)
        assert batch["inputs"].min() >= 0 and batch["inputs"].max() < 5
        for key in batch:
            np.testing.assert_array_equal(batch[key], again[key])
        assert not any(np.array_equal(batch["inputs"], s) for s in seen)
        seen.append(batch["inputs"])
    assert task.output_shape(batch) == (b, *output_shape)
    inputs = [task.data[split][0] for split in SPLITS]
    assert not np.array_equal(inputs[0], inputs[1]) and not np.array_equal(inputs[1], inputs[2])
    for split in SPLITS:
        for x, y in zip(task.data[split], other.data[split], strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(dataclasses.replace(task, seed=1).data["test"][0], inputs[2])


def test_reverse_targets_are_the_inputs_reversed():
    task = Reverse(length=7, vocab_size=4, num_eval=300)
    for split in SPLITS:
        inputs, targets, mask = task.data[split]
        for x, y in zip(inputs, targets, strict=True):
            assert y.tolist() == list(reversed(x.tolist()))
        np.testing.assert_array_equal(mask, 1.0)
    batch = task.train_batch(DataPosition(2, 9))
    np.testing.assert_array_equal(batch["targets"], batch["inputs"][:, ::-1])
    # the tokens are uniform over the vocabulary at every position
    inputs = Reverse(length=7, vocab_size=4, num_eval=4000).data["validation"][0]
    frequencies = np.stack([np.bincount(column, minlength=4) for column in inputs.T]) / 4000
    np.testing.assert_allclose(frequencies, 0.25, atol=0.03)


def test_an_anchored_reverse_starts_with_a_fixed_token_whose_target_is_masked():
    plain = Reverse(length=6, vocab_size=5, num_eval=50)
    task = AnchoredReverse(length=6, vocab_size=5, num_eval=50)
    assert task.anchor and task.sequence_length == 7
    assert task.model_fields == {"num_outputs": 5, "vocab_size": 6}  # the anchor is input only
    for split in SPLITS:
        inputs, targets, mask = task.data[split]
        assert inputs.shape == targets.shape == mask.shape == (50, 7)
        np.testing.assert_array_equal(inputs[:, 0], 5)  # id vocab_size
        np.testing.assert_array_equal(mask[:, 0], 0.0)
        np.testing.assert_array_equal(mask[:, 1:], 1.0)
        # the same draws as without the anchor, shifted right by one
        for x, y in zip(task.data[split], plain.data[split], strict=True):
            np.testing.assert_array_equal(x[:, 1:], y)
    batch = task.train_batch(DataPosition(0, 3))
    np.testing.assert_array_equal(batch["targets"][:, 1:], batch["inputs"][:, :0:-1])


def test_reverse_loss_guessing_perfect_and_one_wrong_token():
    task = Reverse(length=5, vocab_size=6, num_eval=4)
    inputs, targets, mask = task.data["test"]
    batch = {"inputs": inputs, "targets": targets, "mask": mask}
    loss = jax.jit(task.loss)
    assert float(loss(np.zeros((4, 5, 6), np.float32), batch)[0]) == pytest.approx(math.log(6))
    perfect = 10.0 * np.eye(6, dtype=np.float32)[targets]  # [b, t, v]
    wrong = perfect.copy()
    wrong[2, 1] = np.roll(wrong[2, 1], 1)
    metrics = loss(wrong, batch)[1]
    assert float(metrics["accuracy"]) == pytest.approx(1 - 1 / 20)
    assert float(metrics["sequence_accuracy"]) == pytest.approx(3 / 4)
    metrics = loss(perfect, batch)[1]
    assert float(metrics["accuracy"]) == 1.0 and float(metrics["sequence_accuracy"]) == 1.0


def test_sorted_labels_are_right_and_exactly_balanced():
    task = Sorted(batch_size=31)
    for position in POSITIONS:
        batch = task.train_batch(position)
        np.testing.assert_array_equal(batch["targets"], is_sorted(batch["inputs"]))
        assert batch["targets"].sum() == 15  # n // 2 sorted; odd n: one more negative
    for split in SPLITS:
        inputs, labels = task.data[split]
        np.testing.assert_array_equal(labels, is_sorted(inputs))
        assert labels.sum() == task.num_eval // 2
    # the classes are shuffled, not in blocks
    labels = task.data["test"][1]
    assert 0.3 < labels[: task.num_eval // 4].mean() < 0.7


def test_sorted_negatives_are_their_sorted_version_with_two_tokens_swapped():
    inputs, labels = Sorted(num_eval=2000).data["validation"]
    negatives = inputs[labels == 0]
    ordered = np.sort(negatives, axis=1)  # the same multiset, sorted: a possible positive
    differ = negatives != ordered
    np.testing.assert_array_equal(differ.sum(axis=1), 2)  # exactly one swap of unequal tokens
    rows = np.arange(len(negatives))
    first, second = np.nonzero(differ)[1].reshape(-1, 2).T  # [n, 2]: the two swapped positions
    swapped_back = negatives.copy()
    swapped_back[rows, first] = negatives[rows, second]
    swapped_back[rows, second] = negatives[rows, first]
    np.testing.assert_array_equal(swapped_back, ordered)
    # both adjacent and distant swaps occur
    gaps = collections.Counter((second - first).tolist())
    assert gaps[1] > 0 and max(gaps) >= 5


def multiset_frequencies(inputs: np.ndarray) -> collections.Counter:
    """How often each multiset of tokens (a row sorted) occurs, as fractions of the rows."""
    counts = collections.Counter(map(tuple, np.sort(inputs, axis=1).tolist()))
    return collections.Counter({key: count / len(inputs) for key, count in counts.items()})


def test_sorted_multisets_are_distributed_alike_in_both_classes():
    # v = 3, t = 4: 15 multisets, of which the 3 constant ones cannot be unsorted and never
    # occur; each other has its multinomial probability over 1 - 3 * 3 ** -4
    task = Sorted(vocab_size=3, length=4, num_eval=20_000)
    inputs, labels = task.data["test"]
    positives = multiset_frequencies(inputs[labels == 1])
    negatives = multiset_frequencies(inputs[labels == 0])
    assert len(positives) == len(negatives) == 12
    distance = 0.5 * sum(abs(positives[key] - negatives[key]) for key in positives | negatives)
    assert distance < 0.03  # total variation between the classes' multiset distributions
    for key, frequency in positives.items():
        counts = np.bincount(key, minlength=3)
        ways = math.factorial(4) / math.prod(math.factorial(c) for c in counts)
        assert frequency == pytest.approx(ways / 81 / (1 - 3 / 81), abs=0.015)


def lookup_accuracy(keys: list, labels: np.ndarray, test_keys: list, test_labels: np.ndarray):
    """Accuracy on the test set of the majority training label of each key (the best any
    function of the key can do on keys seen in training); an unseen key guesses 0."""
    votes = collections.defaultdict(lambda: np.zeros(2))
    for key, label in zip(keys, labels, strict=True):
        votes[key][int(label)] += 1
    guesses = np.array([np.argmax(votes[key]) if key in votes else 0 for key in test_keys])
    return np.mean(guesses == test_labels)


def test_sorted_a_classifier_of_the_bag_of_tokens_is_at_chance_one_of_the_order_is_perfect():
    task = Sorted(vocab_size=3, length=4, num_eval=20_000)
    (train_x, train_y), (test_x, test_y) = task.data["train"], task.data["test"]
    bag = lambda inputs: list(map(tuple, np.sort(inputs, axis=1).tolist()))  # the multiset
    sequence = lambda inputs: list(map(tuple, inputs.tolist()))
    assert lookup_accuracy(bag(train_x), train_y, bag(test_x), test_y) == pytest.approx(
        0.5, abs=0.02
    )
    assert lookup_accuracy(sequence(train_x), train_y, sequence(test_x), test_y) == 1.0


@pytest.mark.parametrize("cls", [Reverse, Sorted])
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"vocab_size": 1}, "vocab_size must be >= 2"),
        ({"length": 1}, "length must be >= 2"),
        ({"num_eval": 0}, "num_eval must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_order_tasks_reject_bad_fields(cls, fields, message):
    with pytest.raises(ConfigError, match=message):
        cls(**fields)


def test_a_bidirectional_rnn_tagger_learns_to_reverse_and_an_rnn_to_tell_sorted():
    run = RunConfig.quiet(150, compilation_cache=False, eval_batch_size=256)
    optim = OptimConfig(lr=0.02)
    small = dict(hidden_size=32, embed_size=16, cell="elman")
    reverse = Reverse(length=5, vocab_size=4, batch_size=64, num_eval=256)
    tagger = RNNTagger(bidirectional=True, **small)
    test = fit(tagger, reverse, optim, run=run).summary["final"]["test"]
    assert test["accuracy"] > 0.9 and test["sequence_accuracy"] > 0.6  # guessing: 1/4, 1/4 ** 4
    ordered = Sorted(length=5, vocab_size=4, batch_size=64, num_eval=256)
    test = fit(RNNClassifier(**small), ordered, optim, run=run).summary["final"]["test"]
    assert test["accuracy"] > 0.9  # chance: 1/2
