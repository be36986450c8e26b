"""Smoke test of experiments/activations.py: one seed, 100 momentum steps per activation."""

import os

from helpers import smoke_results

from experiments import activations


def test_smoke_run_writes_results_and_plot_and_sigmoid_gradients_vanish(tmp_path):
    results = smoke_results(activations, tmp_path)
    assert os.path.getsize(tmp_path / "gradient_norms.png") > 0
    assert isinstance(results["claim"], str) and results["claim"]
    assert results["layers"] == [f"hidden_{i}" for i in range(10)] + ["head"]
    names = {"sigmoid", "tanh", "relu"}
    assert set(results["test_accuracy"]) == names
    for accuracy in results["test_accuracy"].values():
        assert len(accuracy) == 1 and 0.0 <= accuracy[0] <= 1.0
    for norms in results["gradient_norms"].values():
        for per_seed in norms.values():
            assert len(per_seed) == 1 and len(per_seed[0]) == 11
            assert all(n >= 0.0 for n in per_seed[0])
    # at initialisation the steps do not matter: the claim's gradient fact is checked in full
    ratio = results["first_to_last_ratio"]
    assert ratio["sigmoid"]["init"] < 1e-3 * ratio["relu"]["init"]
    assert 0.1 < ratio["relu"]["init"] < 10
    assert results["holds"] is True
