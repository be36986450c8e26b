"""Small 2-D binary classification problems: XOR, two separable blobs, concentric circles.

Inputs [n, 2] float32, targets [n] float32 in {0, 1}; the model outputs one logit [n, 1].
"""

import dataclasses

import numpy as np

from train.tasks.base import ArrayTask, BinaryClassificationLoss, Split


def shuffled(rng: np.random.Generator, inputs: np.ndarray, targets: np.ndarray) -> Split:
    """The examples in a random order (the generators emit them class by class)."""
    order = rng.permutation(len(targets))
    return inputs[order].astype(np.float32), targets[order]


@dataclasses.dataclass(frozen=True)
class PointsTask(BinaryClassificationLoss, ArrayTask):
    """Base: `sample(rng, n)` draws n labelled points; splits use independent streams of `seed`."""

    batch_size: int = 32
    seed: int = 0
    num_train: int = 512
    num_eval: int = 256

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        raise NotImplementedError

    def load(self) -> dict[str, Split]:
        sizes = {"train": self.num_train, "validation": self.num_eval, "test": self.num_eval}
        return {
            split: self.sample(np.random.default_rng([self.seed, 1000 + i]), n)
            for i, (split, n) in enumerate(sizes.items())
        }


@dataclasses.dataclass(frozen=True)
class Xor(PointsTask):
    """XOR: label = x1 != x2 for bits encoded as -1/+1; no line separates the classes."""

    noise: float = 0.0
    """Standard deviation of Gaussian noise added to each corner (0: the exact truth table)."""
    num_train: int = 256

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        corner = np.arange(n) % 4  # every corner equally often: a line gets at most 3 of 4 right
        bits = np.stack([corner // 2, corner % 2], axis=1)  # [n, 2] in {0, 1}
        inputs = 2.0 * bits - 1.0 + self.noise * rng.standard_normal((n, 2))
        targets = (bits[:, 0] != bits[:, 1]).astype(np.float32)
        return shuffled(rng, inputs, targets)


@dataclasses.dataclass(frozen=True)
class Blobs(PointsTask):
    """Two Gaussian blobs far apart: linearly separable (a perceptron solves it)."""

    spread: float = 0.5
    """Standard deviation of each blob; the centres are (-2, -2) and (2, 2)."""

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        targets = (np.arange(n) % 2).astype(np.float32)
        centres = np.where(targets[:, None] > 0, 2.0, -2.0)  # [n, 1]
        inputs = centres + self.spread * rng.standard_normal((n, 2))
        return shuffled(rng, inputs, targets)


@dataclasses.dataclass(frozen=True)
class Circles(PointsTask):
    """A disc inside a ring: not linearly separable (the classes share a centre)."""

    noise: float = 0.1
    """Standard deviation of Gaussian noise on the radius; inner radius 0.5, outer 1."""

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        targets = (np.arange(n) % 2).astype(np.float32)  # 1: inner disc, 0: outer ring
        radius = np.where(targets > 0, 0.5, 1.0) + self.noise * rng.standard_normal(n)
        angle = rng.uniform(0, 2 * np.pi, n)
        inputs = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
        return shuffled(rng, inputs, targets)
