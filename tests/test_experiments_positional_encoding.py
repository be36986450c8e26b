"""Smoke test of experiments/positional_encoding.py: tiny encoders, 20 steps, both tasks."""

import math

import numpy as np
import pytest
from helpers import smoke_fixture

from arch.errors import ConfigError
from experiments import positional_encoding
from train.tasks import TASKS

ENCODINGS = ("none", "sinusoidal", "learned", "rotary")


smoke = smoke_fixture(positional_encoding)


def test_results_and_the_verdict_from_the_numbers(smoke):
    run_dir, results, saved = smoke
    assert saved["claim"] and isinstance(saved["holds"], bool)
    assert results["holds"] == saved["holds"]
    assert [(r["task"], r["label"]) for r in saved["runs"]] == [
        (task, p) for task in ("sorted", "reverse") for p in ENCODINGS
    ] + [("reverse", "rotary + anchor")]
    for name in ("sorted", "reverse"):
        rows = {r["positional"]: r for r in saved["runs"] if r["task"] == name and not r["anchor"]}
        for row in rows.values():
            assert 0.0 <= row["test_accuracy"] <= 1.0 and math.isfinite(row["train_accuracy"])
            assert row["train_time_s"] > 0 and len(row["test_accuracy_per_seed"]) == 1
            assert row["test_accuracy"] == row["test_accuracy_per_seed"][0]
            assert len(row["validation_steps"]) == len(row["validation_accuracy"]) >= 1
        # sinusoidal and rotary add no parameters; learned adds a table of max_len x d
        d, extra = 16, 1 if name == "sorted" else 0  # smoke width; the [CLS] token
        length = saved["config"][f"{name}_length"]
        assert rows["sinusoidal"]["parameters"] == rows["none"]["parameters"]
        assert rows["rotary"]["parameters"] == rows["none"]["parameters"]
        assert rows["learned"]["parameters"] == rows["none"]["parameters"] + (length + extra) * d
        per_token = rows["none"]["per_position_accuracy"]
        if name == "reverse":  # per-token outputs: accuracy per position averages to the whole
            assert len(per_token) == length
            assert np.mean(per_token) == pytest.approx(rows["none"]["test_accuracy"], abs=1e-6)
        else:
            assert per_token is None and rows["none"]["test_sequence_accuracy"] is None
        level = saved["order_blind_level"][name]
        verdict = rows["none"]["test_accuracy"] < level + 0.05 and all(
            rows[p]["test_accuracy"] >= 0.95 for p in ENCODINGS[1:]
        )
        assert saved["holds_per_task"][name] == verdict
    anchored = saved["runs"][-1]
    assert anchored["anchor"] and anchored["positional"] == "rotary"
    # one more position (the anchor), never scored: per-position accuracy covers the tokens only
    length = saved["config"]["reverse_length"]
    # the anchor's embedding row (d = 16) and its entry of the tied head's output bias
    assert anchored["parameters"] == rows["rotary"]["parameters"] + 16 + 1
    assert len(anchored["per_position_accuracy"]) == length
    assert np.mean(anchored["per_position_accuracy"]) == pytest.approx(
        anchored["test_accuracy"], abs=1e-6
    )
    assert saved["holds_per_task"]["reverse + anchor"] == (anchored["test_accuracy"] >= 0.95)
    assert set(saved["holds_per_task"]) == {"sorted", "reverse", "reverse + anchor"}
    assert saved["holds"] == all(saved["holds_per_task"].values())
    assert (run_dir / "reverse-rotary-anchor-seed0" / "summary.json").exists()
    assert saved["summary"].startswith("| `python -m experiments.positional_encoding`")
    assert (run_dir / "positional_encoding.png").exists()
    assert (run_dir / "sorted-rotary-seed0" / "summary.json").exists()


def test_the_order_blind_levels(smoke):
    _, _, saved = smoke
    assert saved["order_blind_level"]["sorted"] == 0.5
    # reverse: guess the most frequent other token of the sequence, by brute force
    task = TASKS["reverse"](vocab_size=10, length=saved["config"]["reverse_length"])
    inputs = task.data["test"][0]
    expected = np.mean(
        [
            max(np.sum(np.delete(row, i) == c) for c in range(10)) / (len(row) - 1)
            for row in inputs
            for i in range(len(row))
        ]
    )
    assert saved["order_blind_level"]["reverse"] == pytest.approx(expected, abs=1e-12)
    assert 1 / 10 < saved["order_blind_level"]["reverse"] < 0.5


def test_the_comparison_needs_no_positions_and_another(tmp_path):
    with pytest.raises(ConfigError, match="must include none"):
        positional_encoding.main(["--smoke", "--encodings", "learned", "--run-dir", str(tmp_path)])
