"""Smoke test of experiments/seq2seq_bottleneck.py: tiny models, a few steps, two lengths."""

import numpy as np
import pytest
from helpers import smoke_fixture

from arch.errors import ConfigError
from experiments import seq2seq_bottleneck

smoke = smoke_fixture(seq2seq_bottleneck)


def test_results_plots_and_the_verdict_from_the_numbers(smoke):
    run_dir, results, saved = smoke
    assert saved["claim"] and saved["holds"] == results["holds"]
    lengths = saved["config"]["lengths"]
    assert lengths == [3, 6]
    assert [r["model"] for r in saved["runs"]] == ["gru", "gru_bahdanau", "transformer"]
    for row in saved["runs"]:
        assert len(row["exact_match"]) == len(row["token_accuracy"]) == len(lengths)
        assert all(0 <= a <= 1 for a in row["exact_match"] + row["token_accuracy"])
        assert all(e <= t for e, t in zip(row["exact_match"], row["token_accuracy"], strict=True))
        assert 0 <= row["test_decoded"]["bleu"] <= 100 and row["parameters"] > 0
        first, last = row["exact_match"]
        expected = last < 0.5 * first if row["model"] == "gru" else last >= 0.9 * first
        assert saved["holds_per_model"][row["model"]] == expected
    assert saved["holds"] == all(saved["holds_per_model"].values())
    example = saved["attention"]
    weights = np.array(example["weights"])  # [L + 1, L]: every output step over the source
    assert weights.shape == (example["length"] + 1, example["length"])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    assert 0 <= example["anti_diagonal_mass"] <= 1
    assert saved["summary"].startswith("| `python -m experiments.seq2seq_bottleneck`")
    for name in ("seq2seq_bottleneck.png", "attention.png", "gru/summary.json"):
        assert (run_dir / name).exists()


def test_bad_lengths_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="increasing"):
        seq2seq_bottleneck.main(["--lengths", "6", "3", "--run-dir", str(tmp_path)])
