"""Next-token language modelling: a generated Markov language of known entropy, and bytes of a file.

Legend: b batch, t time (tokens), v vocabulary, c contexts (v ** order). inputs [n, t] int32
tokens, targets [n, t] int32 = the next token at every step, mask [n, t]. The model outputs
logits [b, t, v]; the loss is the softmax cross-entropy over the masked tokens (nats), with the
metrics "accuracy", "bits_per_char" (= loss / ln 2) and "perplexity" (= exp(loss)).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from arch.errors import ConfigError
from train.tasks.base import (
    SPLITS,
    Batch,
    ClassificationLoss,
    DataPosition,
    Split,
    StreamTask,
    read_input_file,
    require_at_least,
)
from train.tasks.sequences import TokenOutputs
from train.tokenize import ByteTokenizer


class LanguageModelLoss(TokenOutputs, ClassificationLoss):
    """Softmax cross-entropy of the next token over masked steps, in nats and bits per char.

    Perplexity is exp of the mean loss: after metrics are averaged over batches (weighted by
    token counts), `finalize_metrics` recomputes it from the averaged loss.
    """

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        loss, metrics = super().loss(outputs, batch)
        return loss, {**metrics, "bits_per_char": loss / math.log(2), "perplexity": jnp.exp(loss)}

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return {**metrics, "perplexity": math.exp(metrics["loss"])}


class MarkovChain:
    """An order-k Markov chain over v symbols, with its stationary distribution and entropy rate.

    `transitions` [c, v] holds P(next | context) for the c = v ** order contexts; a context
    (x_1, ..., x_k), oldest first, has index sum_i x_i v ** (k - i).
    """

    def __init__(self, transitions: np.ndarray, vocab_size: int, order: int) -> None:
        transitions = np.asarray(transitions, np.float64)
        if transitions.shape != (vocab_size**order, vocab_size):
            raise ConfigError(
                f"transitions must have shape [vocab_size ** order, vocab_size] = "
                f"{(vocab_size**order, vocab_size)}, got {transitions.shape}"
            )
        if np.any(transitions < 0) or not np.allclose(transitions.sum(axis=1), 1.0):
            raise ConfigError("each row of transitions must be a probability distribution")
        self.transitions = transitions / transitions.sum(axis=1, keepdims=True)
        self.vocab_size, self.order = vocab_size, order
        self.stationary = stationary_distribution(self.transitions, vocab_size, order)

    @classmethod
    def random(cls, vocab_size: int, order: int, concentration: float, seed: int) -> "MarkovChain":
        """Every context's next-symbol distribution drawn from a symmetric Dirichlet."""
        rng = np.random.default_rng(seed)
        alpha = np.full(vocab_size, concentration)
        return cls(rng.dirichlet(alpha, size=vocab_size**order), vocab_size, order)

    @functools.cached_property
    def entropy_rate_bits(self) -> float:
        """H = sum_s pi(s) H(P(. | s)) in bits per symbol, with 0 log 0 = 0."""
        p = self.transitions
        surprisal = -np.log2(np.where(p > 0, p, 1.0))  # [c, v]
        return float(self.stationary @ np.sum(p * surprisal, axis=1))

    def next_context(self, context: np.ndarray, symbol: np.ndarray) -> np.ndarray:
        """(x_1, ..., x_k) then y -> (x_2, ..., x_k, y), as indices."""
        return (context * self.vocab_size) % (self.vocab_size**self.order) + symbol

    def surprisal_bits(self, tokens: np.ndarray, first: int) -> np.ndarray:
        """-log2 P(tokens[:, s] | the `order` tokens before it) for s >= first >= order:
        tokens [n, s_total] -> surprisals [n, s_total - first] in bits (e.g. to score samples
        under the true source)."""
        if first < self.order:
            raise ValueError(f"first must be >= order {self.order}, got {first}")
        steps = np.arange(first, tokens.shape[1])
        context = np.zeros((tokens.shape[0], len(steps)), np.int64)
        for i in range(self.order):  # oldest first: x_{s-k} ... x_{s-1}
            context = context * self.vocab_size + tokens[:, steps - self.order + i]
        return -np.log2(self.transitions[context, tokens[:, steps]])

    def sample(self, rng: np.random.Generator, n: int, steps: int) -> np.ndarray:
        """n stationary sequences [n, steps] int32 (steps >= order): the first `order` symbols
        are a context drawn from the stationary distribution, the rest follow the chain."""
        context = inverse_cdf(rng, np.cumsum(self.stationary)[None], n)  # [n]
        sequences = np.zeros((n, steps), np.int32)
        for i in range(self.order):  # the context's symbols, oldest first
            sequences[:, i] = context // self.vocab_size ** (self.order - 1 - i) % self.vocab_size
        cdf = np.cumsum(self.transitions, axis=1)  # [c, v]
        for t in range(self.order, steps):
            symbol = inverse_cdf(rng, cdf[context], n)  # y_t ~ P(. | x_{t-k} .. x_{t-1})
            sequences[:, t] = symbol
            context = self.next_context(context, symbol)
        return sequences


def inverse_cdf(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """n draws, one per row of cdf [n or 1, v] (cumulative probabilities): the index i with
    cdf[i - 1] <= u < cdf[i] for u ~ U(0, 1)."""
    u = rng.random((n, 1)) * cdf[:, -1:]  # scaled: rounding can leave the total below 1
    return np.minimum(np.sum(cdf <= u, axis=1), cdf.shape[1] - 1)


def stationary_distribution(
    transitions: np.ndarray, vocab_size: int, order: int, tolerance: float = 1e-13
) -> np.ndarray:
    """pi [c] with pi = pi M for the chain of contexts M (s -> next_context(s, y) w.p. P(y | s)).

    Power iteration on the lazy chain (M + I) / 2, which has the same stationary distribution
    and is aperiodic, so it converges from the uniform start even for a periodic chain.
    """
    contexts = vocab_size**order
    successor = (np.arange(contexts)[:, None] * vocab_size) % contexts + np.arange(vocab_size)
    pi = np.full(contexts, 1.0 / contexts)
    for _ in range(100_000):
        flow = np.bincount(successor.ravel(), (pi[:, None] * transitions).ravel(), contexts)
        new = 0.5 * (pi + flow)
        if np.abs(new - pi).sum() < tolerance:
            return new / new.sum()
        pi = new
    raise ConfigError(
        "the context chain did not converge to a stationary distribution; "
        "raise task.concentration (the chain mixes too slowly)"
    )


@dataclasses.dataclass(frozen=True)
class MarkovLanguage(LanguageModelLoss, StreamTask):
    """Generated language of known entropy: an order-k Markov chain (see entropy_rate_bits).

    Each of the vocab_size ** order contexts has a next-symbol distribution drawn once from
    Dirichlet(concentration) by a generator seeded with `source_seed` (the language; `seed`
    only draws the sequences). Sequences start in the stationary distribution. The exact
    entropy rate `entropy_rate_bits` is the best bits_per_char any model can reach; the
    targets of the first order - 1 steps are masked (mask 0), because their contexts reach
    before the sequence's start and even the true chain would score more than the entropy rate
    on them. Uniform guessing scores log2(vocab_size) bits per char.
    """

    batch_size: int = 32
    seed: int = 0
    vocab_size: int = 16
    order: int = 2
    """How many previous symbols the next one depends on."""
    concentration: float = 0.5
    """Dirichlet concentration of the transitions: smaller gives a more predictable language."""
    source_seed: int = 0
    """Seed of the language itself (its transition table)."""
    length: int = 128
    num_eval: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, vocab_size=2, order=1, length=self.order)
        if self.concentration <= 0:
            raise ConfigError(f"task.concentration must be > 0, got {self.concentration}")
        if self.vocab_size ** (self.order + 1) > 2**24:
            raise ConfigError(
                f"vocab_size ** (order + 1) = {self.vocab_size ** (self.order + 1)} transition "
                f"probabilities is too many (limit 2 ** 24); lower task.vocab_size or task.order"
            )

    @functools.cached_property
    def chain(self) -> MarkovChain:
        return MarkovChain.random(self.vocab_size, self.order, self.concentration, self.source_seed)

    @property
    def entropy_rate_bits(self) -> float:
        """The chain's exact entropy rate in bits per symbol: the floor of bits_per_char."""
        return self.chain.entropy_rate_bits

    def source_bits_per_char(self, split: str = "test") -> float:
        """The true source's own bits/char on a split's scored targets (mask 1): what a perfect
        model scores on this finite sample (close to, not equal to, the entropy rate)."""
        inputs, targets, mask = self.data[split]
        sequences = np.concatenate([inputs[:, :1], targets], axis=1)  # [n, t + 1]
        bits = self.chain.surprisal_bits(sequences, self.order)  # targets order - 1 ... t - 1
        scored = mask[:, self.order - 1 :]
        return float(np.sum(bits * scored) / np.sum(scored))

    def as_text(self, tokens: np.ndarray) -> str:
        """Tokens as letters a, b, c, ... (vocabularies up to 26), else numbers."""
        if self.vocab_size <= 26:
            return "".join(chr(ord("a") + int(t)) for t in tokens)
        return " ".join(str(int(t)) for t in tokens)

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        sequences = self.chain.sample(rng, n, self.length + 1)  # [n, t + 1]
        mask = np.ones((n, self.length), np.float32)  # [n, t]
        mask[:, : self.order - 1] = 0.0
        return sequences[:, :-1], sequences[:, 1:], mask


def evaluation_offsets(size: int, length: int, num_eval: int) -> np.ndarray:
    """Starts of up to `num_eval` non-overlapping windows of length + 1 tokens, evenly spaced
    over a region of `size` tokens: an evaluation split of a text or a token corpus."""
    count = (size - 1) // length  # non-overlapping windows that fit
    chosen = min(count, num_eval)
    return np.arange(chosen) * count // chosen * length


def training_offsets(task, position: DataPosition, size: int) -> np.ndarray:
    """Starts of the `task.batch_size` training windows of length + 1 tokens at `position`, in
    a region of `size` tokens: drawn by a generator seeded with (seed, epoch, index), so a
    batch is a pure function of its position (TextFile and the token corpus draw alike)."""
    rng = np.random.default_rng([task.seed, 0, position.epoch, position.index])
    return rng.integers(0, size - task.length, task.batch_size)


@dataclasses.dataclass(frozen=True)
class TextFile(LanguageModelLoss, StreamTask):
    """Byte-level language model on any plain-text file (--task.path), split into train/val/test.

    The file's bytes (vocabulary 256) are cut into three contiguous regions, train first, then
    validation (`validation_fraction` of the bytes) and test (`test_fraction`, the end).
    Training windows of length + 1 bytes (inputs and the next-byte targets) start at random
    offsets of the train region, drawn by a generator seeded with (seed, epoch, index). Each
    evaluation split (and "train", for the final report) is up to `num_eval` non-overlapping
    windows of its region, evenly spaced. The mask is all ones.
    """

    path: str = ""
    """The text file (read as bytes; nothing is downloaded)."""
    batch_size: int = 32
    seed: int = 0
    length: int = 128
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    num_eval: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("length", "num_eval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task.{name} must be >= 1, got {getattr(self, name)}")
        fractions = (self.validation_fraction, self.test_fraction)
        if min(fractions) <= 0 or sum(fractions) >= 1:
            raise ConfigError(
                f"task.validation_fraction and task.test_fraction must be > 0 with a sum below 1,"
                f" got {self.validation_fraction} and {self.test_fraction}"
            )

    @property
    def vocab_size(self) -> int:
        return 256

    @functools.cached_property
    def text(self) -> np.ndarray:
        """The file's bytes [N] uint8."""
        if not self.path:
            raise ConfigError("task text needs a plain-text file: pass --task.path FILE")
        return np.frombuffer(read_input_file(self.path, "--task.path"), np.uint8)

    @functools.cached_property
    def region_bounds(self) -> dict[str, tuple[int, int]]:
        """{split: (start, stop)}: byte offsets of the three contiguous, disjoint regions."""
        size = len(self.text)
        test = round(size * self.test_fraction)
        validation = round(size * self.validation_fraction)
        bounds = {
            "train": (0, size - validation - test),
            "validation": (size - validation - test, size - test),
            "test": (size - test, size),
        }
        for split, (start, stop) in bounds.items():
            if stop - start < self.length + 1:
                raise ConfigError(
                    f"{self.path}: the {split} region holds {stop - start} bytes of {size}, "
                    f"fewer than one window of task.length + 1 = {self.length + 1}; use a "
                    f"larger file, a smaller --task.length or larger fractions"
                )
        return bounds

    def region_bytes(self, split: str) -> bytes:
        """The bytes of `split`'s region (what `build-corpus` tokenises)."""
        start, stop = self.region_bounds[split]
        return self.text[start:stop].tobytes()

    @property
    def tokenizer(self) -> ByteTokenizer:
        """The text codec of prompts and samples: a token is one byte of the file."""
        return ByteTokenizer()

    def windows(self, split: str, offsets: np.ndarray) -> Split:
        """The windows of `split`'s region starting at `offsets` (relative to the region)."""
        start, _ = self.region_bounds[split]
        steps = start + offsets[:, None] + np.arange(self.length + 1)  # [n, t + 1]
        tokens = self.text[steps].astype(np.int32)
        return tokens[:, :-1], tokens[:, 1:], np.ones((len(offsets), self.length), np.float32)

    def load(self) -> dict[str, Split]:
        data = {}
        for split in SPLITS:
            start, stop = self.region_bounds[split]
            offsets = evaluation_offsets(stop - start, self.length, self.num_eval)
            data[split] = self.windows(split, offsets)
        return data

    def train_batch(self, position: DataPosition) -> Batch:
        start, stop = self.region_bounds["train"]
        offsets = training_offsets(self, position, stop - start)
        inputs, targets, mask = self.windows("train", offsets)
        return {"inputs": inputs, "targets": targets, "mask": mask}
