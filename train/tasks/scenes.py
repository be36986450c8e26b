"""Object detection on generated scenes: squares, circles, triangles and handwritten digits.

A scene is a grayscale image [n, n, 1] (n = 48 by default) on a black background with 1 to 4
objects of side 10-24 pixels at random places, each of a random brightness in [0.5, 1], plus
Gaussian pixel noise. Digits are scikit-learn's 8x8 digits scaled up (nearest neighbour);
the training stream pastes digits from a fixed 70% of them, the validation and test scenes
from the other 30%. Objects never overlap: boxes keep at least one empty pixel between them,
so each box tightly bounds exactly its object's pixels. No two objects have their centres in
the same grid cell, because the detector predicts one box per cell.

A box is (x0, y0, x1, y1) in continuous pixel coordinates (train/tasks/detection_metrics.py): an
object on pixel columns 2..5 has x0 = 2, x1 = 6. The batch:

    inputs   [b, n, n, 1] float32
    targets  [b, s, s, 6] float32 per grid cell (YOLO v1 encoding: the cell holding the box
             centre is responsible): objectness (0 / 1), the centre's offsets in the cell
             (cx, cy in [0, 1)), sqrt(w / n), sqrt(h / n), the class index
    boxes    [b, m, 4] float32 the raw boxes (m = max_objects, padded with zeros)
    labels   [b, m] int32 their classes, -1 on padding
    mask     [b] 1 for a real scene, 0 for evaluation padding

The model outputs [b, s, s, 5 + k]: an objectness logit, four box numbers read through a
sigmoid as the four box targets, and k class logits. Legend: b batch, n image side, s grid
cells per side, m objects per scene at most, k classes.
"""

import dataclasses
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arch.errors import ConfigError
from train.losses import masked_mean
from train.tasks.base import SPLITS, Batch, DataPosition, StreamTask, require_at_least
from train.tasks.detection_metrics import Detections, batched_nms

CLASSES = ("square", "circle", "triangle", "digit")
DIGITS_SPLIT_SEED = 0  # fixed: which digit images the held-out scenes use never changes
DIGIT_INK = 0.25  # upscaled digit pixels fainter than this (of 1) are background
PLACEMENT_TRIES = 50


def shape_pixels(kind: str, size: int, digit: np.ndarray | None = None) -> np.ndarray:
    """The object's pixels [size, size] in [0, 1] (0 = background) before brightness."""
    centres = np.arange(size) + 0.5  # pixel centres
    y, x = np.meshgrid(centres, centres, indexing="ij")
    if kind == "square":
        return np.ones((size, size))
    if kind == "circle":
        return ((x - size / 2) ** 2 + (y - size / 2) ** 2 <= (size / 2) ** 2).astype(float)
    if kind == "triangle":  # apex at the top centre, base along the bottom row
        return (np.abs(x - size / 2) <= y / 2).astype(float)
    if kind == "digit":
        rows = np.arange(size) * digit.shape[0] // size  # nearest-neighbour upscaling
        scaled = digit[rows][:, rows]
        return np.where(scaled >= DIGIT_INK, scaled, 0.0)
    raise ValueError(f"unknown shape {kind!r}; choose from {CLASSES}")


def tight_box(pixels: np.ndarray, top: int, left: int) -> np.ndarray:
    """(x0, y0, x1, y1) of the nonzero pixels of a patch placed at (top, left)."""
    rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    return np.array([left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1])


def cell_of(box: np.ndarray, cell: float, grid_size: int) -> tuple[int, int]:
    """(row, column) of the grid cell holding the box centre."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return min(int(cy // cell), grid_size - 1), min(int(cx // cell), grid_size - 1)


def encode_targets(
    boxes: np.ndarray, labels: np.ndarray, image_size: int, grid_size: int
) -> np.ndarray:
    """Boxes [b, m, 4] and labels [b, m] (-1 = none) -> per-cell targets [b, s, s, 6]."""
    cell = image_size / grid_size
    targets = np.zeros((len(boxes), grid_size, grid_size, 6), np.float32)
    for i, j in zip(*np.nonzero(labels >= 0), strict=True):
        x0, y0, x1, y1 = boxes[i, j]
        row, col = cell_of(boxes[i, j], cell, grid_size)
        targets[i, row, col] = (
            1.0,
            (x0 + x1) / 2 / cell - col,  # centre offsets in the cell
            (y0 + y1) / 2 / cell - row,
            np.sqrt((x1 - x0) / image_size),  # sqrt: an error on a small box costs more
            np.sqrt((y1 - y0) / image_size),
            labels[i, j],
        )
    return targets


def decode_outputs(
    outputs: np.ndarray, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outputs [b, s, s, 5 + k] -> one box per cell: boxes [b, s*s, 4] in pixels, scores
    [b, s*s] = sigmoid(objectness) x the best class probability, classes [b, s*s]."""
    outputs = np.asarray(outputs, np.float64)
    b, s = outputs.shape[:2]
    cell = image_size / s
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    rows, cols = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")  # [s, s]
    box = sigmoid(outputs[..., 1:5])  # [b, s, s, 4]
    cx, cy = (cols + box[..., 0]) * cell, (rows + box[..., 1]) * cell
    w, h = box[..., 2] ** 2 * image_size, box[..., 3] ** 2 * image_size
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    logits = outputs[..., 5:]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)  # softmax over classes
    scores = sigmoid(outputs[..., 0]) * probs.max(-1)
    return boxes.reshape(b, s * s, 4), scores.reshape(b, s * s), probs.argmax(-1).reshape(b, -1)


def detect(
    outputs: np.ndarray,
    image_size: int,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
) -> list[Detections]:
    """Per image: (boxes [n, 4], scores [n], classes [n]) with score >= score_threshold,
    after non-maximum suppression within each class, highest score first."""
    all_boxes, all_scores, all_classes = decode_outputs(outputs, image_size)
    found = []
    for boxes, scores, classes in zip(all_boxes, all_scores, all_classes, strict=True):
        confident = scores >= score_threshold
        boxes, scores, classes = boxes[confident], scores[confident], classes[confident]
        keep = batched_nms(boxes, scores, classes, iou_threshold)
        found.append((boxes[keep], scores[keep], classes[keep]))
    return found


@dataclasses.dataclass(frozen=True)
class Scenes(StreamTask):
    """Detection on generated scenes of squares, circles, triangles and digits (YOLO-style grid
    targets; boxes and labels kept for mAP)."""

    batch_size: int = 32
    seed: int = 0
    num_eval: int = 512
    """Scenes in each of the fixed validation and test sets."""
    image_size: int = 48
    grid_size: int = 6
    """Cells per side of the detector's grid (image_size / 2^blocks of the detector)."""
    min_objects: int = 1
    max_objects: int = 4
    min_size: int = 10
    max_size: int = 24
    noise: float = 0.05
    """Standard deviation of the Gaussian noise added to every pixel."""
    box_weight: float = 5.0
    """Weight of the box regression error (YOLO v1's lambda_coord)."""
    no_object_weight: float = 0.5
    """Weight of the objectness loss in cells without an object (YOLO v1's lambda_noobj)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, num_eval=1, image_size=8, grid_size=1, min_objects=1, min_size=3)
        if self.image_size % self.grid_size:
            raise ConfigError(
                f"task.image_size {self.image_size} must be a multiple of task.grid_size "
                f"{self.grid_size}"
            )
        if not self.min_objects <= self.max_objects <= self.grid_size**2:
            raise ConfigError(
                f"need task.min_objects <= task.max_objects <= grid_size^2, got "
                f"{self.min_objects}, {self.max_objects}, {self.grid_size}^2"
            )
        if not self.min_size <= self.max_size <= self.image_size:
            raise ConfigError(
                f"need task.min_size <= task.max_size <= task.image_size, got "
                f"{self.min_size}, {self.max_size}, {self.image_size}"
            )

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    @property
    def num_outputs(self) -> int:
        return 5 + self.num_classes

    @property
    def model_fields(self) -> dict[str, int]:
        return {"num_classes": self.num_classes}

    def output_shape(self, batch: Batch) -> tuple[int, ...]:
        return (len(batch["targets"]), self.grid_size, self.grid_size, self.num_outputs)

    @functools.cached_property
    def digit_images(self) -> dict[str, np.ndarray]:
        """scikit-learn's digits in [0, 1], 70% for training scenes, 30% for held-out ones."""
        from sklearn.datasets import load_digits

        images = load_digits().images / 16.0  # [1797, 8, 8]
        order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
        cut = int(0.7 * len(images))
        return {"train": images[order[:cut]], "held_out": images[order[cut:]]}

    def draw(self, rng: np.random.Generator, digits: np.ndarray, noise: float) -> tuple:
        """One scene: image [n, n], boxes [m, 4], labels [m] (-1 padded)."""
        n, m = self.image_size, self.max_objects
        image = np.zeros((n, n))
        boxes, labels = np.zeros((m, 4), np.float32), np.full(m, -1, np.int32)
        cells: set[tuple[int, int]] = set()
        placed = 0
        for _ in range(rng.integers(self.min_objects, self.max_objects + 1)):
            label = int(rng.integers(len(CLASSES)))
            digit = digits[rng.integers(len(digits))] if CLASSES[label] == "digit" else None
            for _ in range(PLACEMENT_TRIES):
                size = int(rng.integers(self.min_size, self.max_size + 1))
                pixels = shape_pixels(CLASSES[label], size, digit)
                top, left = rng.integers(0, n - size + 1, size=2)
                box = tight_box(pixels, top, left)
                cell = cell_of(box, n / self.grid_size, self.grid_size)
                apart = all(  # at least one empty pixel between boxes
                    b[0] > box[2] or box[0] > b[2] or b[1] > box[3] or box[1] > b[3]
                    for b in boxes[:placed]
                )
                if apart and cell not in cells:
                    brightness = rng.uniform(0.5, 1.0)
                    image[top : top + size, left : left + size] += brightness * pixels
                    boxes[placed], labels[placed] = box, label
                    cells.add(cell)
                    placed += 1
                    break
        if noise:
            image = image + rng.normal(0.0, noise, image.shape)
        return image, boxes, labels

    def sample(self, rng: np.random.Generator, n: int, digits: str = "train") -> Batch:
        scenes = [self.draw(rng, self.digit_images[digits], self.noise) for _ in range(n)]
        images, boxes, labels = (np.stack(parts) for parts in zip(*scenes, strict=True))
        return {
            "inputs": images[..., None].astype(np.float32),  # [b, n, n, 1]
            "targets": encode_targets(boxes, labels, self.image_size, self.grid_size),
            "boxes": boxes,
            "labels": labels,
            "mask": np.ones(n, np.float32),
        }

    def load(self) -> dict[str, Batch]:
        return {
            split: self.sample(
                np.random.default_rng([self.seed, 1, i]),
                self.num_eval,
                "train" if split == "train" else "held_out",
            )
            for i, split in enumerate(SPLITS)
        }

    def num_examples(self, split: str) -> int:
        return len(self.data[split]["mask"])

    def train_batch(self, position: DataPosition) -> Batch:
        rng = np.random.default_rng([self.seed, 0, position.epoch, position.index])
        return self.sample(rng, self.batch_size)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Every scene of `split` once, in batches of one shape; the last is padded by repeating
        the first scenes, with mask 0."""
        n = self.num_examples(split)
        for start in range(0, n, batch_size):
            rows = np.arange(start, start + batch_size)
            batch = {key: value[rows % n] for key, value in self.data[split].items()}
            batch["mask"] = batch["mask"] * (rows < n)
            yield batch

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """YOLO v1's loss, summed over the cells of a scene and averaged over scenes:
        objectness binary cross-entropy (no-object cells weighted no_object_weight)
        + box_weight x squared error of the four box numbers in the responsible cells
        + class cross-entropy in the responsible cells."""
        outputs = outputs.astype(jnp.float32)
        targets, mask = batch["targets"], batch["mask"]
        present = targets[..., 0]  # [b, s, s]
        objectness = optax.sigmoid_binary_cross_entropy(outputs[..., 0], present)
        weight = jnp.where(present > 0, 1.0, self.no_object_weight)
        box_error = jnp.sum((jax.nn.sigmoid(outputs[..., 1:5]) - targets[..., 1:5]) ** 2, -1)
        labels = targets[..., 5].astype(jnp.int32)
        class_error = optax.softmax_cross_entropy_with_integer_labels(outputs[..., 5:], labels)
        per_scene = lambda cells: jnp.sum(cells, axis=(1, 2))  # [b, s, s] -> [b]
        parts = {
            "objectness_loss": masked_mean(per_scene(weight * objectness), mask),
            "box_loss": masked_mean(per_scene(present * box_error), mask),
            "class_loss": masked_mean(per_scene(present * class_error), mask),
        }
        loss = parts["objectness_loss"] + self.box_weight * parts["box_loss"]
        loss = loss + parts["class_loss"]
        responsible = present * mask[:, None, None]
        correct = jnp.argmax(outputs[..., 5:], -1) == labels
        found = (outputs[..., 0] > 0) == (present > 0)
        return loss, {
            **parts,
            # over the cells that hold an object: is the class right?
            "class_accuracy": jnp.sum(correct * responsible) / jnp.maximum(responsible.sum(), 1),
            # over all cells: is objectness on the right side of 0.5?
            "objectness_accuracy": masked_mean(found, mask[:, None, None]),
        }
