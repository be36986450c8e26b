"""Smoke test of experiments/perceptron_vs_mlp.py: one seed, 200 steps, all six fits."""

import os

from helpers import smoke_results

from experiments import perceptron_vs_mlp


def test_smoke_run_writes_results_and_plot_and_the_claim_holds(tmp_path):
    results = smoke_results(perceptron_vs_mlp, tmp_path)
    assert os.path.getsize(tmp_path / "decision_boundaries.png") > 0
    assert isinstance(results["claim"], str) and results["claim"]
    accuracy = results["test_accuracy"]
    assert set(accuracy) == {"perceptron", "mlp"}
    for per_task in accuracy.values():
        assert set(per_task) == {"xor", "blobs", "circles"}
        for values in per_task.values():
            assert len(values) == 1 and all(0.0 <= v <= 1.0 for v in values)
    # a line classifies at most 3 of XOR's 4 equally frequent corners: a fact, whatever the steps
    assert accuracy["perceptron"]["xor"][0] <= 0.75
    assert accuracy["mlp"]["xor"][0] == 1.0
    assert accuracy["perceptron"]["blobs"][0] >= 0.99
    assert results["holds"] is True
