"""Masked language modelling: BERT's corruption of the next-token tasks' token streams."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from arch import RNNTagger
from arch.errors import ConfigError
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import TASKS, DataPosition, MarkovLanguage, TextFile
from train.tasks.masked import MaskedMarkovLanguage, MaskedTextFile, corrupt

SPLITS = ("train", "validation", "test")
POSITIONS = [DataPosition(0, 0), DataPosition(0, 1), DataPosition(3, 2)]


def masked_tasks(path) -> list[tuple]:
    """(masked task, the next-token task it corrupts) pairs."""
    markov = dict(vocab_size=6, order=2, length=32, num_eval=64)
    text = dict(path=str(path), length=16, num_eval=8)
    return [
        (MaskedMarkovLanguage(**markov), MarkovLanguage(**markov)),
        (MaskedTextFile(**text), TextFile(**text)),
    ]


def test_registered_with_the_fields_of_their_language_task_and_a_vocabulary_one_larger():
    assert TASKS["markov_mlm"] is MaskedMarkovLanguage and TASKS["text_mlm"] is MaskedTextFile
    for masked, plain in [(MaskedMarkovLanguage, MarkovLanguage), (MaskedTextFile, TextFile)]:
        names = [f.name for f in dataclasses.fields(masked)]
        assert names == [f.name for f in dataclasses.fields(plain)] + ["mask_rate"]
    markov, text = MaskedMarkovLanguage(vocab_size=16), MaskedTextFile()
    assert (markov.mask_token, text.mask_token) == (16, 256)  # [MASK] = the base vocabulary
    assert markov.model_fields == {"num_outputs": 17, "vocab_size": 17}
    assert text.model_fields == {"num_outputs": 257, "vocab_size": 257}
    batch = markov.train_batch(DataPosition())
    assert markov.output_shape(batch) == (32, 128, 17)


def test_targets_are_the_next_token_tasks_inputs_and_batches_a_function_of_the_position(
    text_file,
):
    for masked, plain in masked_tasks(text_file[0]):
        again = dataclasses.replace(masked)  # a fresh instance: nothing loaded is shared
        seen = []
        for position in POSITIONS:
            batch, tokens = masked.train_batch(position), plain.train_batch(position)["inputs"]
            np.testing.assert_array_equal(batch["targets"], tokens)
            for key, value in again.train_batch(position).items():
                np.testing.assert_array_equal(batch[key], value)
            assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
            assert batch["mask"].dtype == np.float32
            assert batch["inputs"].shape == batch["targets"].shape == batch["mask"].shape
            assert not any(np.array_equal(batch["mask"], s) for s in seen)  # new positions
            seen.append(batch["mask"])
        for split in SPLITS:
            np.testing.assert_array_equal(masked.data[split][1], plain.data[split][0])
            for x, y in zip(masked.data[split], again.data[split], strict=True):
                np.testing.assert_array_equal(x, y)
        assert not np.array_equal(masked.data["validation"][2], masked.data["test"][2])


def chosen_statistics(task: MaskedMarkovLanguage) -> dict[str, float]:
    """Fractions over an evaluation set: chosen positions, and among them [MASK], another
    token, the same token."""
    inputs, targets, mask = task.data["validation"]
    chosen = mask > 0
    return {
        "chosen": chosen.mean(),
        "masked": np.mean(inputs[chosen] == task.mask_token),
        "replaced": np.mean(
            (inputs[chosen] != targets[chosen]) & (inputs[chosen] < task.vocab_size)
        ),
        "kept": np.mean(inputs[chosen] == targets[chosen]),
    }


def test_fifteen_percent_chosen_of_which_80_10_10():
    task = MaskedMarkovLanguage(vocab_size=4, order=1, length=40, num_eval=4000)
    inputs, targets, mask = task.data["validation"]
    # round(0.15 * 40) = 6 positions in every sequence, spread uniformly over the positions
    np.testing.assert_array_equal(mask.sum(axis=1), 6)
    np.testing.assert_allclose(mask.mean(axis=0), 0.15, atol=0.025)
    stats = chosen_statistics(task)
    assert stats["chosen"] == 0.15
    # 80% [MASK]; 10% a uniform token, which is another token 3 times in 4 (v = 4); 10% kept
    assert stats["masked"] == pytest.approx(0.8, abs=0.01)
    assert stats["replaced"] == pytest.approx(0.1 * 3 / 4, abs=0.006)
    assert stats["kept"] == pytest.approx(0.1 + 0.1 / 4, abs=0.006)
    # the random tokens are uniform: each of the 4 symbols about equally often
    replaced = inputs[(mask > 0) & (inputs != targets) & (inputs < 4)]
    np.testing.assert_allclose(np.bincount(replaced, minlength=4) / len(replaced), 0.25, atol=0.04)
    # outside the chosen positions every token is the original and [MASK] never appears
    np.testing.assert_array_equal(inputs[mask == 0], targets[mask == 0])
    assert np.all((inputs == task.mask_token) <= (mask > 0))
    assert targets.max() < task.mask_token


@pytest.mark.parametrize(("length", "rate", "count"), [(2, 0.15, 1), (7, 0.15, 1), (128, 0.15, 19)])
def test_at_least_one_position_per_sequence_and_round_rate_times_length(length, rate, count):
    tokens = np.zeros((50, length), np.int32)
    _, _, mask = corrupt(np.random.default_rng(0), tokens, 4, rate)
    np.testing.assert_array_equal(mask.sum(axis=1), count)
    assert abs(count / length - rate) <= 0.5 / length or count == 1


def test_loss_by_hand_on_the_chosen_positions_ignoring_the_mask_logit():
    task = MaskedMarkovLanguage(vocab_size=2, order=1)
    # v + 1 = 3 logits: [a, b, mask]; the mask logit is huge and must not count
    logits = np.zeros((1, 4, 3), np.float32)
    logits[0, 0] = [0.0, math.log(3.0), 50.0]  # p(1) = 3/4, target 1
    logits[0, 1] = [0.0, math.log(3.0), 50.0]  # p(0) = 1/4, target 0
    logits[0, 2:] = [9.0, -9.0, 50.0]  # wrong for target 1 but not chosen
    batch = {
        "inputs": np.array([[2, 1, 1, 1]], np.int32),
        "targets": np.array([[1, 0, 1, 1]], np.int32),
        "mask": np.array([[1.0, 1.0, 0.0, 0.0]], np.float32),
    }
    loss, metrics = jax.jit(task.loss)(logits, batch)
    # (-ln 3/4 - ln 1/4) / 2 nats = (4 - log2 3) / 2 bits; one of the two chosen right
    assert float(loss) == pytest.approx(0.5 * math.log(16 / 3), rel=1e-6)
    assert float(metrics["bits_per_char"]) == pytest.approx((4 - math.log2(3)) / 2, rel=1e-6)
    assert float(metrics["accuracy"]) == 0.5
    assert task.finalize_metrics({"loss": float(loss)})["perplexity"] == pytest.approx(
        4 / math.sqrt(3), rel=1e-6
    )


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_rejects_a_mask_rate_outside_zero_to_one(rate):
    with pytest.raises(ConfigError, match="mask_rate must be in"):
        MaskedMarkovLanguage(mask_rate=rate)
    with pytest.raises(ConfigError, match="mask_rate must be in"):
        MaskedTextFile(mask_rate=rate)


def test_a_bidirectional_tagger_restores_masked_tokens_better_than_the_past_predicts_them():
    task = MaskedMarkovLanguage(
        vocab_size=4, order=1, concentration=0.2, length=16, mask_rate=0.25, num_eval=256
    )
    run = RunConfig.quiet(150, compilation_cache=False, eval_batch_size=256)
    model = RNNTagger(bidirectional=True, hidden_size=32, embed_size=16, cell="elman")
    test = fit(model, task, OptimConfig(lr=0.01), run=run).summary["final"]["test"]
    # the symbols' stationary frequencies: the best a model blind to the context can do; and
    # the entropy rate: the best from the past alone. Measured: 1.07 bits against 1.93 and 1.34
    pi = task.chain.stationary
    unigram_bits = -np.sum(pi * np.log2(pi))
    assert test["bits_per_char"] < unigram_bits - 0.5
    assert test["bits_per_char"] < task.entropy_rate_bits - 0.1
