"""Smoke test of experiments/long_range.py: every cell on a short adding and copy task."""

import math

import pytest
from helpers import smoke_results

from arch.errors import ConfigError
from experiments import long_range

CELLS = ("elman", "lstm", "gru")
INITS = ("default", "chrono")
# hidden 64: adding reads 2 features, copy embeds 10 tokens in 64; heads 64 -> 1 and 64 -> 10
ADDING_PARAMETERS = {"elman": 4353, "lstm": 17217, "gru": 12929}
COPY_PARAMETERS = {"elman": 9546, "lstm": 34314, "gru": 26058}


RUNS = [("elman", "default"), ("lstm", "default"), ("lstm", "chrono"), ("gru", "default")]
RUNS += [("gru", "chrono")]  # the Elman RNN has no gate to initialise


def test_smoke_run_writes_results_plot_and_a_consistent_verdict(tmp_path):
    saved = smoke_results(long_range, tmp_path)
    assert saved["claim"]
    assert set(saved["holds"]) == {f"{t} ({i})" for t in ("adding", "copy") for i in INITS}
    assert (tmp_path / "long_range.png").stat().st_size > 0
    assert saved["baselines"] == {"adding_mean_predictor_mse": 1 / 6, "copy_chance_accuracy": 1 / 8}

    config = saved["config"]
    adding = {(r["length"], r["cell"], r["init"]): r for r in saved["adding"]}
    assert set(adding) == {(n, *run) for n in config["adding_lengths"] for run in RUNS}
    copy = {(r["delay"], r["cell"], r["init"]): r for r in saved["copy"]}
    assert set(copy) == {(d, *run) for d in config["copy_delays"] for run in RUNS}
    for (length, cell, init), row in adding.items():
        assert row["parameters"] == ADDING_PARAMETERS[cell]  # chrono changes values only
        assert row["chrono_t_max"] == (length if init == "chrono" else None)
        assert math.isfinite(row["test"]["mse"]) and row["test"]["mse"] >= 0.0
    for (delay, cell, init), row in copy.items():
        assert row["parameters"] == COPY_PARAMETERS[cell]
        assert row["sequence_length"] == 2 * config["copy_length"] + delay + 1
        assert row["chrono_t_max"] == (row["sequence_length"] if init == "chrono" else None)
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

    for init in INITS:
        run = lambda cell, init=init: (cell, init if cell != "elman" else "default")
        mse = {c: adding[(config["bar_length"], *run(c))]["test"]["mse"] for c in CELLS}
        accuracy = {c: copy[(config["copy_bar_delay"], *run(c))]["test"]["accuracy"] for c in CELLS}
        assert saved["at_bars"][init] == {"adding_test_mse": mse, "copy_test_accuracy": accuracy}
        assert saved["holds"][f"adding ({init})"] == (
            mse["lstm"] < 0.01 and mse["gru"] < 0.01 and mse["elman"] > 0.1
        )
        assert saved["holds"][f"copy ({init})"] == (
            accuracy["lstm"] > 0.9 and accuracy["gru"] > 0.9 and accuracy["elman"] < 2 / 8
        )

    pairs = saved["gru_vs_lstm"]["settings"]
    assert len(pairs) == len(INITS) * (len(config["adding_lengths"]) + len(config["copy_delays"]))
    for pair in pairs:
        rows = adding if pair["task"] == "adding" else copy
        gru, lstm = (rows[(pair["range"], cell, pair["init"])] for cell in ("gru", "lstm"))
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
    assert (tmp_path / f"copy{config['copy_delays'][0]}-gru-chrono" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--adding-lengths", "50"], "bar_length 200 must be one of adding_lengths"),
        (["--copy-delays", "10"], "copy_bar_delay 50 must be one of copy_delays"),
    ],
)
def test_the_bars_must_be_among_the_settings_run(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message):
        long_range.main([*flags, "--run-dir", str(tmp_path)])
