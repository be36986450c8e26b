"""Object detection metrics in NumPy: intersection over union, non-maximum suppression, and
mean average precision (Pascal VOC 2010+ style: all-point interpolated AP at one IoU threshold).

Boxes are (x0, y0, x1, y1) in continuous pixel coordinates, x0 <= x1 and y0 <= y1: a box of
pixel columns 2..5 spans x in [2, 6), width 4, and its area is (x1 - x0) * (y1 - y0) (no "+1"
of the old VOC code). Legend: n, m numbers of boxes.

Why not a library: torchmetrics' MeanAveragePrecision needs PyTorch (and pycocotools or
faster-coco-eval); pycocotools wants COCO-format dictionaries and computes COCO's 101-point
AP. The functions below are short, and tests/test_detection.py holds them to hand-worked cases.
"""

from collections.abc import Sequence

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """[n, 4] -> [n]: (x1 - x0) * (y1 - y0)."""
    boxes = np.asarray(boxes, np.float64)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union: [n, 4], [m, 4] -> [n, m]; 0 where the union is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # [n, m, 2]
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [n, m, 2]
    sides = np.clip(bottom_right - top_left, 0.0, None)
    intersection = sides[..., 0] * sides[..., 1]  # [n, m]
    union = box_area(a)[:, None] + box_area(b)[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    The highest-scoring box is kept and every box overlapping it with IoU > iou_threshold is
    dropped (IoU exactly at the threshold is kept, as in torchvision.ops.nms); repeat on the
    rest. Equal scores keep their input order.
    """
    boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou(boxes, boxes)  # [n, n]
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] > iou_threshold
    return np.asarray(keep, np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float = 0.5
) -> np.ndarray:
    """NMS within each class (boxes of different classes never suppress each other): the kept
    indices, highest score first."""
    classes = np.asarray(classes)
    keep = [
        np.flatnonzero(classes == c)[nms(boxes[classes == c], scores[classes == c], iou_threshold)]
        for c in np.unique(classes)
    ]
    kept = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return kept[np.argsort(-np.asarray(scores)[kept], kind="stable")]


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (VOC 2010+): the area under the precision envelope, where the
    envelope at recall r is the highest precision at any recall >= r."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # the envelope: running max from the right
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [n, 4], scores [n], classes [n]
Truths = tuple[np.ndarray, np.ndarray]  # boxes [m, 4], classes [m]


def mean_average_precision(
    detections: Sequence[Detections],
    truths: Sequence[Truths],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> dict[str, object]:
    """mAP over the images (one entry of `detections` and of `truths` per image).

    Per class, detections of all images are ranked by score (ties keep image order); each is a
    true positive if its best-overlapping ground-truth box of that class in its image has
    IoU >= iou_threshold and was not matched by a higher-ranked detection, else a false
    positive (VOC's rule). AP is the all-point interpolated area under precision-recall.
    Returns {"map": mean over the classes that have ground truth, "ap": [per class; NaN for a
    class without ground truth], "num_truths": [per class]}.
    """
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} images of detections but {len(truths)} of truths")
    aps, counts = [], []
    for c in range(num_classes):
        truth_boxes = [np.asarray(b).reshape(-1, 4)[np.asarray(k) == c] for b, k in truths]
        count = sum(len(b) for b in truth_boxes)
        ranked = [
            (float(s), image, np.asarray(b, np.float64))
            for image, (boxes, scores, classes) in enumerate(detections)
            for b, s, k in zip(np.reshape(boxes, (-1, 4)), scores, classes, strict=True)
            if k == c
        ]
        ranked.sort(key=lambda d: -d[0])  # stable: ties stay in image order
        matched = [np.zeros(len(b), bool) for b in truth_boxes]
        hits = np.zeros(len(ranked))
        for rank, (_, image, box) in enumerate(ranked):
            if not len(truth_boxes[image]):
                continue
            overlaps = box_iou(box[None], truth_boxes[image])[0]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= iou_threshold and not matched[image][best]:
                hits[rank], matched[image][best] = 1.0, True
        counts.append(count)
        if count == 0:
            aps.append(float("nan"))
            continue
        true_positives = np.cumsum(hits)
        precision = true_positives / np.arange(1, len(ranked) + 1)
        aps.append(average_precision(true_positives / count, precision))
    present = [ap for ap, n in zip(aps, counts, strict=True) if n > 0]
    return {
        "map": float(np.mean(present)) if present else float("nan"),
        "ap": aps,
        "num_truths": counts,
    }
