"""The generated scenes task: boxes match the pixels drawn, targets encode and decode back,
the loss is zero for a perfect prediction and matches a hand computation otherwise."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from arch import Detector
from arch.errors import ConfigError
from train.loop import RunConfig, fit
from train.tasks import TASKS, DataPosition
from train.tasks.scenes import CLASSES, Scenes, decode_outputs, detect, encode_targets

CONFIDENT = 30.0  # a logit whose sigmoid is 1 - 1e-13


@pytest.fixture(scope="module")
def task() -> Scenes:
    return Scenes(num_eval=40, noise=0.0, batch_size=64)


def perfect_outputs(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """The outputs [b, s, s, 5 + k] whose sigmoids and softmax reproduce `targets`."""
    present = targets[..., 0] > 0
    box = np.clip(targets[..., 1:5], 1e-6, 1 - 1e-6)
    classes = np.eye(num_classes)[targets[..., 5].astype(int)] * 2 * CONFIDENT
    objectness = np.where(present, CONFIDENT, -CONFIDENT)[..., None]
    return np.concatenate([objectness, np.log(box / (1 - box)), classes], -1).astype(np.float32)


def test_registered_and_batch_shapes(task):
    assert TASKS["scenes"] is Scenes
    batch = task.train_batch(DataPosition(0, 3))
    assert batch["inputs"].shape == (64, 48, 48, 1) and batch["inputs"].dtype == np.float32
    assert batch["targets"].shape == (64, 6, 6, 6)
    assert batch["boxes"].shape == (64, 4, 4) and batch["labels"].shape == (64, 4)
    assert batch["mask"].tolist() == [1.0] * 64
    counts = (batch["labels"] >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 4
    assert set(np.unique(batch["labels"][batch["labels"] >= 0])) == set(range(len(CLASSES)))


def test_a_lone_objects_box_tightly_bounds_its_pixels():
    task = Scenes(min_objects=1, max_objects=1, noise=0.0)
    batch = task.sample(np.random.default_rng(0), 40)
    for image, box, label in zip(batch["inputs"], batch["boxes"], batch["labels"], strict=True):
        rows = np.flatnonzero(image[..., 0].any(axis=1))
        cols = np.flatnonzero(image[..., 0].any(axis=0))
        assert box[0].tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        assert label[0] >= 0 and (label[1:] == -1).all()


def test_every_box_is_tight_and_boxes_cover_every_pixel(task):
    batch = task.train_batch(DataPosition(0, 0))
    for image, boxes, labels in zip(batch["inputs"], batch["boxes"], batch["labels"], strict=True):
        image, covered = image[..., 0], np.zeros((48, 48), bool)
        boxes = boxes[labels >= 0].astype(int)
        for x0, y0, x1, y1 in boxes:
            inside = image[y0:y1, x0:x1] > 0
            # ink on all four borders of the box: it cannot shrink
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            assert not covered[y0:y1, x0:x1].any()  # boxes never overlap
            covered[y0:y1, x0:x1] = True
        assert not (image[~covered] > 0).any()  # no ink outside the boxes
        centres = {(int((y0 + y1) / 16), int((x0 + x1) / 16)) for x0, y0, x1, y1 in boxes}
        assert len(centres) == len(boxes)  # one object per grid cell (cells of 8 pixels)


def test_the_stream_is_a_pure_function_of_the_position(task):
    one, again = task.train_batch(DataPosition(0, 5)), task.train_batch(DataPosition(0, 5))
    for key in one:
        np.testing.assert_array_equal(one[key], again[key])
    assert not np.array_equal(one["inputs"], task.train_batch(DataPosition(0, 6))["inputs"])
    assert task.next_position(DataPosition(0, 5)) == DataPosition(0, 6)


def test_evaluation_batches_pad_with_mask_zero(task):
    batches = list(task.eval_batches("test", 32))
    assert [b["inputs"].shape[0] for b in batches] == [32, 32]
    assert sum(b["mask"].sum() for b in batches) == 40
    np.testing.assert_array_equal(batches[1]["inputs"][8:], task.data["test"]["inputs"][:24])
    assert batches[1]["mask"][8:].sum() == 0
    assert not np.array_equal(task.data["test"]["inputs"], task.data["validation"]["inputs"])


def test_encode_by_hand():
    # a 10x6 box with centre (13, 21) on a 48-pixel image, 6x6 grid: cell (row 2, col 1)
    boxes, labels = np.array([[[8.0, 18.0, 18.0, 24.0]]]), np.array([[2]])
    targets = encode_targets(boxes, labels, image_size=48, grid_size=6)
    expected = [1.0, 13 / 8 - 1, 21 / 8 - 2, np.sqrt(10 / 48), np.sqrt(6 / 48), 2.0]
    np.testing.assert_allclose(targets[0, 2, 1], expected, rtol=1e-6)
    assert targets[..., 0].sum() == 1.0


def test_decode_recovers_the_encoded_boxes(task):
    batch = task.train_batch(DataPosition(0, 1))
    outputs = perfect_outputs(batch["targets"], len(CLASSES))
    found = detect(outputs, task.image_size, score_threshold=0.5)
    for (boxes, scores, classes), true_boxes, labels in zip(
        found, batch["boxes"], batch["labels"], strict=True
    ):
        valid = labels >= 0
        order = np.lexsort((boxes[:, 1], boxes[:, 0]))
        true_order = np.lexsort((true_boxes[valid][:, 1], true_boxes[valid][:, 0]))
        np.testing.assert_allclose(boxes[order], true_boxes[valid][true_order], atol=1e-3)
        assert classes[order].tolist() == labels[valid][true_order].tolist()
        np.testing.assert_allclose(scores, 1.0, atol=1e-6)
    assert decode_outputs(outputs, 48)[0].shape == (64, 36, 4)


def test_the_loss_of_a_perfect_prediction_is_zero(task):
    batch = task.train_batch(DataPosition(0, 2))
    loss, metrics = task.loss(jnp.asarray(perfect_outputs(batch["targets"], 4)), batch)
    assert float(loss) < 1e-6
    assert float(metrics["class_accuracy"]) == 1.0 and float(metrics["objectness_accuracy"]) == 1.0


def test_the_loss_of_zero_outputs_by_hand(task):
    batch = task.train_batch(DataPosition(0, 2))
    targets = batch["targets"]
    objects = targets[..., 0].sum(axis=(1, 2))  # [b]
    # every cell: sigmoid(0) = 1/2, so log 2 per cell (x 0.5 where empty); a box number is
    # read as 1/2; the class as uniform over 4
    objectness = np.log(2) * (objects + 0.5 * (36 - objects))
    box = (((0.5 - targets[..., 1:5]) ** 2).sum(-1) * targets[..., 0]).sum(axis=(1, 2))
    expected = objectness.mean() + 5.0 * box.mean() + np.log(4) * objects.mean()
    loss, metrics = task.loss(jnp.zeros((64, 6, 6, 9)), batch)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["box_loss"]) == pytest.approx(box.mean(), rel=1e-5)
    # padding (mask 0) does not count: the first half alone gives the first half's loss
    half = {k: v[:32] for k, v in batch.items()}
    masked = {**batch, "mask": np.r_[np.ones(32), np.zeros(32)].astype(np.float32)}
    a = float(task.loss(jnp.zeros((32, 6, 6, 9)), half)[0])
    assert float(task.loss(jnp.zeros((64, 6, 6, 9)), masked)[0]) == pytest.approx(a, rel=1e-5)


def test_a_wrong_box_costs_box_loss(task):
    batch = task.train_batch(DataPosition(0, 2))
    outputs = perfect_outputs(batch["targets"], 4)
    outputs[..., 3] += 1.0  # every predicted width off
    _, metrics = task.loss(jnp.asarray(outputs), batch)
    assert float(metrics["box_loss"]) > 0.01 and float(metrics["class_loss"]) < 1e-6


def test_bad_configurations_are_refused():
    with pytest.raises(ConfigError, match="multiple of task.grid_size"):
        Scenes(image_size=50)
    with pytest.raises(ConfigError, match="min_objects <= task.max_objects"):
        Scenes(min_objects=3, max_objects=2)
    with pytest.raises(ConfigError, match="max_size <= task.image_size"):
        Scenes(max_size=60)


def test_a_model_whose_grid_does_not_match_is_refused(task):
    with pytest.raises(ConfigError, match=r"needs \(64, 6, 6, 9\)"):
        fit(Detector(channels=(8, 8)), task, run=RunConfig.quiet(1))


def test_training_through_the_shared_step_lowers_the_loss():
    task = Scenes(num_eval=32, batch_size=16)
    model = Detector(channels=(8, 16, 16), grid_channels=16)
    result = fit(model, task, run=RunConfig.quiet(60, 2, compilation_cache=False))
    first, last = result.curve("loss", "train")[0][1], result.curve("loss", "train")[-1][1]
    assert result.model.num_classes == 4
    assert last < 0.7 * first, (first, last)


def test_digits_of_held_out_scenes_are_held_out(task):
    train, held_out = task.digit_images["train"], task.digit_images["held_out"]
    assert len(train) + len(held_out) == 1797
    flat = {image.tobytes() for image in train}
    assert sum(image.tobytes() in flat for image in held_out) < 0.05 * len(held_out)
    assert dataclasses.replace(task, seed=1).digit_images["train"].shape == train.shape
