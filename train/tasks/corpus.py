"""Skip-gram batches from a generated corpus with planted relations (gender, age, group).

Legend: b batch, k negatives, v vocabulary, e entities, s slots (words) of a sentence.
inputs int32 [b, 2 + k] = (center, context, k negatives), targets float32 [b, 1 + k] =
(1, 0, ..., 0), mask float32 [b]. The model outputs logits [b, 1 + k]; the loss is the
skip-gram negative-sampling objective (see SkipGramLoss).

The language: 24 entity words on a grid of three attributes, group (royal, common, family,
kin, grand, horse) x gender (male, female) x age (adult, young): king, queen, prince, princess,
man, woman, boy, girl, ... Every sentence names one entity (uniformly drawn) and `markers`
marker words for each attribute (he / she ..., works / plays ..., crown / village ...), each
marker drawn from the entity's own value of that attribute with probability 1 - noise and from
another value otherwise, plus `fillers` filler words (the, a, ...); then the sentence's words
are shuffled. Marker sets are disjoint, so for an entity w and a context word c that marks
attribute A, P(c | w) depends on A(w) alone: PMI(w, c) = f_A(A(w), c), a sum over the
attributes. SGNS fits v_w . u_c = PMI(w, c) - log k, so v_w = sum_A g_A(A(w)) + const fits,
and w_queen - w_king = w_woman - w_man: analogies are planted, not hoped for.
"""

import dataclasses
import functools
import itertools
from typing import Any

import jax
import numpy as np
import optax

from arch.errors import ConfigError
from train import losses
from train.tasks.base import Batch, Split, StreamTask, require_at_least
from train.tasks.language import inverse_cdf

ATTRIBUTES = ("group", "gender", "age")
GROUPS = ("royal", "common", "family", "kin", "grand", "horse")
GENDERS = ("male", "female")
AGES = ("adult", "young")
VALUES = {"group": GROUPS, "gender": GENDERS, "age": AGES}
# per group: (male adult, female adult, male young, female young)
ENTITIES = {
    "royal": ("king", "queen", "prince", "princess"),
    "common": ("man", "woman", "boy", "girl"),
    "family": ("father", "mother", "son", "daughter"),
    "kin": ("uncle", "aunt", "nephew", "niece"),
    "grand": ("grandfather", "grandmother", "grandson", "granddaughter"),
    "horse": ("stallion", "mare", "colt", "filly"),
}
MARKERS = {
    "gender": {
        "male": ("he", "him", "his", "himself"),
        "female": ("she", "her", "hers", "herself"),
    },
    "age": {
        "adult": ("works", "married", "tall", "drives"),
        "young": ("plays", "school", "toys", "small"),
    },
    "group": {
        "royal": ("crown", "throne", "palace", "reign"),
        "common": ("village", "street", "market", "bread"),
        "family": ("home", "kitchen", "dinner", "table"),
        "kin": ("visit", "holiday", "letter", "cousins"),
        "grand": ("garden", "stories", "pension", "armchair"),
        "horse": ("field", "saddle", "hay", "gallop"),
    },
}
FILLERS = ("the", "a", "and", "of", "to", "in", "was", "with")


def zipf_weights(count: int) -> np.ndarray:
    """P(rank r) proportional to 1 / (r + 1) over `count` words: word frequencies differ."""
    weights = 1.0 / np.arange(1, count + 1)
    return weights / weights.sum()


class SkipGramLoss:
    """SGNS: -log sigma(s_context) - sum_i log sigma(-s_negative_i), averaged over the pairs.

    This is binary cross-entropy of the logits [b, 1 + k] against (1, 0, ..., 0), summed over
    the 1 + k terms (Mikolov et al. 2013's objective, negated). "accuracy" is the fraction of
    pairs whose true context scores strictly above all k negatives (chance 1 / (1 + k)).
    """

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        targets, mask = batch["targets"], batch["mask"]  # [b, 1 + k], [b]
        per_term = optax.sigmoid_binary_cross_entropy(outputs.astype("float32"), targets)
        loss = losses.masked_mean(per_term.sum(axis=-1), mask)  # [b] -> scalar
        ranked_first = outputs[:, 0] > outputs[:, 1:].max(axis=-1)  # [b]
        return loss, {"accuracy": losses.masked_mean(ranked_first, mask)}


@dataclasses.dataclass(frozen=True)
class PlantedCorpus(SkipGramLoss, StreamTask):
    """Skip-gram pairs of a generated corpus with planted analogies (king - man + woman = queen).

    Its co-occurrences plant gender, age and group relations; `analogies` lists the planted
    quadruples per relation kind, `vocabulary` names the word ids.

    The language itself is fixed (no seed); `seed` draws the sentences, pairs and negatives.
    Each example is one fresh sentence: a center position, a context position at most
    `window` words away inside the sentence, and `num_negatives` words drawn i.i.d. from the
    unigram distribution raised to 3/4 (`noise_distribution`); a negative may equal the true
    context, as in the objective's expectation (word2vec's C code skips such draws).
    """

    batch_size: int = 256
    seed: int = 0
    num_negatives: int = 5
    window: int = 4
    """Largest distance between the center and the context word, in words."""
    markers: int = 2
    """Marker words per attribute in each sentence."""
    fillers: int = 2
    """Filler words (the, a, ...) in each sentence: co-occurrence with every entity alike."""
    noise: float = 0.2
    """Probability that a marker comes from another value of its attribute than the entity's."""
    num_eval: int = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, num_negatives=1, window=1, markers=1, fillers=0, num_eval=1)
        if not 0 <= self.noise < 1:
            raise ConfigError(f"task.noise must be in [0, 1), got {self.noise}")

    @functools.cached_property
    def vocabulary(self) -> tuple[str, ...]:
        """id -> word: the entities first, then the markers (gender, age, group), the fillers."""
        entities = [word for group in GROUPS for word in ENTITIES[group]]
        markers = [
            word
            for attribute in ("gender", "age", "group")
            for words in MARKERS[attribute].values()
            for word in words
        ]
        return tuple(entities + markers + list(FILLERS))

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def word_id(self, word: str) -> int:
        return self.vocabulary.index(word)

    @functools.cached_property
    def entity_attributes(self) -> np.ndarray:
        """int [e, 3]: each entity's (group, gender, age) value indices; entity id = row."""
        rows = [
            (g, slot % 2, slot // 2) for g in range(len(GROUPS)) for slot in range(4)
        ]  # ENTITIES orders each group as (male adult, female adult, male young, female young)
        return np.array(rows, np.int64)

    def entity(self, group: int, gender: int, age: int) -> int:
        """The id of the entity with these value indices."""
        return group * 4 + age * 2 + gender

    @functools.cached_property
    def analogies(self) -> dict[str, np.ndarray]:
        """Planted quadruples per relation kind: int32 [q, 4] rows (a, b, c, d), read "b is to
        a as c is to d", so that d = a - b + c. The kind is the attribute in which b and a
        (and c and d) differ: ("queen", "king", "man", "woman") is gender; ("king", "man",
        "woman", "queen") is group. Every entity pair differing in one attribute is (b, a);
        every other entity with b's value of that attribute is c."""
        attributes = self.entity_attributes
        quadruples: dict[str, list[tuple[int, int, int, int]]] = {}
        for column, kind in enumerate(ATTRIBUTES):
            rows = []
            for b, c in itertools.permutations(range(len(attributes)), 2):
                if attributes[b, column] != attributes[c, column]:
                    continue
                for value in range(len(VALUES[kind])):
                    if value == attributes[b, column]:
                        continue
                    a_values, d_values = attributes[b].copy(), attributes[c].copy()
                    a_values[column] = d_values[column] = value
                    rows.append((self.entity(*a_values), b, c, self.entity(*d_values)))
            quadruples[kind] = rows
        return {kind: np.array(rows, np.int32) for kind, rows in quadruples.items()}

    @functools.cached_property
    def slot_distributions(self) -> np.ndarray:
        """P(word | entity, slot) float64 [e, s, v]: the sentence generator's whole law.

        Slot 0 is the entity; then `markers` slots per attribute (gender, age, group), each a
        mixture of the value sets' Zipf-weighted words (the entity's own value with
        probability 1 - noise, each other value with noise / (values - 1)); then the fillers.
        """
        vocab, attributes = self.vocabulary, self.entity_attributes
        num_entities = len(attributes)
        slots = [np.eye(num_entities, len(vocab))]  # the entity itself [e, v]
        for attribute in ("gender", "age", "group"):
            values = VALUES[attribute]
            table = np.zeros((len(values), len(vocab)))  # P(word | value) [values, v]
            for i, value in enumerate(values):
                words = MARKERS[attribute][value]
                table[i, [vocab.index(w) for w in words]] = zipf_weights(len(words))
            own = attributes[:, ATTRIBUTES.index(attribute)]  # [e]
            mix = np.full((num_entities, len(values)), self.noise / (len(values) - 1))
            mix[np.arange(num_entities), own] = 1 - self.noise  # P(value | entity) [e, values]
            slots += [mix @ table] * self.markers
        filler = np.zeros(len(vocab))
        filler[[vocab.index(w) for w in FILLERS]] = zipf_weights(len(FILLERS))
        slots += [np.broadcast_to(filler, (num_entities, len(vocab)))] * self.fillers
        return np.stack(slots, axis=1)  # [e, s, v]

    @functools.cached_property
    def slot_cdf(self) -> np.ndarray:
        """Cumulative P(word | entity, slot) over the vocabulary [e, s, v], computed once."""
        return np.cumsum(self.slot_distributions, axis=-1)

    @property
    def sentence_length(self) -> int:
        return 1 + 3 * self.markers + self.fillers

    @functools.cached_property
    def unigram(self) -> np.ndarray:
        """The exact word frequencies of the corpus [v]: slots averaged, entities uniform."""
        return self.slot_distributions.mean(axis=(0, 1))

    @functools.cached_property
    def noise_distribution(self) -> np.ndarray:
        """P_n(w) = U(w)^(3/4) / Z [v]: word2vec's negative-sampling distribution."""
        smoothed = self.unigram**0.75
        return smoothed / smoothed.sum()

    def sentences(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n sentences int32 [n, s]: an entity, its markers and fillers, shuffled."""
        entities = rng.integers(0, len(self.entity_attributes), n)  # [n]
        cdf = self.slot_cdf[entities]  # [n, s, v]
        length = self.sentence_length
        flat = cdf.reshape(n * length, -1)  # [n * s, v]
        words = inverse_cdf(rng, flat, n * length).reshape(n, length)  # [n, s]
        return rng.permuted(words, axis=1).astype(np.int32)

    @functools.cached_property
    def context_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """For each center position i: the valid context positions j (0 <= j < s, j != i,
        |j - i| <= window), padded, int [s, 2 * window], and how many there are, int [s]."""
        length = self.sentence_length
        valid = [
            [j for j in range(length) if j != i and abs(j - i) <= self.window]
            for i in range(length)
        ]
        table = np.zeros((length, 2 * self.window), np.int64)
        for i, positions in enumerate(valid):
            table[i, : len(positions)] = positions
        return table, np.array([len(p) for p in valid])

    def pair_positions(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(center, context) positions int [n] each: the center uniform over the sentence,
        the context uniform over the positions within `window` of it."""
        table, counts = self.context_offsets
        center = rng.integers(0, self.sentence_length, n)
        choice = np.floor(rng.random(n) * counts[center]).astype(np.int64)
        return center, table[center, choice]

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        sentences = self.sentences(rng, n)  # [n, s]
        center, context = self.pair_positions(rng, n)
        cdf = np.cumsum(self.noise_distribution)[None]  # [1, v]
        k = self.num_negatives
        negatives = inverse_cdf(rng, cdf, n * k).reshape(n, k)  # w_i ~ P_n [n, k]
        rows = np.arange(n)
        inputs = np.concatenate(
            [sentences[rows, center, None], sentences[rows, context, None], negatives], axis=1
        ).astype(np.int32)  # [n, 2 + k]
        targets = np.zeros((n, 1 + k), np.float32)
        targets[:, 0] = 1.0
        return inputs, targets, np.ones(n, np.float32)

    @property
    def num_outputs(self) -> int:
        return 1 + self.num_negatives

    @property
    def model_fields(self) -> dict[str, Any]:
        return {"num_outputs": self.num_outputs, "vocab_size": self.vocab_size}
