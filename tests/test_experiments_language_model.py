import math

import numpy as np
import pytest
from helpers import smoke_fixture

from arch.errors import ConfigError
from experiments import language_model
from train.tasks import MarkovLanguage

VOCAB, EMBED, HIDDEN = 16, 8, 16  # the smoke model
GATES = {"lstm": 4, "gru": 3, "elman": 1}


def parameters(cell: str) -> int:
    """Embedding v*e + cell g*n*(e + n + 1) + output layer n*v + v."""
    g = GATES[cell]
    return VOCAB * EMBED + g * HIDDEN * (EMBED + HIDDEN + 1) + HIDDEN * VOCAB + VOCAB


smoke = smoke_fixture(language_model)


def test_results_structure_and_claim(smoke):
    run_dir, results, saved = smoke
    assert saved["claim"] and isinstance(saved["holds"], bool)
    assert results["holds"] == saved["holds"]
    rows = {row["model"]: row for row in saved["models"]}
    assert {cell: row["parameters"] for cell, row in rows.items()} == {
        cell: parameters(cell) for cell in ("lstm", "gru", "elman")
    }
    assert saved["lstm_gap_bits"] == rows["lstm"]["gap_bits"]
    assert saved["holds"] == (rows["lstm"]["gap_bits"] < 0.1)
    assert (run_dir / "language_model.png").exists()
    assert (run_dir / "lstm" / "summary.json").exists()


def test_reference_entropies(smoke):
    _, _, saved = smoke
    task = MarkovLanguage()  # the smoke run keeps the default language
    assert saved["entropy_rate_bits"] == task.entropy_rate_bits
    assert saved["log2_vocab_bits"] == math.log2(16)
    # the stationary pair distribution has equal marginals: score the first symbol's one
    first = task.chain.stationary.reshape(VOCAB, VOCAB).sum(axis=1)
    assert saved["unigram_entropy_bits"] == pytest.approx(-np.sum(first * np.log2(first)), 1e-9)
    assert saved["entropy_rate_bits"] < saved["unigram_entropy_bits"] <= saved["log2_vocab_bits"]


def test_bits_and_gaps(smoke):
    _, _, saved = smoke
    assert saved["source_test_bits_per_char"] >= 0
    for row in saved["models"]:
        bits = [row["test_bits_per_char"], *row["validation_bits_per_char"]]
        assert all(b >= 0 for b in bits)
        assert row["gap_bits"] == row["test_bits_per_char"] - saved["entropy_rate_bits"]
        assert len(row["validation_steps"]) == len(row["validation_bits_per_char"]) >= 1
        assert row["train_time_s"] > 0 and row["tokens_per_second"] > 0


def test_samples_are_valid_tokens_scored_under_the_source(smoke):
    _, _, saved = smoke
    config = saved["config"]
    prompt_length, new = config["prompt_length"], config["sample_tokens"]
    task = MarkovLanguage(length=config["length"], num_eval=config["num_eval"])
    prompt = task.data["test"][0][0, :prompt_length]
    for row in saved["models"]:
        samples = row["samples"]
        greedy = np.array(samples["greedy_tokens"])
        sampled = np.array(samples["sampled_tokens"])
        assert greedy.shape == (prompt_length + new,)
        assert sampled.shape == (config["num_samples"], prompt_length + new)
        for tokens in (greedy, sampled):
            assert tokens.dtype.kind == "i" and tokens.min() >= 0 and tokens.max() < VOCAB
            np.testing.assert_array_equal(
                tokens[..., :prompt_length],
                np.broadcast_to(prompt, tokens[..., :prompt_length].shape),
            )
        letters = lambda tokens: "".join("abcdefghijklmnop"[t] for t in tokens)
        assert samples["prompt"] == letters(prompt)
        assert samples["greedy"] == letters(greedy[prompt_length:])
        assert samples["sampled"] == letters(sampled[0, prompt_length:])
        # -log2 P(x_s | x_{s-2}, x_{s-1}) of the new tokens, one at a time
        surprisal = [
            -math.log2(task.chain.transitions[seq[s - 2] * VOCAB + seq[s - 1], seq[s]])
            for seq in sampled
            for s in range(prompt_length, prompt_length + new)
        ]
        assert samples["sampled_source_bits_per_char"] == pytest.approx(np.mean(surprisal))


def test_the_claim_needs_the_lstm():
    with pytest.raises(ConfigError, match="must include lstm"):
        language_model.main(["--smoke", "--cells", "gru"])
