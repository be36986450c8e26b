"""Tasks that only a model of token order can solve: reverse a sequence, tell a sorted one.

Legend: b batch, t time (sequence positions), v vocabulary. Both are generated streams
(StreamTask): every training batch is new, the evaluation sets are fixed. Inputs are token ids
[b, t] int32 drawn from the v symbols 0 .. v - 1, with no special tokens. They test what
attention is for: routing a token to a position that depends on where it stands ("reverse")
and comparing neighbours ("sorted"); a bag of tokens is worthless for both.
"""

import dataclasses
from typing import ClassVar

import numpy as np

from train.tasks.base import BinaryClassificationLoss, Split, StreamTask, require_at_least
from train.tasks.sequences import TokenClassificationLoss, TokenOutputs


@dataclasses.dataclass(frozen=True)
class Reverse(TokenOutputs, TokenClassificationLoss, StreamTask):
    """Reverse a string of random tokens; guessing scores 1 / vocab_size per token.

    inputs [n, t] int32 ~ uniform over the v symbols; targets [n, t] int32 = the inputs
    reversed (targets[:, i] = inputs[:, t - 1 - i]); mask [n, t] all ones. The model outputs
    logits [b, t, v] (one prediction per position, TokenOutputs). Loss: softmax cross-entropy
    over every position; metrics "accuracy" (per token) and "sequence_accuracy" (the fraction
    of sequences reversed without an error). The middle token of an odd length is its own
    target. A left-to-right model (causal attention, a one-way RNN) cannot know the token it
    must emit at positions i < (t - 1) / 2: it sees only x_0 .. x_i; a bidirectional one can.
    """

    batch_size: int = 32
    seed: int = 0
    vocab_size: int = 10
    """The symbols are 0 .. vocab_size - 1."""
    length: int = 12
    """Tokens per sequence."""
    num_eval: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, vocab_size=2, length=2, num_eval=1)

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        inputs = rng.integers(0, self.vocab_size, (n, self.length)).astype(np.int32)  # [n, t]
        targets = np.ascontiguousarray(inputs[:, ::-1])  # [n, t]
        return inputs, targets, np.ones((n, self.length), np.float32)


@dataclasses.dataclass(frozen=True)
class AnchoredReverse(Reverse):
    """Reverse with one fixed token (id vocab_size, its target masked out) starting every
    sequence: inputs, targets and mask [n, t + 1]. It marks an edge that positions can be
    counted from: a relative encoding (rotary) sees only offsets between tokens, and plain
    Reverse marks neither end. The tokens are Reverse's draws, shifted right by one."""

    anchor: ClassVar[bool] = True

    @property
    def sequence_length(self) -> int:
        """Positions the model sees: the anchor and the tokens."""
        return self.length + 1

    @property
    def model_fields(self) -> dict[str, int]:
        return {"num_outputs": self.vocab_size, "vocab_size": self.vocab_size + 1}

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        first = lambda value, x: np.concatenate([np.full((n, 1), value, x.dtype), x], axis=1)
        inputs, targets, mask = super().sample(rng, n)
        return first(self.vocab_size, inputs), first(0, targets), first(0.0, mask)


def sorted_multisets(rng: np.random.Generator, n: int, length: int, vocab_size: int) -> np.ndarray:
    """n sequences [n, t] int32, each the sorted (non-decreasing) tokens of t uniform draws
    from the v symbols, conditioned on holding at least two distinct symbols (so that a swap
    can unsort it): a constant draw is drawn again."""
    tokens = rng.integers(0, vocab_size, (n, length))  # [n, t]
    constant = np.all(tokens == tokens[:, :1], axis=1)  # [n]
    while constant.any():
        tokens[constant] = rng.integers(0, vocab_size, (int(constant.sum()), length))
        constant = np.all(tokens == tokens[:, :1], axis=1)
    return np.sort(tokens, axis=1).astype(np.int32)


def swap_two_distinct(rng: np.random.Generator, sequences: np.ndarray) -> np.ndarray:
    """Each sorted sequence [n, t] with two of its positions swapped, a pair drawn uniformly
    among those holding different symbols: the result is unsorted and has the same tokens."""
    n, length = sequences.shape
    rows = np.arange(n)
    first, second = np.zeros(n, np.int64), np.zeros(n, np.int64)
    pending = np.ones(n, bool)
    while pending.any():  # rejection: a pair of equal symbols (or i = j) is drawn again
        i = rng.integers(0, length, int(pending.sum()))
        j = rng.integers(0, length, int(pending.sum()))
        accepted = sequences[rows[pending], i] != sequences[rows[pending], j]
        chosen = rows[pending][accepted]
        first[chosen], second[chosen] = i[accepted], j[accepted]
        pending[chosen] = False
    swapped = sequences.copy()
    swapped[rows, first] = sequences[rows, second]
    swapped[rows, second] = sequences[rows, first]
    return swapped


@dataclasses.dataclass(frozen=True)
class Sorted(BinaryClassificationLoss, StreamTask):
    """Is the sequence sorted? Hard negatives are sorted ones with two tokens swapped.

    inputs [n, t] int32; targets [n] float32 = 1 if the tokens are non-decreasing, else 0.
    Every example starts as the sorted tokens of t uniform draws from the v symbols (redrawn if
    all equal). Exactly half of each batch or evaluation set stays sorted (label 1; one fewer
    when n is odd); in the other half two positions holding different symbols are swapped
    (label 0), which leaves the tokens unchanged and the order broken. So the multiset of
    tokens is drawn the same way for both classes, independently of the label: a model blind
    to order (any function of the bag of tokens, e.g. mean-pooled embeddings without
    positions) is at chance, accuracy 0.5. The model outputs one logit [b, 1]; loss: binary
    cross-entropy, metric "accuracy".
    """

    batch_size: int = 32
    seed: int = 0
    vocab_size: int = 10
    """The symbols are 0 .. vocab_size - 1."""
    length: int = 10
    """Tokens per sequence."""
    num_eval: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, vocab_size=2, length=2, num_eval=1)

    @property
    def model_fields(self) -> dict[str, int]:
        return {"num_outputs": self.num_outputs, "vocab_size": self.vocab_size}

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        sequences = sorted_multisets(rng, n, self.length, self.vocab_size)  # [n, t]
        labels = rng.permutation(np.arange(n) < n // 2).astype(np.float32)  # [n]: half are 1
        inputs = np.where(labels[:, None] > 0, sequences, swap_two_distinct(rng, sequences))
        return inputs.astype(np.int32), labels
