"""train/report.py: fit_seeds trains once per seed into its own run directory; seed_summary
reports the means, spreads and curves of those runs."""

import json
import math

import jax
import numpy as np
import pytest

from arch import MLP
from train.loop import FitResult
from train.optim import OptimConfig
from train.report import fit_seeds, seed_summary
from train.tasks import Xor

STEPS = 20


def same_parameters(a: FitResult, b: FitResult) -> bool:
    equal = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a.state.params, b.state.params)
    return all(jax.tree.leaves(equal))


def test_fit_seeds_trains_once_per_seed_into_the_seeds_run_directory(tmp_path):
    model, task, optim = MLP(hidden_sizes=(8,)), Xor(noise=0.1), OptimConfig(lr=0.02)
    run_dir = str(tmp_path / "mlp")
    quiet = dict(compilation_cache=False)
    results = fit_seeds(model, task, optim, STEPS, (0, 1), run_dir, 2, **quiet)
    again = fit_seeds(model, task, optim, STEPS, [0], str(tmp_path / "again"), 2, **quiet)

    assert len(results) == 2 and len(again) == 1
    for seed, result in zip((0, 1), results, strict=True):
        assert result.summary["run_dir"] == f"{run_dir}-seed{seed}"
        assert result.summary["steps"] == STEPS
        run = json.loads((tmp_path / f"mlp-seed{seed}" / "config.json").read_text())["run"]
        assert run["seed"] == seed and run["compilation_cache"] is False  # a run field passed on
        # evaluated twice: every STEPS / 2 steps, the last at the end
        assert run["eval_every"] == run["log_every"] == STEPS // 2
        assert [step for step, _ in result.curve("accuracy")] == [STEPS // 2, STEPS]
    assert again[0].summary["run_dir"] == f"{tmp_path / 'again'}-seed0"
    # the seed sets the initialisation: another seed differs, the same seed repeats exactly
    assert not same_parameters(results[0], results[1])
    assert same_parameters(results[0], again[0])
    assert again[0].summary["final"] == results[0].summary["final"]


def made_result(test: float, seconds: float, curve: list[tuple[int, float]]) -> FitResult:
    """A FitResult as fit() returns it, of hand-picked numbers: a test accuracy and MSE,
    times of `seconds`, a validation curve (and a train record the curve must skip)."""
    history = [{"step": 1, "split": "train", "accuracy": -1.0, "mse": -1.0}]
    history += [{"step": s, "split": "validation", "accuracy": a, "mse": 2 * a} for s, a in curve]
    summary = {
        "parameters": 100,
        "final": {"test": {"accuracy": test, "mse": 2 * test}, "train": {"accuracy": 1.0}},
        "train_time": seconds,
        "compile_time": seconds / 2,
        "wall_time": 2 * seconds,
        "examples_per_second": 1000 / seconds,
    }
    return FitResult(model=None, state=None, summary=summary, history=history)


RESULTS = [
    made_result(0.5, 1.0, [(5, 0.25), (10, 0.5)]),
    made_result(0.75, 2.0, [(5, 0.5), (10, 1.0)]),
    made_result(1.0, 4.0, [(5, 0.75), (10, 0.0)]),
]


def test_seed_summary_of_hand_made_runs():
    summary = seed_summary(RESULTS)

    assert set(summary) == {
        "parameters",
        "test_accuracy_mean",
        "test_accuracy_std",
        "test_accuracy_per_seed",
        "train_time_s",
        "compile_time_s",
        "wall_time_s",
        "examples_per_second",
        "validation_steps",
        "validation_accuracy_mean",
    }
    assert summary["parameters"] == 100
    assert summary["test_accuracy_per_seed"] == [0.5, 0.75, 1.0]
    # by hand: mean 0.75; deviations -0.25, 0, 0.25, so the (population) std is sqrt(1/24)
    assert summary["test_accuracy_mean"] == 0.75
    assert summary["test_accuracy_std"] == pytest.approx(math.sqrt(1 / 24), rel=1e-12)
    tests = [0.5, 0.75, 1.0]
    assert summary["test_accuracy_mean"] == np.mean(tests)
    assert summary["test_accuracy_std"] == np.std(tests)
    # times: means over the seeds of 1, 2 and 4 seconds
    assert summary["train_time_s"] == pytest.approx(7 / 3, rel=1e-12)
    assert summary["compile_time_s"] == pytest.approx(7 / 6, rel=1e-12)
    assert summary["wall_time_s"] == pytest.approx(14 / 3, rel=1e-12)
    assert summary["examples_per_second"] == pytest.approx(1750 / 3, rel=1e-12)
    # the validation curve, step by step: (0.25 + 0.5 + 0.75) / 3 and (0.5 + 1 + 0) / 3
    assert summary["validation_steps"] == [5, 10]
    assert summary["validation_accuracy_mean"] == [0.5, 0.5]


def test_seed_summary_of_another_metric():
    summary = seed_summary(RESULTS, "mse")

    assert summary["test_mse_per_seed"] == [1.0, 1.5, 2.0]
    assert summary["test_mse_mean"] == 1.5
    assert summary["test_mse_std"] == pytest.approx(math.sqrt(1 / 6), rel=1e-12)
    assert summary["validation_mse_mean"] == [1.0, 1.0]
    assert "test_accuracy_mean" not in summary and "validation_accuracy_mean" not in summary
