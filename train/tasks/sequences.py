"""Synthetic sequence tasks that test memory over long gaps: the adding problem and the copy task.

Legend: b batch, t time (sequence steps), v vocabulary. Both are generated streams
(StreamTask): every training batch is new, the evaluation sets are fixed.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from arch.errors import ConfigError
from train import losses
from train.tasks.base import Batch, ClassificationLoss, Split, StreamTask, require_at_least


class TokenOutputs:
    """Mixin for tasks scored per step over a vocabulary: the model outputs logits [b, t, v].

    The class defines `vocab_size` (a field or a property); the model's `num_outputs` and, if
    it has one, its `vocab_size` (the embedding of token inputs) are both set to it.
    """

    vocab_size: int

    @property
    def num_outputs(self) -> int:
        return self.vocab_size

    @property
    def model_fields(self) -> dict[str, int]:
        return {"num_outputs": self.vocab_size, "vocab_size": self.vocab_size}

    def output_shape(self, batch: Batch) -> tuple[int, ...]:
        return (*batch["targets"].shape, self.vocab_size)  # [b, t, v]


def sequence_accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Fraction of sequences whose every masked step is right. logits [b, t, v], labels [b, t].

    A sequence with no masked step (padding) does not count.
    """
    right = (jnp.argmax(logits, axis=-1) == labels) | (mask == 0)  # [b, t]
    return losses.masked_mean(jnp.all(right, axis=-1), jnp.max(mask, axis=-1))


class TokenClassificationLoss(ClassificationLoss):
    """Softmax cross-entropy at every masked step; logits [b, t, v], labels [b, t].

    Metrics "accuracy" (per step) and "sequence_accuracy" (sequences without an error).
    """

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        loss, metrics = super().loss(outputs, batch)
        whole = sequence_accuracy(outputs, batch["targets"], batch["mask"])
        return loss, {**metrics, "sequence_accuracy": whole}


@dataclasses.dataclass(frozen=True)
class Adding(StreamTask):
    """Adding problem: sum the two marked numbers of a long sequence; predicting 1.0 scores 1/6.

    inputs [n, length, 2] float32: channel 0 holds values ~ U(0, 1), channel 1 a marker that
    is 1 at exactly two steps, one in the first half (steps < length // 2) and one in the
    second, and 0 elsewhere. targets [n] float32 = the sum of the two marked values. The model
    outputs [b, 1]; the loss is the mean squared error ("mse"). The sum of two U(0, 1) has
    mean 1 and variance 2/12, so a model that ignores the markers and predicts 1.0 scores
    mse 1/6 ~ 0.167 (Hochreiter & Schmidhuber 1997; Le et al. 2015).
    """

    batch_size: int = 32
    seed: int = 0
    length: int = 50
    """Sequence length: the distance the first marked value must be carried."""
    num_eval: int = 512

    num_outputs = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length < 2:
            raise ConfigError(f"task.length must be >= 2 (one marker per half), got {self.length}")

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        values = rng.uniform(0.0, 1.0, (n, self.length))  # [n, t]
        half = self.length // 2
        first = rng.integers(0, half, n)
        second = rng.integers(half, self.length, n)
        rows = np.arange(n)
        markers = np.zeros((n, self.length))
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        inputs = np.stack([values, markers], axis=-1).astype(np.float32)  # [n, t, 2]
        targets = (values[rows, first] + values[rows, second]).astype(np.float32)
        return inputs, targets

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        mse = losses.mean_squared_error(outputs[..., 0], batch["targets"], batch["mask"])
        return mse, {"mse": mse}


@dataclasses.dataclass(frozen=True)
class Copy(TokenOutputs, TokenClassificationLoss, StreamTask):
    """Copy task: recall a string of symbols after a delay; guessing costs log(num_symbols) nats.

    Tokens (vocabulary v = num_symbols + 2): 0 blank, 1..num_symbols symbols, num_symbols + 1
    the "go" marker. With L = copy_length and D = delay, each sequence has T = 2L + D + 1 steps:

        inputs   s_1 .. s_L | 0 x D | go | 0 x L
        targets  0 x (L + D + 1)         | s_1 .. s_L
        mask     0 x (L + D + 1)         | 1 x L

    so the model must emit the string on the L steps after the go marker (Hochreiter &
    Schmidhuber 1997; Arjovsky et al. 2016, with D = their T - 1). Loss: softmax cross-entropy
    over the masked steps; metrics "accuracy" (per symbol) and "sequence_accuracy" (the
    fraction of sequences copied without an error). A model without memory can do no better
    than guess uniformly among the symbols: log(num_symbols) nats per symbol (2.08 for 8).
    """

    batch_size: int = 32
    seed: int = 0
    num_symbols: int = 8
    copy_length: int = 10
    delay: int = 20
    """Blank steps between the end of the string and the go marker."""
    num_eval: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, num_symbols=1, copy_length=1, delay=0)

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 2

    @property
    def go_token(self) -> int:
        return self.num_symbols + 1

    @property
    def sequence_length(self) -> int:
        return 2 * self.copy_length + self.delay + 1

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        length, go = self.copy_length, self.copy_length + self.delay  # go: the marker's step
        string = rng.integers(1, self.num_symbols + 1, (n, length))  # [n, L]
        inputs = np.zeros((n, self.sequence_length), np.int32)  # [n, T]
        inputs[:, :length] = string
        inputs[:, go] = self.go_token
        targets = np.zeros((n, self.sequence_length), np.int32)  # [n, T]
        targets[:, go + 1 :] = string
        mask = np.zeros((n, self.sequence_length), np.float32)  # [n, T]
        mask[:, go + 1 :] = 1.0
        return inputs, targets, mask
