"""Tasks: reproducible batches from a position, evaluation batches, the data sets, IDX and MNIST."""

import collections
import dataclasses
import functools
import gzip
import math
import struct

import numpy as np
import pytest

from arch import MLP
from arch.errors import ConfigError
from train.loop import RunConfig, fit
from train.tasks import TASKS, Blobs, Circles, DataPosition, Digits, Mnist, Xor
from train.tasks.base import TASK_MEMBERS, check_task, missing_members
from train.tasks.idx import read_idx, write_idx
from train.tasks.images import balanced_subset

# Xor with noise so that every training example is a distinct point
ARRAY_TASKS = [Xor(noise=0.1), Blobs(), Circles(), Digits()]
TASK_IDS = ["xor", "blobs", "circles", "digits"]


@functools.cache
def digit_counts() -> np.ndarray:
    """How many images of each digit 0-9 scikit-learn's digits holds."""
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)
    assert counts.sum() == 1797
    return counts


def fresh(task):
    """A new instance with the same fields: nothing is shared with `task`, not even loaded data."""
    return dataclasses.replace(task)


def row_counts(inputs: np.ndarray, targets: np.ndarray) -> collections.Counter:
    """A multiset of (input, target) examples, keyed by their bytes."""
    return collections.Counter(
        x.tobytes() + y.tobytes() for x, y in zip(inputs, targets, strict=True)
    )


@pytest.mark.parametrize("task", ARRAY_TASKS, ids=TASK_IDS)
def test_train_batch_is_a_pure_function_of_the_position(task):
    other = fresh(task)
    for position in [
        DataPosition(0, 0),
        DataPosition(0, 3),
        DataPosition(2, 1),
        DataPosition(5, 0),
    ]:
        batch, again = task.train_batch(position), other.train_batch(position)
        assert set(batch) == {"inputs", "targets", "mask"}
        for key in batch:
            np.testing.assert_array_equal(batch[key], again[key])
            assert batch[key].dtype == again[key].dtype
        assert batch["inputs"].shape[0] == task.batch_size
        np.testing.assert_array_equal(batch["mask"], np.ones(task.batch_size, np.float32))


@pytest.mark.parametrize("task", ARRAY_TASKS, ids=TASK_IDS)
def test_each_epoch_has_its_own_order(task):
    orders = [task.epoch_order(epoch) for epoch in range(3)]
    n = task.num_examples("train")
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    first, second = task.train_batch(DataPosition(0, 0)), task.train_batch(DataPosition(1, 0))
    assert not np.array_equal(first["inputs"], second["inputs"])


@pytest.mark.parametrize("task", ARRAY_TASKS, ids=TASK_IDS)
def test_an_epoch_uses_each_training_example_at_most_once(task):
    inputs, targets = task.data["train"]
    batches = [task.train_batch(DataPosition(1, i)) for i in range(task.steps_per_epoch)]
    seen = row_counts(
        np.concatenate([b["inputs"] for b in batches]),
        np.concatenate([b["targets"] for b in batches]),
    )
    available = row_counts(inputs, targets)
    assert sum(seen.values()) == task.steps_per_epoch * task.batch_size
    assert task.steps_per_epoch == len(targets) // task.batch_size
    assert max(available.values()) == 1  # distinct examples, so a repeat would show
    assert max(seen.values()) == 1 and set(seen) <= set(available)


@pytest.mark.parametrize("task", ARRAY_TASKS, ids=TASK_IDS)
def test_position_after_is_repeated_next_position(task):
    position = DataPosition()
    for steps in range(3 * task.steps_per_epoch + 2):
        assert task.position_after(steps) == position
        position = task.next_position(position)
    assert task.position_after(task.steps_per_epoch) == DataPosition(1, 0)
    assert task.position_after(task.steps_per_epoch - 1) == DataPosition(
        0, task.steps_per_epoch - 1
    )


@pytest.mark.parametrize("task", ARRAY_TASKS, ids=TASK_IDS)
@pytest.mark.parametrize("split", ["validation", "test"])
def test_eval_batches_cover_the_split_once_in_one_shape(task, split):
    batch_size = 100
    inputs, targets = task.data[split]
    batches = list(task.eval_batches(split, batch_size))
    assert len(batches) == math.ceil(len(targets) / batch_size)
    for batch in batches:
        assert batch["inputs"].shape == (batch_size, *inputs.shape[1:])
        assert batch["targets"].shape == (batch_size,)
        assert batch["mask"].shape == (batch_size,)
        assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
    mask = np.concatenate([b["mask"] for b in batches]) > 0
    assert mask.sum() == len(targets)
    assert mask[: len(targets)].all() and not mask[len(targets) :].any()
    np.testing.assert_array_equal(np.concatenate([b["inputs"] for b in batches])[mask], inputs)
    np.testing.assert_array_equal(np.concatenate([b["targets"] for b in batches])[mask], targets)


def test_digits_split_sizes_and_standardisation():
    task = Digits()
    assert [task.num_examples(s) for s in ("train", "validation", "test")] == [1257, 270, 270]
    assert task.num_outputs == 10
    x_train, y_train = task.data["train"]
    assert x_train.shape == (1257, 8, 8, 1) and x_train.dtype == np.float32
    assert y_train.dtype == np.int32
    assert abs(float(x_train.mean())) < 1e-5
    assert float(x_train.std()) == pytest.approx(1.0, abs=1e-5)
    all_labels = np.concatenate([task.data[s][1] for s in ("train", "validation", "test")])
    np.testing.assert_array_equal(np.bincount(all_labels), digit_counts())


def test_digits_split_does_not_depend_on_the_task_seed():
    a, b = Digits(seed=0), Digits(seed=5)
    for split in ("train", "validation", "test"):
        for x, y in zip(a.data[split], b.data[split], strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.epoch_order(0), b.epoch_order(0))  # the seed orders the batches


@pytest.mark.parametrize("classes", [(5, 6, 7, 8, 9), (9, 5)])
def test_digits_classes_relabels_in_the_order_given(classes):
    task = Digits(classes=classes)
    assert task.num_outputs == len(classes)
    labels = np.concatenate([task.data[s][1] for s in ("train", "validation", "test")])
    # these digits' counts differ, so the counts show which digit became which label
    assert len(set(digit_counts()[list(classes)].tolist())) == len(classes)
    np.testing.assert_array_equal(
        np.bincount(labels, minlength=len(classes)), digit_counts()[list(classes)]
    )
    assert labels.min() == 0 and labels.max() == len(classes) - 1


def test_digits_max_train_examples_keeps_only_the_training_split_small():
    task = Digits(max_train_examples=50)
    assert [task.num_examples(s) for s in ("train", "validation", "test")] == [50, 270, 270]
    np.testing.assert_array_equal(task.data["test"][1], Digits().data["test"][1])


@pytest.mark.parametrize("max_train_examples", [-5, 0])
def test_digits_rejects_a_non_positive_max_train_examples(max_train_examples):
    with pytest.raises(ConfigError, match="max_train_examples"):
        Digits(max_train_examples=max_train_examples).data  # noqa: B018 - loading is lazy


@pytest.mark.parametrize("classes", [(3, 3), (11,), (-1, 2), ()])
def test_digits_rejects_invalid_classes(classes):
    with pytest.raises(ConfigError, match="task.classes must be distinct digits 0-9"):
        Digits(classes=classes)


def test_xor_without_noise_is_the_truth_table():
    task = Xor(noise=0.0)
    inputs, targets = task.data["test"]
    assert set(np.unique(inputs)) == {-1.0, 1.0}
    corners = collections.Counter(map(tuple, inputs.tolist()))
    assert corners == {c: task.num_eval // 4 for c in [(-1, -1), (-1, 1), (1, -1), (1, 1)]}
    bits = inputs > 0
    np.testing.assert_array_equal(targets, (bits[:, 0] ^ bits[:, 1]).astype(np.float32))


def test_blobs_are_separated_by_the_line_x1_plus_x2_zero():
    task = Blobs()
    for split in ("train", "validation", "test"):
        inputs, targets = task.data[split]
        np.testing.assert_array_equal(inputs.sum(axis=1) > 0, targets == 1)
        assert targets.mean() == 0.5


def test_circles_inner_class_has_the_smaller_radius():
    inputs, targets = Circles().data["train"]
    radius = np.linalg.norm(inputs, axis=1)
    inner, outer = radius[targets == 1].mean(), radius[targets == 0].mean()
    assert inner == pytest.approx(0.5, abs=0.05) and outer == pytest.approx(1.0, abs=0.05)
    assert inner < outer


IDX_ARRAYS = {
    "uint8_images": np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype(np.uint8),
    "int8": np.array([-128, -1, 0, 127], np.int8),
    "int32": np.array([[-(2**31), 0], [1, 2**31 - 1]], np.int32),
    "float32": np.array([[1.5, -0.25, np.inf]], np.float32),
    "float64": np.array([np.pi, -1e300, 5e-324]),
}


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("name", list(IDX_ARRAYS))
def test_idx_round_trip(tmp_path, name, suffix):
    array = IDX_ARRAYS[name]
    path = tmp_path / f"{name}.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")  # the gzip magic number


def test_idx_reads_a_hand_written_file(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([7, 8, 9]))
    np.testing.assert_array_equal(read_idx(path), np.array([7, 8, 9], np.uint8))
    big_endian = b"\x00\x00\x0c\x02" + struct.pack(">II", 1, 2) + struct.pack(">ii", -2, 258)
    path.write_bytes(big_endian)
    np.testing.assert_array_equal(read_idx(path), np.array([[-2, 258]], np.int32))


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"PK\x03\x04"])
def test_idx_rejects_a_bad_magic_number(tmp_path, magic):
    path = tmp_path / "bad.idx"
    path.write_bytes(magic + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ConfigError, match="not an IDX file"):
        read_idx(path)


def _truncate_body(path):
    path.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + bytes([1, 2]))


def _truncate_header(path):
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 5))  # 3 sizes announced, 1 given


def _truncate_gzip(path):
    data = gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 100) + bytes(range(100)))
    path.with_suffix(".gz").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "truncate",
    [
        _truncate_body,
        _truncate_header,
        _truncate_gzip,
    ],
)
def test_idx_rejects_a_truncated_file(tmp_path, truncate):
    path = tmp_path / "cut.idx"
    truncate(path)
    if truncate is _truncate_gzip:
        path = path.with_suffix(".gz")
    with pytest.raises(ConfigError):
        read_idx(path)


MNIST_TRAIN, MNIST_TEST = 60, 20


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """Four small IDX files in the MNIST layout: the training pair compressed, the test pair not."""
    directory = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (MNIST_TRAIN, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, MNIST_TRAIN).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (MNIST_TEST, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, MNIST_TEST).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(directory / name, array)
    return directory, arrays


def test_mnist_splits_from_idx_files(mnist_dir):
    directory, arrays = mnist_dir
    task = Mnist(data_dir=str(directory), validation_size=10, batch_size=10)
    assert [task.num_examples(s) for s in ("train", "validation", "test")] == [50, 10, 20]
    train_labels = arrays["train-labels-idx1-ubyte.gz"]
    np.testing.assert_array_equal(task.data["train"][1], train_labels[:50])
    np.testing.assert_array_equal(task.data["validation"][1], train_labels[50:])
    np.testing.assert_array_equal(task.data["test"][1], arrays["t10k-labels-idx1-ubyte"])
    for split, count in [("train", 50), ("validation", 10), ("test", 20)]:
        inputs, labels = task.data[split]
        assert inputs.shape == (count, 28, 28, 1) and inputs.dtype == np.float32
        assert labels.dtype == np.int32
    # every split is scaled with the training split's statistics
    pixels = arrays["train-images-idx3-ubyte.gz"].astype(np.float32) / 255.0
    mean, std = pixels[:50].mean(), pixels[:50].std()
    np.testing.assert_allclose(
        task.data["validation"][0][..., 0], (pixels[50:] - mean) / std, rtol=1e-5, atol=1e-5
    )


def test_mnist_missing_files_name_what_to_provide(tmp_path):
    task = Mnist(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as error:
        task.data  # noqa: B018 - loading is lazy
    message = str(error.value)
    for name in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "--task.data-dir",
    ]:
        assert name in message


@pytest.mark.parametrize("validation_size", [MNIST_TRAIN, MNIST_TRAIN + 1, 0])
def test_mnist_rejects_a_validation_split_that_does_not_fit(mnist_dir, validation_size):
    task = Mnist(data_dir=str(mnist_dir[0]), validation_size=validation_size)
    with pytest.raises(ConfigError, match="validation_size"):
        task.data  # noqa: B018 - loading is lazy


def test_mnist_trains_through_fit(mnist_dir):
    task = Mnist(data_dir=str(mnist_dir[0]), validation_size=10, batch_size=10)
    run = RunConfig(steps=5, progress="off", tensorboard=False, compilation_cache=False)
    summary = fit(MLP(hidden_sizes=(16,)), task, run=run).summary
    assert summary["task"] == "Mnist" and summary["steps"] == 5
    assert summary["parameters"] == 28 * 28 * 16 + 16 + 16 * 10 + 10
    test = summary["final"]["test"]
    assert math.isfinite(test["loss"]) and test["loss"] > 0
    assert 0.0 <= test["accuracy"] <= 1.0
    # 20 test examples: the accuracy is a whole number of them (padding rows do not count)
    assert test["accuracy"] * MNIST_TEST == pytest.approx(round(test["accuracy"] * MNIST_TEST))


@pytest.mark.parametrize("n", [10, 23, 50])
def test_digits_max_train_examples_is_balanced_across_classes(n):
    labels = Digits(classes=(5, 6, 7, 8, 9), max_train_examples=n).data["train"][1]
    counts = np.bincount(labels, minlength=5)
    assert counts.sum() == n
    assert set(counts) <= {n // 5, n // 5 + 1}  # every digit 5-9 is present, none favoured


def test_balanced_subset_keeps_each_class_in_order_and_runs_out_gracefully():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    np.testing.assert_array_equal(balanced_subset(labels, 4), [0, 1, 4, 5])
    # class 1 has one example only: the others fill the remaining places
    np.testing.assert_array_equal(balanced_subset(labels, 6), [0, 1, 2, 4, 5, 6])


def test_every_registered_task_has_what_fit_relies_on():
    # looked up on the classes: no data is loaded, no optional dataset is needed
    assert {name: missing_members(cls) for name, cls in TASKS.items()} == {
        name: [] for name in TASKS
    }
    assert set(TASK_MEMBERS) >= {"loss", "train_batch", "eval_batches", "position_after"}


def test_an_object_that_is_not_a_task_is_refused_by_name():
    @dataclasses.dataclass(frozen=True)
    class LossOnly:
        batch_size: int = 8
        seed: int = 0

        def loss(self, outputs, batch):
            return outputs.mean(), {}

    with pytest.raises(ConfigError, match="LossOnly is not a task: it lacks model_fields"):
        check_task(LossOnly())
    with pytest.raises(ConfigError, match="must be an instance, got the class Xor"):
        check_task(Xor)
    check_task(Xor())  # a registered task passes


def test_fit_refuses_a_non_task_before_it_touches_anything(tmp_path):
    with pytest.raises(ConfigError, match="must be an instance, got the class Xor"):
        fit(MLP(), Xor, run=RunConfig(steps=1, run_dir=str(tmp_path / "run"), progress="off"))
    assert not (tmp_path / "run").exists()


def test_fashion_mnist_reads_the_mnist_layout_and_says_how_to_install_it(mnist_dir, tmp_path):
    task = TASKS["fashion_mnist"](data_dir=str(mnist_dir[0]), validation_size=10)
    assert [task.num_examples(s) for s in ("train", "validation", "test")] == [50, 10, 20]
    assert TASKS["fashion_mnist"]().data_dir == "/usr/share/datasets/fashion-mnist"
    assert len(TASKS["fashion_mnist"].CLASSES) == task.num_outputs == 10
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        TASKS["fashion_mnist"](data_dir=str(tmp_path / "nowhere")).data  # noqa: B018
