"""Image classification: scikit-learn's digits (built in) and MNIST from IDX files.

Inputs [n, y, x, 1] float32 normalised with the training split's mean and standard deviation;
targets [n] int32 class indices. Digits can also be read as sequences (`layout`): 8 rows of 8
pixels ([n, t=8, 8]) or 64 pixels one at a time ([n, t=64, 1], a small sequential MNIST).
"""

import dataclasses
import os
from typing import Literal, get_args

import numpy as np

from arch.errors import ConfigError
from train.tasks.base import ArrayTask, ClassificationLoss, Split
from train.tasks.idx import read_idx

DIGITS_SPLIT_SEED = 0  # fixed: the digits test set never changes with the run's seed

Layout = Literal["image", "rows", "pixels"]
LAYOUTS = get_args(Layout)


def standardise(splits: dict[str, Split]) -> dict[str, Split]:
    """Scale every split by the training split's pixel mean and standard deviation."""
    train_inputs = splits["train"][0]
    mean, std = train_inputs.mean(), train_inputs.std()
    return {k: (((x - mean) / std).astype(np.float32), y) for k, (x, y) in splits.items()}


def as_layout(images: np.ndarray, layout: Layout) -> np.ndarray:
    """Images [n, y, x, 1] as "image" (unchanged), "rows" [n, y, x] (one row per step) or
    "pixels" [n, y * x, 1] (one pixel per step, in raster order)."""
    n, height, width, _ = images.shape
    if layout == "rows":
        return images.reshape(n, height, width)  # [n, t = y, x]
    if layout == "pixels":
        return images.reshape(n, height * width, 1)  # [n, t = y * x, 1]
    return images


def select_classes(inputs: np.ndarray, labels: np.ndarray, classes: tuple[int, ...]) -> Split:
    """Keep the examples of `classes`, relabelled 0..len(classes)-1 in the order given."""
    lookup = np.full(max(int(labels.max()), max(classes)) + 1, -1)
    lookup[list(classes)] = np.arange(len(classes))
    keep = lookup[labels] >= 0
    return inputs[keep], lookup[labels[keep]].astype(np.int32)


def balanced_subset(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of n examples taken round-robin over the classes, each in its original order.

    Every class gets floor(n / classes) or one more example (while it has examples left).
    """
    rank_in_class = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        rank_in_class[labels == c] = np.arange(np.sum(labels == c))
    order = np.lexsort((labels, rank_in_class))  # by rank, then by class
    return np.sort(order[:n])


@dataclasses.dataclass(frozen=True)
class Digits(ClassificationLoss, ArrayTask):
    """scikit-learn's 8x8 handwritten digits (1797 images), stratified 70/15/15 split."""

    batch_size: int = 64
    seed: int = 0
    classes: tuple[int, ...] = tuple(range(10))
    """Digits to keep, relabelled 0..len-1 in this order (e.g. 5 6 7 8 9 for transfer)."""
    max_train_examples: int | None = None
    """Keep this many training examples, balanced across classes (a fixed, seed-independent
    choice: the first examples of each class in the split's order, taken round-robin)."""
    layout: Layout = "image"
    """How the model reads an image: "image" [n, 8, 8, 1]; as a sequence, "rows" [n, 8, 8]
    (8 steps of 8 pixels) or "pixels" [n, 64, 1] (64 steps of one pixel). Same pixels, labels
    and splits in every layout."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layout not in LAYOUTS:
            raise ConfigError(f"task.layout must be one of {LAYOUTS}, got {self.layout!r}")
        bad = [c for c in self.classes if not 0 <= c <= 9]
        if bad or len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ConfigError(f"task.classes must be distinct digits 0-9, got {self.classes}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ConfigError(
                f"task.max_train_examples must be >= 1 (or None), got {self.max_train_examples}"
            )

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    def load(self) -> dict[str, Split]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[..., None]  # [n, 8, 8, 1] in [0, 1]
        inputs, labels = select_classes(images, digits.target, self.classes)
        x_train, x_rest, y_train, y_rest = train_test_split(
            inputs, labels, test_size=0.3, stratify=labels, random_state=DIGITS_SPLIT_SEED
        )
        x_val, x_test, y_val, y_test = train_test_split(
            x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=DIGITS_SPLIT_SEED
        )
        if self.max_train_examples is not None:
            keep = balanced_subset(y_train, self.max_train_examples)
            x_train, y_train = x_train[keep], y_train[keep]
        splits = standardise(
            {"train": (x_train, y_train), "validation": (x_val, y_val), "test": (x_test, y_test)}
        )
        return {split: (as_layout(x, self.layout), y) for split, (x, y) in splits.items()}


@dataclasses.dataclass(frozen=True)
class DigitsRows(Digits):
    """Digits as sequences of 8 rows: inputs [n, 8, 8] (8 steps of 8 pixels), labels as digits."""

    layout: Layout = "rows"


@dataclasses.dataclass(frozen=True)
class DigitsPixels(Digits):
    """Digits pixel by pixel: inputs [n, 64, 1] (64 steps of one pixel: sequential digits)."""

    layout: Layout = "pixels"


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


MNIST_HELP = (
    "it must hold the four MNIST IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally .gz): put them there "
    "or pass --task.data-dir DIR; Fashion-MNIST installs from Debian with apt-get install "
    "dataset-fashion-mnist, then --task.data-dir /usr/share/datasets/fashion-mnist"
)


FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_HELP = (
    f"Fashion-MNIST installs into {FASHION_DIR} from Debian: apt-get install "
    "dataset-fashion-mnist (or put the four IDX files of github.com/zalandoresearch/"
    "fashion-mnist in a directory and pass --task.data-dir DIR)"
)


def find_idx_files(data_dir: str, help_text: str = MNIST_HELP) -> dict[str, str]:
    """{stem: path} of the four MNIST files in `data_dir` (each plain or .gz); a ConfigError
    naming every file that is missing, or the directory itself, and how to provide them."""
    directory = os.path.expanduser(data_dir)
    if not os.path.isdir(directory):
        problem = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise ConfigError(f"--task.data-dir {data_dir!r} {problem}; {help_text}")
    found, missing = {}, []
    for stem in (stem for pair in MNIST_FILES.values() for stem in pair):
        paths = [os.path.join(directory, name) for name in (stem, stem + ".gz")]
        present = [path for path in paths if os.path.exists(path)]
        if present:
            found[stem] = present[0]
        else:
            missing.append(stem + "[.gz]")
    if missing:
        raise ConfigError(
            f"--task.data-dir {data_dir!r} lacks the MNIST file{'s' * (len(missing) > 1)} "
            f"{', '.join(missing)}; {help_text}"
        )
    return found


def check_labels(labels: np.ndarray, path: str, num_classes: int) -> None:
    """Labels outside [0, num_classes) would index past the logits: NaN at the first step."""
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ConfigError(
            f"{path}: labels range from {labels.min()} to {labels.max()}, but the task has "
            f"{num_classes} classes (labels 0 to {num_classes - 1}); use MNIST-format label files"
        )


@dataclasses.dataclass(frozen=True)
class Mnist(ClassificationLoss, ArrayTask):
    """MNIST (or Fashion-MNIST) from the four IDX files in `data_dir`; nothing is downloaded."""

    data_dir: str = "data/mnist"
    batch_size: int = 128
    seed: int = 0
    validation_size: int = 5000
    """The last this-many training images form the validation split."""

    @property
    def num_outputs(self) -> int:
        return 10

    help_text = MNIST_HELP

    def load(self) -> dict[str, Split]:
        paths = find_idx_files(self.data_dir, self.help_text)
        raw = {}
        for split, (image_stem, label_stem) in MNIST_FILES.items():
            images = read_idx(paths[image_stem])
            labels = read_idx(paths[label_stem])
            if images.ndim != 3 or labels.shape != images.shape[:1]:
                raise ConfigError(
                    f"MNIST {split}: images {images.shape} and labels {labels.shape} "
                    f"do not match ([n, rows, cols] and [n])"
                )
            check_labels(labels, paths[label_stem], self.num_outputs)
            raw[split] = ((images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int32))
        x, y = raw["train"]
        if not 0 < self.validation_size < len(y):
            raise ConfigError(
                f"task.validation_size must be in (0, {len(y)}), got {self.validation_size}"
            )
        cut = len(y) - self.validation_size
        return standardise(
            {"train": (x[:cut], y[:cut]), "validation": (x[cut:], y[cut:]), "test": raw["test"]}
        )


@dataclasses.dataclass(frozen=True)
class FashionMnist(Mnist):
    """Fashion-MNIST (Xiao et al. 2017): 60k / 10k 28x28 greyscale images of 10 kinds of
    clothing, from Debian's dataset-fashion-mnist (installed by name, nothing downloaded).

    The layout and splits are MNIST's: the last `validation_size` training images are the
    validation split, the 10k test images the test split. CLASSES names the labels 0-9."""

    data_dir: str = FASHION_DIR
    help_text = FASHION_HELP

    CLASSES = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
