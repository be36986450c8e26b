"""Sequence tasks: adding, copy, digits as sequences, series forecasting, Markov language, text."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from arch import MLP
from arch.errors import ConfigError
from train.loop import RunConfig, fit
from train.tasks import (
    TASKS,
    Adding,
    Copy,
    DataPosition,
    Digits,
    DigitsPixels,
    DigitsRows,
    MarkovLanguage,
    RandomWalk,
    Sines,
    TextFile,
)

QUIET = dict(progress="off", tensorboard=False, compilation_cache=False)
SPLITS = ("train", "validation", "test")

# name -> (task from the text file's path, expected batch layout: inputs shape and dtype,
# targets shape and dtype, mask shape, for batch size b)
TASK_CASES = {
    "adding": (lambda path: Adding(), ((50, 2), np.float32, (), np.float32, ())),
    "copy": (lambda path: Copy(), ((41,), np.int32, (41,), np.int32, (41,))),
    "digits_rows": (lambda path: DigitsRows(), ((8, 8), np.float32, (), np.int32, ())),
    "digits_pixels": (lambda path: DigitsPixels(), ((64, 1), np.float32, (), np.int32, ())),
    "sines": (lambda path: Sines(horizon=3), ((32, 1), np.float32, (3,), np.float32, ())),
    "random_walk": (lambda path: RandomWalk(), ((32, 1), np.float32, (1,), np.float32, ())),
    "markov": (lambda path: MarkovLanguage(), ((128,), np.int32, (128,), np.int32, (128,))),
    "text": (
        lambda path: TextFile(path=str(path), length=16, num_eval=8),
        ((16,), np.int32, (16,), np.int32, (16,)),
    ),
}
OUTPUT_SHAPES = {
    "adding": (1,),
    "copy": (41, 10),
    "digits_rows": (10,),
    "digits_pixels": (10,),
    "sines": (3,),
    "random_walk": (1,),
    "markov": (128, 16),
    "text": (16, 256),
}


def jit_loss(task):
    """The task's loss as one compiled program (eager dispatch compiles every primitive)."""
    return jax.jit(task.loss)


@pytest.mark.parametrize("name", list(TASK_CASES))
def test_registered_under_its_name(name):
    make, _ = TASK_CASES[name]
    assert type(make("unused")) is TASKS[name]


@pytest.mark.parametrize("name", list(TASK_CASES))
def test_batches_have_the_stated_shapes_and_are_a_pure_function_of_the_position(name, text_file):
    task = TASK_CASES[name][0](text_file[0])
    inputs_shape, inputs_dtype, targets_shape, targets_dtype, mask_shape = TASK_CASES[name][1]
    other = dataclasses.replace(task)  # a fresh instance: nothing loaded is shared
    b = task.batch_size
    seen = []
    for position in [DataPosition(0, 0), DataPosition(0, 1), DataPosition(3, 2)]:
        batch, again = task.train_batch(position), other.train_batch(position)
        assert set(batch) == {"inputs", "targets", "mask"}
        assert batch["inputs"].shape == (b, *inputs_shape)
        assert batch["inputs"].dtype == inputs_dtype
        assert batch["targets"].shape == (b, *targets_shape)
        assert batch["targets"].dtype == targets_dtype
        assert batch["mask"].shape == (b, *mask_shape) and batch["mask"].dtype == np.float32
        for key in batch:
            np.testing.assert_array_equal(batch[key], again[key])
        assert not any(np.array_equal(batch["inputs"], s) for s in seen)
        seen.append(batch["inputs"])
    assert task.output_shape(batch) == (b, *OUTPUT_SHAPES[name])
    assert task.num_outputs == OUTPUT_SHAPES[name][-1]
    for split in SPLITS:
        assert task.data[split][0].shape[1:] == inputs_shape
        for x, y in zip(task.data[split], other.data[split], strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["copy", "markov", "text"])
def test_token_tasks_set_the_vocabulary_of_the_model(name):
    task = TASK_CASES[name][0]("unused")
    vocab = {"copy": 10, "markov": 16, "text": 256}[name]
    assert task.model_fields == {"num_outputs": vocab, "vocab_size": vocab}


def test_stream_evaluation_sets_differ_between_splits_and_seeds():
    task = Adding()
    inputs = [task.data[split][0] for split in SPLITS]
    assert not np.array_equal(inputs[0], inputs[1]) and not np.array_equal(inputs[1], inputs[2])
    other = Adding(seed=1)
    assert not np.array_equal(task.data["test"][0], other.data["test"][0])
    assert not np.array_equal(
        task.train_batch(DataPosition(0, 0))["inputs"],
        other.train_batch(DataPosition(0, 0))["inputs"],
    )


def test_adding_target_is_the_sum_of_the_two_marked_values():
    task = Adding(length=11)  # odd: first half steps 0-4, second half steps 5-10
    for split in SPLITS:
        inputs, targets = task.data[split]
        values, markers = inputs[..., 0], inputs[..., 1]
        assert set(np.unique(markers)) == {0.0, 1.0}
        assert np.all(markers[:, :5].sum(axis=1) == 1) and np.all(markers[:, 5:].sum(axis=1) == 1)
        assert values.min() >= 0.0 and values.max() < 1.0
        np.testing.assert_allclose(targets, (values * markers).sum(axis=1), rtol=1e-6)
    # both halves are used throughout: every step of each half holds a marker somewhere
    markers = task.data["train"][0][..., 1]
    assert np.all(markers.sum(axis=0) > 0)


def test_adding_predicting_the_mean_scores_one_sixth():
    task = Adding()
    inputs, targets = task.data["test"]
    batch = {"inputs": inputs, "targets": targets, "mask": np.ones(len(targets), np.float32)}
    loss = jit_loss(task)
    mean_loss, metrics = loss(np.ones((len(targets), 1), np.float32), batch)
    assert float(mean_loss) == pytest.approx(1 / 6, abs=0.03)
    assert float(metrics["mse"]) == float(mean_loss)
    assert float(loss(targets[:, None], batch)[0]) == 0.0


def test_copy_layout_string_delay_go_and_output_steps():
    task = Copy(num_symbols=5, copy_length=4, delay=3)
    length, go = 4, 7
    inputs, targets, mask = task.data["test"]
    assert inputs.shape == (task.num_eval, 2 * 4 + 3 + 1) == targets.shape == mask.shape
    string = inputs[:, :length]
    assert string.min() == 1 and string.max() == 5  # every symbol 1-5 appears, no blank or go
    np.testing.assert_array_equal(inputs[:, length:go], 0)
    np.testing.assert_array_equal(inputs[:, go], task.go_token)
    assert task.go_token == 6 and task.vocab_size == 7
    np.testing.assert_array_equal(inputs[:, go + 1 :], 0)
    # the mask is exactly the copy_length steps after the go marker, and there the targets
    # are the string
    np.testing.assert_array_equal(mask.sum(axis=1), length)
    go_step = np.argmax(inputs == task.go_token, axis=1)
    steps = np.arange(inputs.shape[1])
    expected_mask = (steps > go_step[:, None]) & (steps <= go_step[:, None] + length)
    np.testing.assert_array_equal(mask > 0, expected_mask)
    np.testing.assert_array_equal(targets[mask > 0].reshape(-1, length), string)
    np.testing.assert_array_equal(targets[mask == 0], 0)


def test_copy_loss_guessing_baseline_and_sequence_accuracy():
    task = Copy(num_symbols=8, copy_length=5, delay=2, num_eval=6)
    inputs, targets, mask = task.data["validation"]
    batch = {"inputs": inputs, "targets": targets, "mask": mask}
    loss = jit_loss(task)
    vocab = task.vocab_size
    # uniform over the 8 symbols, (almost) nothing on blank and go: log 8 nats per symbol
    guess = np.full((6, task.sequence_length, vocab), -1e9, np.float32)
    guess[..., 1 : 8 + 1] = 0.0
    assert float(loss(guess, batch)[0]) == pytest.approx(math.log(8), rel=1e-6)
    perfect = 10.0 * np.eye(vocab, dtype=np.float32)[targets]  # [b, t, v]
    value, metrics = loss(perfect, batch)
    assert float(metrics["accuracy"]) == 1.0 and float(metrics["sequence_accuracy"]) == 1.0
    # one wrong symbol in one sequence; and wrong everywhere off the mask, which must not count
    wrong = perfect.copy()
    wrong[mask == 0] = 10.0 * np.eye(vocab, dtype=np.float32)[3]
    first_output = np.argmax(mask[0])
    wrong[0, first_output] = np.roll(wrong[0, first_output], 1)
    metrics = loss(wrong, batch)[1]
    assert float(metrics["accuracy"]) == pytest.approx(1 - 1 / (6 * 5))
    assert float(metrics["sequence_accuracy"]) == pytest.approx(5 / 6)
    # padded rows of an evaluation batch (mask 0 throughout) count for neither metric
    padded = next(task.eval_batches("validation", 8))
    outputs = 10.0 * np.eye(vocab, dtype=np.float32)[padded["targets"]]
    outputs[6:] = 0.0
    metrics = jax.jit(task.loss)(outputs, padded)[1]
    assert float(metrics["accuracy"]) == 1.0 and float(metrics["sequence_accuracy"]) == 1.0


def test_digits_rows_and_pixels_hold_the_image_pixels_labels_and_splits():
    image, rows, pixels = Digits(), DigitsRows(), DigitsPixels()
    assert (image.layout, rows.layout, pixels.layout) == ("image", "rows", "pixels")
    # the subclasses change the default layout and nothing else
    for task in (rows, pixels):
        assert dataclasses.asdict(task) == {**dataclasses.asdict(image), "layout": task.layout}
    for split in SPLITS:
        x, y = image.data[split]
        n = len(y)
        np.testing.assert_array_equal(rows.data[split][0], x.reshape(n, 8, 8))
        np.testing.assert_array_equal(pixels.data[split][0], x.reshape(n, 64, 1))
        np.testing.assert_array_equal(rows.data[split][1], y)
        np.testing.assert_array_equal(pixels.data[split][1], y)
    # a row is a row of the picture: step t of "rows" is image row t
    np.testing.assert_array_equal(rows.data["test"][0][:, 2], image.data["test"][0][:, 2, :, 0])
    position = DataPosition(1, 3)
    a, b = image.train_batch(position), pixels.train_batch(position)
    np.testing.assert_array_equal(b["inputs"], a["inputs"].reshape(-1, 64, 1))
    np.testing.assert_array_equal(b["targets"], a["targets"])


def test_digits_rejects_an_unknown_layout():
    with pytest.raises(ConfigError, match="task.layout must be one of"):
        Digits(layout="columns")


def test_random_walk_naive_mse_matches_numpy_and_the_walk_ends_at_zero():
    task = RandomWalk(horizon=3, step_std=0.5)
    inputs, targets = task.data["test"]
    np.testing.assert_array_equal(inputs[:, -1, 0], 0.0)  # shifted: the window's last value
    walk = np.concatenate([inputs[..., 0], targets], axis=1)
    assert np.diff(walk, axis=1).std() == pytest.approx(0.5, rel=0.02)
    outputs = np.random.default_rng(1).standard_normal(targets.shape).astype(np.float32)
    batch = {"inputs": inputs, "targets": targets, "mask": np.ones(len(targets), np.float32)}
    loss, metrics = jit_loss(task)(outputs, batch)
    naive = np.mean((inputs[:, -1, :] - targets) ** 2)
    assert float(metrics["naive_mse"]) == pytest.approx(naive, rel=1e-5)
    assert float(metrics["mse"]) == pytest.approx(np.mean((outputs - targets) ** 2), rel=1e-5)
    assert float(loss) == float(metrics["mse"])
    # E[naive_mse] = step_std^2 (horizon + 1) / 2 = 0.5
    assert naive == pytest.approx(0.25 * (3 + 1) / 2, rel=0.15)


def test_series_loss_ignores_padded_rows():
    task = Sines(num_eval=5, horizon=2)
    batch = next(task.eval_batches("test", 8))  # 3 padded rows
    inputs, targets = task.data["test"]
    outputs = batch["targets"].copy()
    outputs[5:] += 100.0  # wrong only on the padding
    metrics = jit_loss(task)(outputs, batch)[1]
    assert float(metrics["mse"]) == 0.0
    naive = np.mean((inputs[:, -1, :] - targets) ** 2)
    assert float(metrics["naive_mse"]) == pytest.approx(naive, rel=1e-5)


def test_sines_without_noise_have_unit_variance_and_windows_continue_the_series():
    clean = Sines(noise=0.0, num_eval=1024)
    inputs, targets = clean.data["validation"]
    values = np.concatenate([inputs[..., 0], targets], axis=1)
    assert np.mean(values**2) == pytest.approx(1.0, abs=0.05)
    assert np.abs(values).max() <= math.sqrt(2 * clean.num_sines) + 1e-5  # sum of a_k <= sqrt(2K)
    # the noise is added to the same clean signal: the difference is the noise alone
    noise = Sines(noise=0.5).data["validation"][0] - Sines(noise=0.0).data["validation"][0]
    assert noise.mean() == pytest.approx(0.0, abs=0.01)
    assert noise.std() == pytest.approx(0.5, rel=0.02)


def test_sines_rejects_periods_that_alias():
    with pytest.raises(ConfigError, match="min_period"):
        Sines(min_period=1.5)
    with pytest.raises(ConfigError, match="min_period"):
        Sines(min_period=10.0, max_period=5.0)


@pytest.mark.parametrize(
    ("task", "parameters"),
    [
        (Adding(batch_size=16), 50 * 2 * 16 + 16 + 16 + 1),
        (Sines(batch_size=16, horizon=2), 32 * 16 + 16 + 16 * 2 + 2),
        (RandomWalk(batch_size=16), 32 * 16 + 16 + 16 + 1),
    ],
    ids=["adding", "sines", "random_walk"],
)
def test_regression_tasks_train_through_fit(task, parameters):
    run = RunConfig(steps=5, log_every=5, eval_every=5, eval_batch_size=256, **QUIET)
    summary = fit(MLP(hidden_sizes=(16,)), task, run=run).summary
    assert summary["parameters"] == parameters
    expected = {"loss", "mse"} | ({"naive_mse"} if not isinstance(task, Adding) else set())
    for split in SPLITS:
        metrics = summary["final"][split]
        assert set(metrics) == expected
        assert all(math.isfinite(v) for v in metrics.values())
        assert metrics["loss"] == pytest.approx(metrics["mse"])


def test_an_mlp_beats_the_persistence_forecast_on_sines():
    run = RunConfig(steps=300, log_every=300, eval_every=300, **QUIET)
    test = fit(MLP(hidden_sizes=(64,)), Sines(), run=run).summary["final"]["test"]
    assert test["mse"] < 0.5 * test["naive_mse"]  # measured: 0.25 against 0.87
    assert test["mse"] > Sines().noise ** 2  # the noise alone costs noise^2
