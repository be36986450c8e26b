"""Sequence-to-sequence translation of a tiny rule-based language pair.

Legend: b batch, s source positions, t target positions (s + 1: the words and EOS), v
vocabulary. Tokens: 0 PAD, 1 BOS, 2 EOS, then the source words, then the target words, in one
vocabulary shared by both sides (v = 3 + 2 * num_words), so one embedding table serves an
encoder-decoder that shares it (EncoderDecoderTransformer, RNNSeq2Seq by default).

Batches: inputs {"source" [b, s] (right-padded with PAD), "target" [b, t] (the decoder's input:
BOS + the translation, padded), "source_mask" [b, s] (1 real, 0 pad)}; targets [b, t] (the
translation + EOS, padded); mask [b, t] (1 on the words and the EOS). The model outputs logits
[b, t, v]; loss: softmax cross-entropy over the masked steps; metrics "accuracy" (per token)
and "sequence_accuracy" (whole targets right), both teacher-forced. `decoded_metrics` scores
free-running outputs (greedy or beam search, `decode`): per-token accuracy, exact match and
corpus BLEU (sacrebleu, tokens as space-separated words, tokenize="none").
"""

import dataclasses
import functools
from typing import Any, Literal

import flax.linen as nn
import jax
import numpy as np
import sacrebleu

from arch.decoding import translate
from arch.errors import ConfigError
from train.tasks.base import Split, StreamTask, require_at_least
from train.tasks.sequences import TokenClassificationLoss, TokenOutputs

PAD, BOS, EOS = 0, 1, 2
FIRST_WORD = 3
Order = Literal["reverse", "copy", "swap_pairs"]


def reorder(words: np.ndarray, lengths: np.ndarray, order: Order) -> np.ndarray:
    """Target positions' source indices [n, s]: position i of a sequence of length L takes
    source word L - 1 - i ("reverse"), i ("copy"), or its pair's other word ("swap_pairs": 1 0
    3 2 ..., a last odd word stays). Indices at padded positions are 0 (they are masked)."""
    n, width = words.shape
    positions = np.broadcast_to(np.arange(width), (n, width))
    if order == "reverse":
        index = lengths[:, None] - 1 - positions
    elif order == "copy":
        index = positions
    elif order == "swap_pairs":
        partner = positions ^ 1  # 0 <-> 1, 2 <-> 3, ...
        index = np.where(partner < lengths[:, None], partner, positions)
    else:
        raise ConfigError(f"unknown order {order!r}; choose reverse, copy or swap_pairs")
    return np.where(positions < lengths[:, None], index, 0)


@dataclasses.dataclass(frozen=True)
class Translation(TokenOutputs, TokenClassificationLoss, StreamTask):
    """Translate a rule-based language: a word-for-word lexicon and a reordering (reversal).

    Source sentences are num_words words drawn uniformly, of lengths uniform in [min_length,
    max_length]; the target maps each word through a fixed random bijection (the lexicon,
    drawn from `lexicon_seed`) and reorders the words ("reverse": the last word first, as
    between opposite word orders; "copy"; "swap_pairs": adjacent words swap, like
    adjective-noun order). Every target word depends on one source word at a position set by
    the length, so a model must route each word, not memorise a bag of them. `length_split`
    gives fixed sets at one source length, padded to max_length (the training shapes).
    """

    batch_size: int = 32
    seed: int = 0
    num_words: int = 20
    """Words per language."""
    min_length: int = 3
    max_length: int = 20
    """Source lengths are uniform in [min_length, max_length]; batches are padded to max."""
    order: Order = "reverse"
    lexicon_seed: int = 0
    """Seed of the language pair itself (the lexicon); `seed` only draws the sentences."""
    num_eval: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, num_words=2, min_length=1, num_eval=1)
        if self.max_length < self.min_length:
            raise ConfigError(
                f"task.max_length {self.max_length} is below task.min_length {self.min_length}"
            )
        reorder(np.zeros((1, 1), np.int64), np.ones(1, np.int64), self.order)  # a valid order

    @property
    def vocab_size(self) -> int:
        return FIRST_WORD + 2 * self.num_words

    @property
    def target_length(self) -> int:
        """t: the longest translation and its EOS."""
        return self.max_length + 1

    @functools.cached_property
    def lexicon(self) -> np.ndarray:
        """Target token of each source word [num_words]: a bijection."""
        permutation = np.random.default_rng(self.lexicon_seed).permutation(self.num_words)
        return FIRST_WORD + self.num_words + permutation

    def sentences(self, rng: np.random.Generator, lengths: np.ndarray) -> Split:
        """Pairs for the source lengths [n] -> ({"source", "target", "source_mask"}, targets,
        mask), padded to max_length words."""
        n, width = len(lengths), self.max_length
        real = np.arange(width) < lengths[:, None]  # [n, s]
        words = rng.integers(0, self.num_words, (n, width))  # [n, s]
        source = np.where(real, FIRST_WORD + words, PAD).astype(np.int32)
        index = reorder(words, lengths, self.order)
        translated = np.where(real, self.lexicon[np.take_along_axis(words, index, axis=1)], PAD)
        targets = np.full((n, width + 1), PAD, np.int32)  # [n, t]
        targets[:, :width] = translated
        targets[np.arange(n), lengths] = EOS
        decoder_inputs = np.concatenate(
            [np.full((n, 1), BOS, np.int32), targets[:, :-1]], axis=1
        )  # BOS + targets shifted right: [n, t]
        decoder_inputs = np.where(decoder_inputs == EOS, PAD, decoder_inputs)  # after the end
        mask = (np.arange(width + 1) <= lengths[:, None]).astype(np.float32)  # words + EOS
        inputs = {"source": source, "target": decoder_inputs, "source_mask": real}
        return inputs, targets, mask

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        lengths = rng.integers(self.min_length, self.max_length + 1, n)
        return self.sentences(rng, lengths)

    def length_split(self, length: int, n: int | None = None) -> Split:
        """A fixed set of n (num_eval) pairs whose sources all have `length` words."""
        if not 1 <= length <= self.max_length:
            raise ConfigError(f"length must be in [1, max_length {self.max_length}], got {length}")
        rng = np.random.default_rng([self.seed, 2, length])
        return self.sentences(rng, np.full(n or self.num_eval, length))

    def decode(
        self,
        model: nn.Module,
        variables: dict,
        inputs: dict[str, np.ndarray],
        beam_width: int = 1,
        length_penalty: float = 0.0,
    ) -> np.ndarray:
        """The model's free-running translations [n, t] of inputs' sources (greedy search
        when beam_width is 1, else beam search); PAD after the EOS."""
        sequences, _ = translate(
            model,
            variables,
            inputs["source"],
            inputs["source_mask"],
            self.target_length,
            BOS,
            EOS,
            PAD,
            beam_width,
            length_penalty,
        )
        return np.asarray(jax.device_get(sequences))

    def decoded_metrics(
        self, predictions: np.ndarray, targets: np.ndarray, mask: np.ndarray
    ) -> dict[str, Any]:
        """Free-running outputs [n, t] against targets [n, t] over the masked steps (words and
        EOS): "token_accuracy", "exact_match" (every masked step right), "bleu" (corpus BLEU,
        0-100, of the words before the first EOS)."""
        mask = mask > 0
        right = (predictions == targets) | ~mask
        return {
            "token_accuracy": float(np.sum((predictions == targets) & mask) / np.sum(mask)),
            "exact_match": float(np.mean(np.all(right, axis=1))),
            "bleu": corpus_bleu(predictions, targets),
        }


def words_of(tokens: np.ndarray) -> str:
    """The tokens before the first EOS (PAD and BOS dropped) as space-separated words."""
    ends = np.flatnonzero(tokens == EOS)
    kept = tokens[: ends[0]] if len(ends) else tokens
    return " ".join(f"w{int(t)}" for t in kept if t >= FIRST_WORD)


def corpus_bleu(predictions: np.ndarray, references: np.ndarray) -> float:
    """sacrebleu's corpus BLEU (0-100) of token rows [n, t], one reference each."""
    hypotheses = [words_of(row) for row in predictions]
    refs = [words_of(row) for row in references]
    return float(sacrebleu.corpus_bleu(hypotheses, [refs], tokenize="none").score)
