"""Smoke test of experiments/long_range.py: every cell on a short adding and copy task."""

import math

import pytest
from helpers import smoke_results

from arch.errors import ConfigError
from experiments import long_range

CELLS = ("elman", "lstm", "gru")
# hidden 64: adding reads 2 features, copy embeds 10 tokens in 64; heads 64 -> 1 and 64 -> 10
ADDING_PARAMETERS = {"elman": 4353, "lstm": 17217, "gru": 12929}
COPY_PARAMETERS = {"elman": 9546, "lstm": 34314, "gru": 26058}


def test_smoke_run_writes_results_plot_and_a_consistent_verdict(tmp_path):
    saved = smoke_results(long_range, tmp_path)
    assert saved["claim"] and isinstance(saved["holds"], bool)
    assert (tmp_path / "long_range.png").stat().st_size > 0
    assert saved["baselines"] == {"adding_mean_predictor_mse": 1 / 6, "copy_chance_accuracy": 1 / 8}

    config = saved["config"]
    adding = {(r["length"], r["cell"]): r for r in saved["adding"]}
    assert set(adding) == {(n, c) for n in config["adding_lengths"] for c in CELLS}
    copy = {(r["delay"], r["cell"]): r for r in saved["copy"]}
    assert set(copy) == {(d, c) for d in config["copy_delays"] for c in CELLS}
    for (_, cell), row in adding.items():
        assert row["parameters"] == ADDING_PARAMETERS[cell]
        assert math.isfinite(row["test"]["mse"]) and row["test"]["mse"] >= 0.0
    for (delay, cell), row in copy.items():
        assert row["parameters"] == COPY_PARAMETERS[cell]
        assert row["sequence_length"] == 2 * config["copy_length"] + delay + 1
        accuracy, whole = row["test"]["accuracy"], row["test"]["sequence_accuracy"]
        # a sequence counts as copied only if each of its symbols is right
        assert 0.0 <= whole <= accuracy + 1e-6 <= 1.0 + 1e-6
    for row in saved["adding"] + saved["copy"]:
        assert row["step_time_ms"] > 0 and row["examples_per_second"] > 0
        assert row["compile_time_s"] > 0 and row["wall_time_s"] > 0
        metric = "mse" if "length" in row else "accuracy"
        curve = row[f"validation_{metric}"]
        assert len(row["validation_steps"]) == len(curve) >= 1
        assert row[f"best_validation_{metric}"] == (min if metric == "mse" else max)(curve)

    at_bar = saved["adding_test_mse_at_bar_length"]
    assert at_bar == {c: adding[(config["bar_length"], c)]["test"]["mse"] for c in CELLS}
    assert saved["holds"] == (
        at_bar["lstm"] < 0.01 and at_bar["gru"] < 0.01 and at_bar["elman"] > 0.1
    )

    pairs = saved["gru_vs_lstm"]["settings"]
    assert len(pairs) == len(config["adding_lengths"]) + len(config["copy_delays"])
    for pair in pairs:
        rows = adding if pair["task"] == "adding" else copy
        gru, lstm = rows[(pair["range"], "gru")], rows[(pair["range"], "lstm")]
        metric = pair["metric"].removeprefix("test ")
        assert (pair["gru"], pair["lstm"]) == (gru["test"][metric], lstm["test"][metric])
        assert (pair["parameters_gru"], pair["parameters_lstm"]) == (
            gru["parameters"],
            lstm["parameters"],
        )
        assert pair["step_time_ratio"] == gru["step_time_ms"] / lstm["step_time_ms"]
    assert saved["gru_vs_lstm"]["step_time_ratio_geomean"] > 0
    length = config["adding_lengths"][0]
    assert (tmp_path / f"adding{length}-gru" / "summary.json").exists()
    assert (tmp_path / f"copy{config['copy_delays'][0]}-lstm" / "metrics.jsonl").exists()


def test_bar_length_must_be_one_of_the_adding_lengths(tmp_path):
    with pytest.raises(ConfigError, match="bar_length 200 must be one of adding_lengths"):
        long_range.main(["--adding-lengths", "50", "--run-dir", str(tmp_path)])
