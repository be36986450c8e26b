"""Masked language modelling (BERT): restore tokens hidden in a sequence, seen from both sides.

Legend: b batch, t time (tokens), v the language's vocabulary (its `vocab_size`). The token
streams are those of the next-token tasks (MarkovLanguage, TextFile): a masked task is that
task with its batches corrupted, and with the same fields plus `mask_rate`. The token id v is
[MASK], so the model's vocabulary is v + 1.

In each sequence k = max(1, round(mask_rate * t)) positions are chosen uniformly without
replacement (Devlin et al. 2019). Each chosen token is replaced by [MASK] with probability
0.8, by a token drawn uniformly from the v symbols (possibly itself) with probability 0.1,
and left as it is with probability 0.1, so that the model must also check tokens it is not
told are hidden. inputs [n, t] int32 = the corrupted tokens; targets [n, t] int32 = the
tokens before corruption (the next-token task's inputs); mask [n, t] = 1 exactly at the
chosen positions. The model outputs logits [b, t, v + 1]: v + 1, so that the output layer
may be the transposed input embedding. [MASK] is never a target, so the loss drops its logit
and scores the softmax over the v symbols: the softmax cross-entropy over the chosen
positions, with "accuracy", "bits_per_char" and "perplexity" on them, comparable with the
next-token task's. A Markov language's entropy_rate_bits is not the floor here: a token seen
from both sides is more predictable than from its past alone.
"""

import dataclasses

import jax
import numpy as np

from arch.errors import ConfigError
from train.tasks.base import SPLITS, Batch, DataPosition, Split
from train.tasks.language import MarkovLanguage, TextFile

# of the chosen tokens: 0.8 become [MASK], 0.1 a random token, the other 0.1 stay as they are
MASK_PROBABILITY = 0.8
RANDOM_PROBABILITY = 0.1


def corrupt(
    rng: np.random.Generator, tokens: np.ndarray, vocab_size: int, mask_rate: float
) -> Split:
    """tokens [n, t] -> (inputs [n, t] int32, targets [n, t] int32, mask [n, t] float32):
    BERT's corruption of max(1, round(mask_rate * t)) positions per sequence; [MASK] = v."""
    n, length = tokens.shape
    chosen_count = max(1, round(mask_rate * length))
    # the first k of a random permutation of each row's positions: k distinct positions
    order = np.argsort(rng.random((n, length)), axis=1)  # [n, t]
    chosen = np.zeros((n, length), bool)
    np.put_along_axis(chosen, order[:, :chosen_count], True, axis=1)
    draw = rng.random((n, length))  # [n, t]: which corruption, used at chosen positions only
    random_tokens = rng.integers(0, vocab_size, (n, length))  # [n, t]
    inputs = np.where(chosen & (draw < MASK_PROBABILITY), vocab_size, tokens)
    replaced = chosen & (draw >= MASK_PROBABILITY) & (draw < MASK_PROBABILITY + RANDOM_PROBABILITY)
    inputs = np.where(replaced, random_tokens, inputs)
    return inputs.astype(np.int32), tokens.astype(np.int32), chosen.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class MaskedLanguageModelling:
    """Mixin over a next-token language task: its token windows, corrupted as BERT's.

    The language task's `vocab_size` stays the language's v; the model's is v + 1 (see the
    module's docstring). The corruption draws from generators of its own, seeded by (seed,
    epoch, index) for a training batch and by (seed, split) for an evaluation set, so the
    targets are exactly the tokens the next-token task gives at the same position.
    """

    mask_rate: float = 0.15
    """Fraction of each sequence's positions to predict (at least one position)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.mask_rate <= 1:
            raise ConfigError(f"task.mask_rate must be in (0, 1], got {self.mask_rate}")

    @property
    def mask_token(self) -> int:
        """The id of [MASK]: the first id after the language's symbols."""
        return self.vocab_size

    @property
    def num_outputs(self) -> int:
        return self.vocab_size + 1

    @property
    def model_fields(self) -> dict[str, int]:
        return {"num_outputs": self.vocab_size + 1, "vocab_size": self.vocab_size + 1}

    def output_shape(self, batch: Batch) -> tuple[int, ...]:
        return (*batch["targets"].shape, self.vocab_size + 1)  # [b, t, v + 1]

    def load(self) -> dict[str, Split]:
        data = super().load()
        return {
            split: corrupt(
                np.random.default_rng([self.seed, 3, i]),
                data[split][0],
                self.vocab_size,
                self.mask_rate,
            )
            for i, split in enumerate(SPLITS)
        }

    def train_batch(self, position: DataPosition) -> Batch:
        tokens = super().train_batch(position)["inputs"]  # [b, t]
        rng = np.random.default_rng([self.seed, 2, position.epoch, position.index])
        inputs, targets, mask = corrupt(rng, tokens, self.vocab_size, self.mask_rate)
        return {"inputs": inputs, "targets": targets, "mask": mask}

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The language task's loss on the logits of the v symbols: [MASK]'s is dropped."""
        return super().loss(outputs[..., : self.vocab_size], batch)


@dataclasses.dataclass(frozen=True)
class MaskedMarkovLanguage(MaskedLanguageModelling, MarkovLanguage):
    """Masked language model on the Markov language: BERT-corrupted windows of `markov`."""


@dataclasses.dataclass(frozen=True)
class MaskedTextFile(MaskedLanguageModelling, TextFile):
    """Masked language model on the bytes of a text file: BERT-corrupted windows of `text`."""
