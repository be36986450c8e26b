"""The task contract and a base for tasks whose splits are arrays in memory.

A task is a frozen dataclass: its fields are its configuration (and its command-line options).
It owns its data and its loss. Training batches come from an explicit `DataPosition`
(epoch, index) together with the task's `seed`, so a resumed run sees exactly the batches it
would have seen. Batches are dicts of NumPy arrays: {"inputs", "targets", "mask"}.
"""

import dataclasses
import functools
import os
import stat
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from arch import describe
from arch.errors import ConfigError
from train import losses

Batch = dict[str, np.ndarray]
# (inputs [n, ...] or a dict of them, targets [n, ...]) or (inputs, targets, mask [n, ...]):
# a mask of 0 marks what the loss ignores (padding, or sequence steps that carry no target)
Split = tuple[np.ndarray, ...]
SPLITS = ("train", "validation", "test")


def require_at_least(task: Any, **minimums: int) -> None:
    """A clear error for the first field of `task` below its minimum (e.g. batch_size=1)."""
    for name, least in minimums.items():
        if getattr(task, name) < least:
            raise ConfigError(f"task.{name} must be >= {least}, got {getattr(task, name)}")


def read_input_file(path: str, option: str) -> bytes:
    """The bytes of a task's input file. A path that is missing, a directory, not a regular
    file (/dev/null, a pipe), unreadable or empty is a ConfigError naming `option` (the flag
    that set it, e.g. "--task.path") and the path, raised before anything is compiled."""
    fix = f"pass a non-empty regular file as {option}"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{option} {path!r} does not exist; {fix}") from None
    except OSError as error:
        raise ConfigError(f"{option} {path!r} cannot be read: {error.strerror}; {fix}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{option} {path!r} is a directory, not a file; {fix}")
    if not stat.S_ISREG(mode):  # a device or a pipe: reading it gives nothing or never ends
        raise ConfigError(f"{option} {path!r} is not a regular file; {fix}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ConfigError(f"{option} {path!r} cannot be read: {error.strerror}; {fix}") from None
    if not data:
        raise ConfigError(f"{option} {path!r} is empty; {fix}")
    return data


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where the next training batch comes from: batch `index` of epoch `epoch`."""

    epoch: int = 0
    index: int = 0


class ArrayTask:
    """Base for tasks with fixed train / validation / test arrays.

    A subclass is a frozen dataclass with fields `batch_size` and `seed`, and implements
    `load()` -> {split: (inputs, targets[, mask])}, `num_outputs`, and `loss(outputs, batch)`.
    """

    batch_size: int
    seed: int

    def load(self) -> dict[str, Split]:
        raise NotImplementedError

    @property
    def num_outputs(self) -> int:
        """The size of the model's last axis that this task's loss expects."""
        raise NotImplementedError

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        raise NotImplementedError

    @property
    def model_fields(self) -> dict[str, Any]:
        """Model fields this task decides (e.g. the output size, a vocabulary size).

        fit() sets each on a model that has the field and left it at its default.
        """
        return {"num_outputs": self.num_outputs}

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics averaged over batches -> the reported ones. Metrics that are not means
        (e.g. perplexity = exp(mean loss)) are recomputed here from the averaged ones."""
        return metrics

    def output_shape(self, batch: Batch) -> tuple[int, ...]:
        """The model output shape the loss expects for `batch`: [b, num_outputs] by default."""
        return (len(batch["targets"]), self.num_outputs)

    @functools.cached_property
    def data(self) -> dict[str, Split]:
        """The splits, loaded once per task instance."""
        data = self.load()
        missing = [s for s in SPLITS if s not in data]
        if missing:
            raise ValueError(f"{type(self).__name__}.load() returned no {missing} split")
        return data

    def __post_init__(self) -> None:
        require_at_least(self, batch_size=1)

    def num_examples(self, split: str) -> int:
        return len(self.data[split][1])

    @property
    def steps_per_epoch(self) -> int:
        n = self.num_examples("train")
        if self.batch_size > n:
            raise ConfigError(
                f"task.batch_size {self.batch_size} is larger than the {n} training "
                f"examples of {type(self).__name__}; lower --task.batch-size"
            )
        return n // self.batch_size  # the remainder of an epoch is dropped; each epoch reshuffles

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of the training set for `epoch`: a pure function of (seed, epoch)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples("train"))

    def train_batch(self, position: DataPosition) -> Batch:
        """The training batch at `position`; the same position always gives the same batch."""
        rows = self.epoch_order(position.epoch)[
            position.index * self.batch_size : (position.index + 1) * self.batch_size
        ]
        return take_rows(self.data["train"], rows)

    def next_position(self, position: DataPosition) -> DataPosition:
        if position.index + 1 < self.steps_per_epoch:
            return DataPosition(position.epoch, position.index + 1)
        return DataPosition(position.epoch + 1, 0)

    def position_after(self, steps: int) -> DataPosition:
        """The position reached after `steps` training batches from the start."""
        epoch, index = divmod(steps, self.steps_per_epoch)
        return DataPosition(epoch, index)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Every example of `split` once, in order, in batches of one static shape.

        The last batch is padded by repeating the first rows, with mask 0 on the padding.
        """
        n = self.num_examples(split)
        for start in range(0, n, batch_size):
            rows = np.arange(start, start + batch_size) % n
            yield take_rows(self.data[split], rows, valid=np.arange(start, start + batch_size) < n)

    def example_batch(self) -> Batch:
        return self.train_batch(DataPosition())


def take_rows(split: Split, rows: np.ndarray, valid: np.ndarray | None = None) -> Batch:
    """The batch of `rows` of a split; rows where `valid` is False get mask 0 throughout.
    Inputs may be a dict of arrays (e.g. an encoder-decoder's source and target)."""
    inputs = jax.tree.map(lambda x: x[rows], split[0])
    targets = split[1][rows]
    mask = split[2][rows].astype(np.float32) if len(split) > 2 else np.ones(len(rows), np.float32)
    if valid is not None:
        mask = mask * valid.reshape((-1,) + (1,) * (mask.ndim - 1))
    return {"inputs": inputs, "targets": targets, "mask": mask}


class StreamTask(ArrayTask):
    """Base for generated tasks: an endless training stream, fixed evaluation sets.

    A subclass is a frozen dataclass with fields `batch_size`, `seed` and `num_eval`, and
    implements `sample(rng, n) -> (inputs, targets[, mask])`. Training batch `index` is drawn
    from a generator seeded by (seed, epoch, index), so it is a pure function of its position;
    the validation and test sets (and a fixed sample of the training distribution, "train",
    for the final report) come from generators of their own.
    """

    num_eval: int

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        raise NotImplementedError

    def load(self) -> dict[str, Split]:
        return {
            split: self.sample(np.random.default_rng([self.seed, 1, i]), self.num_eval)
            for i, split in enumerate(SPLITS)
        }

    def train_batch(self, position: DataPosition) -> Batch:
        rng = np.random.default_rng([self.seed, 0, position.epoch, position.index])
        split = self.sample(rng, self.batch_size)
        return take_rows(split, np.arange(self.batch_size))

    @property
    def steps_per_epoch(self) -> int:
        raise ValueError(f"{type(self).__name__} is an endless stream: it has no epochs")

    def next_position(self, position: DataPosition) -> DataPosition:
        return DataPosition(position.epoch, position.index + 1)

    def position_after(self, steps: int) -> DataPosition:
        return DataPosition(0, steps)


class ClassificationLoss:
    """Softmax cross-entropy on integer labels; outputs are logits [b, num_classes]."""

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        labels, mask = batch["targets"], batch["mask"]
        loss = losses.softmax_cross_entropy(outputs, labels, mask)
        return loss, {"accuracy": losses.accuracy(outputs, labels, mask)}


class BinaryClassificationLoss:
    """Binary cross-entropy on 0/1 labels; outputs are one logit per example [b, 1]."""

    num_outputs = 1

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits, labels, mask = outputs[..., 0], batch["targets"], batch["mask"]
        loss = losses.binary_cross_entropy(logits, labels, mask)
        return loss, {"accuracy": losses.binary_accuracy(logits, labels, mask)}


def describe_task(cls: type) -> str:
    """A task's description in listings: the first sentence of its docstring."""
    return describe(cls)


@runtime_checkable
class Task(Protocol):
    """What fit(), the train step and the ensemble rely on of a task (ArrayTask and StreamTask
    provide all of it; a task of another family implements it itself).

    Besides these members a task is a dataclass (its fields are written to config.json and
    are its command-line options). Batches are {"inputs", "targets", "mask"} dicts (Batch).
    """

    batch_size: int
    """Examples per training batch (`examples_per_second` counts them)."""
    seed: int
    """Orders the training data; training batches are a pure function of (seed, position)."""

    @property
    def model_fields(self) -> dict[str, Any]:
        """Model fields the task decides (num_outputs, vocab_size, ...): see adapt_model."""
        ...

    def output_shape(self, batch: Batch) -> tuple[int, ...]:
        """The model output shape the loss expects for `batch` (checked before compiling)."""
        ...

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, metrics): the metrics are means over the batch's mask."""
        ...

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Batch-averaged metrics -> the reported ones (e.g. perplexity from the mean loss)."""
        ...

    def train_batch(self, position: DataPosition) -> Batch:
        """The training batch at `position`: the same position always gives the same batch,
        which is what makes a resumed run exact."""
        ...

    def next_position(self, position: DataPosition) -> DataPosition:
        """The position of the batch after the one at `position` (saved in checkpoints)."""
        ...

    def position_after(self, steps: int) -> DataPosition:
        """The position reached after `steps` training batches from the start."""
        ...

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Every example of `split` (one of SPLITS) once, in batches of one static shape, the
        padding masked out."""
        ...


TASK_MEMBERS = (
    "batch_size",
    "seed",
    "model_fields",
    "output_shape",
    "loss",
    "finalize_metrics",
    "train_batch",
    "next_position",
    "position_after",
    "eval_batches",
)
"""The members of Task, in the order check_task names the missing ones."""


def missing_members(cls: type) -> list[str]:
    """The members of Task that the class `cls` neither defines nor declares as a field
    (looked up on the class, so that no property is evaluated and no data is loaded)."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return [name for name in TASK_MEMBERS if name not in fields and not hasattr(cls, name)]


def check_task(task: object) -> None:
    """Refuse, with a ConfigError naming what is missing, an object that is not a Task (a
    class instead of an instance, or one lacking a member fit relies on)."""
    if isinstance(task, type):
        raise ConfigError(
            f"the task must be an instance, got the class {task.__name__}; call it, e.g. "
            f"{task.__name__}()"
        )
    own = set(vars(task)) if hasattr(task, "__dict__") else set()
    missing = [name for name in missing_members(type(task)) if name not in own]
    if missing or not dataclasses.is_dataclass(task):
        lacks = f"lacks {', '.join(missing)}" if missing else "is not a dataclass"
        raise ConfigError(
            f"{type(task).__name__} is not a task: it {lacks} (see train.tasks.base.Task; "
            "subclass ArrayTask or StreamTask to get them)"
        )
