"""The recall probes that separate attention from recurrence: multi-query associative
recall, selective copying and induction heads. Each is a generated stream (StreamTask: every
training batch a pure function of its position, fixed evaluation sets) of token ids scored only
where the answer is due (mask 1 there, 0 elsewhere): softmax cross-entropy over those
positions, metrics "accuracy" (per scored position) and "sequence_accuracy" (sequences without
an error). The model reads inputs [b, t] and outputs logits [b, t, v] at every position, as a
language model does.

Legend: b batch, t time (tokens), v vocabulary, N key-value pairs / tokens to copy.
"""

import dataclasses

import numpy as np

from arch.errors import ConfigError
from train.tasks.base import Split, StreamTask, require_at_least
from train.tasks.sequences import TokenClassificationLoss, TokenOutputs


@dataclasses.dataclass(frozen=True)
class MultiQueryRecall(TokenOutputs, TokenClassificationLoss, StreamTask):
    """Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"): N key-value pairs,
    then every key queried again; the answer is its value.

    Keys are drawn from 1 .. v/2 - 1 and values from v/2 .. v - 1, each N distinct per
    sequence. The first 2N tokens are the pairs k_1 v_1 .. k_N v_N; each key then appears once
    more, at position 2N + 2 g_i, where the gaps g_i are distinct and drawn with probability
    proportional to g^(power_a - 1) (Zoology's power law: most queries come soon after the
    context, some far). The target at a query is its key's value (the next token after it, in
    a language model's terms); the other positions hold random tokens (Zoology's
    random_non_queries; `random_fill` False: zeros) and are not scored. A model that cannot
    bind a value to its key can at best guess among the N values of the context: 1 / N.
    """

    batch_size: int = 32
    seed: int = 0
    vocab_size: int = 64
    num_pairs: int = 8
    length: int = 64
    power_a: float = 0.01
    random_fill: bool = True
    """Random tokens between the queries (Zoology's random_non_queries); False: zeros."""
    num_eval: int = 512

    def __post_init__(self) -> None:
        require_at_least(self, num_pairs=1, vocab_size=4)
        if self.vocab_size // 2 - 1 < self.num_pairs:
            raise ConfigError(
                f"task.vocab_size {self.vocab_size} has {self.vocab_size // 2 - 1} keys, fewer "
                f"than num_pairs {self.num_pairs} distinct ones; raise --task.vocab-size"
            )
        if self.length < 4 * self.num_pairs:
            raise ConfigError(
                f"task.length must be >= 4 * num_pairs = {4 * self.num_pairs} (the pairs, then "
                f"a query every other position at most), got {self.length}"
            )
        if self.power_a <= 0:
            raise ConfigError(f"task.power_a must be > 0, got {self.power_a}")

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        pairs, half = self.num_pairs, self.vocab_size // 2
        distinct = lambda low, high: np.argsort(rng.random((n, high - low)), axis=1)[:, :pairs]
        keys = 1 + distinct(1, half)  # [n, N]
        values = half + distinct(half, self.vocab_size)  # [n, N]
        context = 2 * pairs
        slots = (self.length - context) // 2  # query positions context + 2g, g < slots
        weights = np.arange(1, slots + 1, dtype=np.float64) ** (self.power_a - 1)
        gaps = np.stack(
            [rng.choice(slots, pairs, replace=False, p=weights / weights.sum()) for _ in range(n)]
        )  # [n, N]
        inputs = rng.integers(1, self.vocab_size, (n, self.length)).astype(np.int32)  # filler
        if not self.random_fill:
            inputs[:] = 0
        inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
        rows, where = np.arange(n)[:, None], context + 2 * gaps  # [n, N] query positions
        inputs[rows, where] = keys
        targets = np.zeros((n, self.length), np.int32)
        targets[rows, where] = values
        mask = np.zeros((n, self.length), np.float32)
        mask[rows, where] = 1.0
        return inputs, targets, mask


@dataclasses.dataclass(frozen=True)
class SelectiveCopy(TokenOutputs, TokenClassificationLoss, StreamTask):
    """Selective copying (Gu & Dao 2023, "Mamba", sec. 3.1 and Table 1): N tokens at random
    positions among blanks, to be emitted in order after the region.

    Tokens: 0 blank, 1 .. num_symbols the data, num_symbols + 1 the marker. With R = length and
    N = copy_length each sequence has T = R + N steps:

        inputs   a region of R steps: N data tokens at random distinct positions, blanks elsewhere
                 | marker x N
        targets  0 x R | the N data tokens in the order they appeared
        mask     0 x R | 1 x N

    Unlike the copy task the positions vary, so a time-invariant recurrence (a fixed
    convolution) cannot know where to look: the paper's S4 scores 18.3%, Mamba 99.8%. Guessing
    scores 1 / num_symbols.
    """

    batch_size: int = 32
    seed: int = 0
    num_symbols: int = 16
    copy_length: int = 16
    length: int = 64
    """R: the region the data tokens are scattered in."""
    num_eval: int = 512

    def __post_init__(self) -> None:
        require_at_least(self, num_symbols=1, copy_length=1)
        if self.length < self.copy_length:
            raise ConfigError(
                f"task.length (the region) must hold copy_length {self.copy_length} tokens, "
                f"got {self.length}"
            )

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 2

    @property
    def marker(self) -> int:
        return self.num_symbols + 1

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        region, count = self.length, self.copy_length
        where = np.sort(np.argsort(rng.random((n, region)), axis=1)[:, :count], axis=1)  # [n, N]
        data = rng.integers(1, self.num_symbols + 1, (n, count)).astype(np.int32)
        inputs = np.zeros((n, region + count), np.int32)
        inputs[np.arange(n)[:, None], where] = data
        inputs[:, region:] = self.marker
        targets = np.zeros_like(inputs)
        targets[:, region:] = data
        mask = np.zeros(inputs.shape, np.float32)
        mask[:, region:] = 1.0
        return inputs, targets, mask


@dataclasses.dataclass(frozen=True)
class InductionHeads(TokenOutputs, TokenClassificationLoss, StreamTask):
    """Induction heads (Olsson et al. 2022; Gu & Dao 2023, "Mamba", Table 2): after the special
    token, recall the token that followed its earlier occurrence.

    Tokens: 0 .. num_symbols - 1 random symbols, num_symbols the special token. Each sequence
    of `length` steps holds the special token exactly twice: at a random position p
    (0 <= p <= length - 3), followed by the answer at p + 1, and at the last position. The
    target at the last position is the answer, and only that position is scored. Guessing
    scores 1 / num_symbols. The paper trains at length 256 and tests at other lengths: train
    on one instance and evaluate the parameters on an instance with another `length` (the same
    seed and symbols), as experiments/recall.py does.
    """

    batch_size: int = 32
    seed: int = 0
    num_symbols: int = 16
    length: int = 64
    num_eval: int = 512

    def __post_init__(self) -> None:
        require_at_least(self, num_symbols=1, length=3)

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 1

    @property
    def special(self) -> int:
        return self.num_symbols

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        inputs = rng.integers(0, self.num_symbols, (n, self.length)).astype(np.int32)
        first = rng.integers(0, self.length - 2, n)  # p: the special token, then the answer
        rows = np.arange(n)
        inputs[rows, first] = self.special
        inputs[:, -1] = self.special
        targets = np.zeros_like(inputs)
        targets[:, -1] = inputs[rows, first + 1]
        mask = np.zeros(inputs.shape, np.float32)
        mask[:, -1] = 1.0
        return inputs, targets, mask
