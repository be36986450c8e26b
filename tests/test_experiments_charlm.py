"""Smoke test of experiments/charlm.py: tiny GPT, LSTM and GRU, 20 steps, short sequences."""

import math

import numpy as np
import pytest
from helpers import smoke_fixture

from experiments import charlm
from train.tasks import MarkovLanguage

VOCAB, EMBED, HIDDEN, WIDTH = 16, 8, 16, 16  # the smoke models; the GPT has 1 layer, d 16


def rnn_parameters(gates: int) -> int:
    """Embedding v*e + cell g*n*(e + n + 1) + output layer n*v + v."""
    return VOCAB * EMBED + gates * HIDDEN * (EMBED + HIDDEN + 1) + HIDDEN * VOCAB + VOCAB


def gpt_parameters() -> int:
    """Tied embedding v*d; one pre-norm block: 4 projections d*d + d, 2 LayerNorms, the
    feed-forward d*4d + 4d + 4d*d + d; the final LayerNorm. Rotary positions: no table."""
    d = WIDTH
    block = 4 * (d * d + d) + 2 * 2 * d + (d * 4 * d + 4 * d + 4 * d * d + d)
    return VOCAB * d + block + 2 * d


smoke = smoke_fixture(charlm)


def test_results_and_the_verdict_from_the_numbers(smoke, capsys):
    run_dir, results, saved = smoke
    assert saved["claim"] and isinstance(saved["holds"], bool)
    assert results["holds"] == saved["holds"]
    rows = {row["model"]: row for row in saved["models"]}
    assert {name: row["parameters"] for name, row in rows.items()} == {
        "gpt": gpt_parameters(),
        "lstm": rnn_parameters(4),
        "gru": rnn_parameters(3),
    }
    entropy = MarkovLanguage().entropy_rate_bits
    assert saved["entropy_rate_bits"] == entropy and saved["log2_vocab_bits"] == math.log2(16)
    for row in rows.values():
        assert math.isfinite(row["test_bits_per_char"]) and row["test_bits_per_char"] > 0
        assert row["gap_bits"] == row["test_bits_per_char"] - entropy
        assert len(row["validation_steps"]) == len(row["validation_bits_per_char"]) >= 1
        assert row["train_time_s"] > 0 and row["tokens_per_second"] > 0
    assert saved["holds"] == all(row["gap_bits"] < 0.1 for row in rows.values())
    assert saved["summary"].startswith("| `python -m experiments.charlm`")
    assert (run_dir / "charlm.png").exists() and (run_dir / "gpt" / "summary.json").exists()


def test_samples_continue_the_prompts_and_are_scored_by_the_true_chain(smoke):
    _, _, saved = smoke
    config = saved["config"]
    p, new = config["prompt_length"], config["sample_tokens"]
    task = MarkovLanguage(length=config["length"], num_eval=config["num_eval"])
    prompts = task.data["test"][0][: config["num_samples"], :p]
    for row in saved["models"]:
        assert [s["temperature"] for s in row["samples"]] == list(config["temperatures"])
        for sample in row["samples"]:
            tokens = np.array(sample["tokens"])
            assert tokens.shape == (config["num_samples"], p + new)
            assert tokens.min() >= 0 and tokens.max() < VOCAB
            np.testing.assert_array_equal(tokens[:, :p], prompts)
            assert sample["texts"][0] == "".join(chr(97 + t) for t in tokens[0, p:])
            # -log2 P(x_s | x_{s-2}, x_{s-1}) of every new token, one at a time
            surprisal = [
                -math.log2(task.chain.transitions[seq[s - 2] * VOCAB + seq[s - 1], seq[s]])
                for seq in tokens
                for s in range(p, p + new)
            ]
            assert sample["source_bits_per_char"] == pytest.approx(np.mean(surprisal))
            # split at the training length: new tokens at positions < length, then the rest
            surprisal = np.reshape(surprisal, (len(tokens), new))
            within = config["length"] - p
            assert 0 < within < new  # the smoke samples run past the training length
            assert sample["source_bits_within_training_length"] == pytest.approx(
                surprisal[:, :within].mean()
            )
            assert sample["source_bits_beyond_training_length"] == pytest.approx(
                surprisal[:, within:].mean()
            )
            np.testing.assert_allclose(sample["source_bits_per_position"], surprisal.mean(0))
