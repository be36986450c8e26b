"""Detection metrics (IoU, NMS, mAP@0.5) against hand-worked cases, and the grid detector."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch import MODELS, Detector
from train.state import parameter_count
from train.tasks.detection_metrics import (
    average_precision,
    batched_nms,
    box_iou,
    mean_average_precision,
    nms,
)


@pytest.mark.parametrize(
    "a, b, iou",
    [
        ((0, 0, 2, 2), (3, 3, 5, 5), 0.0),  # disjoint
        ((0, 0, 2, 2), (2, 0, 4, 2), 0.0),  # sharing an edge only
        ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),  # contained
        ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7),  # partial: 1 / (4 + 4 - 1)
        ((0, 0, 3, 1), (1, 0, 4, 1), 0.5),  # 2 / (3 + 3 - 2)
        ((1, 2, 5, 7), (1, 2, 5, 7), 1.0),  # identical
        ((1, 1, 1, 1), (1, 1, 1, 1), 0.0),  # empty union
    ],
)
def test_iou_against_hand_computed_values(a, b, iou):
    assert box_iou(np.array([a]), np.array([b]))[0, 0] == pytest.approx(iou)
    assert box_iou(np.array([b]), np.array([a]))[0, 0] == pytest.approx(iou)  # symmetric


def test_iou_is_pairwise():
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 4]])
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [10, 10, 11, 11]])
    expected = [[1 / 7, 1.0, 0.0], [4 / 16, 4 / 16, 0.0]]
    np.testing.assert_allclose(box_iou(a, b), expected)


# a chain of three boxes: IoU(A, B) = IoU(B, C) = 0.5 exactly, IoU(A, C) = 1 / 5
CHAIN = np.array([[0, 0, 3, 1], [1, 0, 4, 1], [2, 0, 5, 1]], float)


def test_nms_keeps_a_box_exactly_at_the_threshold():
    assert nms(CHAIN, np.array([0.9, 0.8, 0.7]), iou_threshold=0.5).tolist() == [0, 1, 2]


def test_nms_a_suppressed_box_suppresses_nothing():
    # below the threshold A drops B; C overlaps B by 0.5 but B is gone, and A by only 0.2
    assert nms(CHAIN, np.array([0.9, 0.8, 0.7]), iou_threshold=0.4).tolist() == [0, 2]


def test_nms_goes_in_score_order():
    # B scores highest: it drops A and C (both 0.5 > 0.4), whatever the input order
    assert nms(CHAIN, np.array([0.7, 0.9, 0.8]), iou_threshold=0.4).tolist() == [1]
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [5, 0, 15, 10]], float)
    # IoU(0, 1) = 90 / 110, IoU(0, 3) = 50 / 150: 1 is dropped, 3 and the far box 2 stay
    assert nms(boxes, np.array([0.9, 0.8, 0.7, 0.85]), 0.5).tolist() == [0, 3, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []


def test_batched_nms_never_suppresses_across_classes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10]], float)
    scores, classes = np.array([0.6, 0.9, 0.8]), np.array([0, 1, 1])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [1, 0]


def test_average_precision_is_the_area_under_the_precision_envelope():
    # TP FP TP FP TP over 3 truths: envelope 1 up to recall 1/3, 2/3 up to 2/3, 3/5 up to 1
    recall = np.array([1, 1, 2, 2, 3]) / 3
    precision = np.array([1, 1 / 2, 2 / 3, 2 / 4, 3 / 5])
    assert average_precision(recall, precision) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def image(boxes, scores=None, classes=None):
    boxes = np.array(boxes, float).reshape(-1, 4)
    scores = np.ones(len(boxes)) if scores is None else np.array(scores, float)
    classes = np.zeros(len(boxes), int) if classes is None else np.array(classes)
    return boxes, scores, classes


A, B, FAR = (0, 0, 10, 10), (20, 20, 30, 30), (40, 40, 45, 45)


def test_map_of_perfect_detections_is_one():
    truths = [(np.array([A, B], float), np.array([0, 1])), (np.array([B], float), np.array([1]))]
    detections = [image([A, B], [0.9, 0.8], [0, 1]), image([B], [0.7], [1])]
    result = mean_average_precision(detections, truths, num_classes=2)
    assert result["map"] == 1.0 and result["ap"] == [1.0, 1.0]
    assert result["num_truths"] == [1, 2]


def test_map_with_a_false_positive_ranked_first():
    # ranks: FP (precision 0), TP (precision 1/2 at recall 1): AP = 0.5
    truths = [(np.array([A], float), np.array([0]))]
    detections = [image([FAR, A], [0.9, 0.8])]
    assert mean_average_precision(detections, truths, 1)["map"] == pytest.approx(0.5)
    # ranked last instead, the false positive costs nothing: precision 1 up to recall 1
    detections = [image([FAR, A], [0.7, 0.8])]
    assert mean_average_precision(detections, truths, 1)["map"] == pytest.approx(1.0)


def test_map_with_a_missed_object():
    # two truths in two images, one found: recall stops at 1/2 with precision 1
    truths = [(np.array([A], float), np.array([0])), (np.array([B], float), np.array([0]))]
    detections = [image([A], [0.9]), image([])]
    assert mean_average_precision(detections, truths, 1)["map"] == pytest.approx(0.5)


def test_a_duplicate_is_a_false_positive_and_the_box_must_match_its_own_image():
    truths = [(np.array([A], float), np.array([0])), (np.array([B], float), np.array([0]))]
    # image 0: A twice (the second is a duplicate), image 1: A again (B is the truth there)
    detections = [image([A, A], [0.9, 0.8]), image([A], [0.85])]
    # ranks TP (0.9), FP (0.85, wrong image), FP (0.8): recall 1/2 at precision 1
    assert mean_average_precision(detections, truths, 1)["map"] == pytest.approx(0.5)


def test_map_iou_threshold_edge():
    truths = [(np.array([[0, 0, 3, 1]], float), np.array([0]))]
    half = [image([[1, 0, 4, 1]])]  # IoU exactly 0.5
    assert mean_average_precision(half, truths, 1, iou_threshold=0.5)["map"] == 1.0
    assert mean_average_precision(half, truths, 1, iou_threshold=0.51)["map"] == 0.0


def test_map_averages_the_classes_that_have_truths():
    truths = [(np.array([A, B], float), np.array([0, 1]))]
    # class 0 found (AP 1); class 1: a false positive first, then B (AP 1/2); class 2 absent
    detections = [image([A, FAR, B], [0.9, 0.8, 0.7], [0, 1, 1])]
    result = mean_average_precision(detections, truths, num_classes=3)
    assert result["ap"][:2] == [1.0, 0.5] and np.isnan(result["ap"][2])
    assert result["map"] == pytest.approx(0.75)
    # a wrong class is a false positive of that class and a miss of the right one
    detections = [image([A, B], [0.9, 0.9], [1, 1])]
    result = mean_average_precision(detections, truths, num_classes=2)
    assert result["ap"] == [0.0, 0.5] and result["map"] == pytest.approx(0.25)


def test_map_refuses_mismatched_image_counts():
    with pytest.raises(ValueError, match="2 images of detections but 1"):
        mean_average_precision([image([A]), image([A])], [(np.array([A]), np.array([0]))], 1)


def test_detector_grid_and_parameter_count():
    model = Detector(num_classes=4)
    assert MODELS["detector"] is Detector
    shapes = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 48, 48, 1)))
    )
    outputs, variables = shapes
    assert outputs.shape == (2, 6, 6, 5 + 4)  # 48 / 2^3 = 6 cells per side
    conv = lambda k, cin, cout: k * k * cin * cout + cout
    by_hand = conv(3, 1, 16) + conv(3, 16, 32) + conv(3, 32, 64) + conv(3, 64, 64) + conv(1, 64, 9)
    assert parameter_count(variables["params"]) == by_hand == 60809
    # a 64x64 image with four blocks gives a 4x4 grid
    deeper = Detector(num_classes=2, channels=(8, 8, 8, 8))
    out = jax.eval_shape(lambda: deeper.init_with_output(jax.random.key(0), jnp.zeros((1, 64, 64))))
    assert out[0].shape == (1, 4, 4, 7)
