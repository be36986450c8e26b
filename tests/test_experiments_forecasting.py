"""Smoke test of experiments/forecasting.py: four forecasters on both series, one seed."""

import numpy as np
from helpers import smoke_results

from experiments import forecasting

# window 32, horizon 4: recurrent hidden 32 over 1 feature (+ head 32 -> 4); MLP 32-64-64-4
PARAMETERS = {"elman": 1220, "lstm": 4484, "gru": 3396, "mlp": 6532}


def test_smoke_run_writes_results_plot_and_a_consistent_verdict(tmp_path):
    saved = smoke_results(forecasting, tmp_path)
    assert saved["claim"] and isinstance(saved["holds"], bool)
    assert (tmp_path / "forecasting.png").stat().st_size > 0
    rows = {(r["series"], r["model"]): r for r in saved["models"]}
    assert set(rows) == {(s, m) for s in ("sines", "random_walk") for m in PARAMETERS}
    for (series, model), row in rows.items():
        assert row["parameters"] == PARAMETERS[model]
        assert len(row["test_mse_per_seed"]) == 1  # smoke: one seed
        assert row["test_mse_mean"] == np.mean(row["test_mse_per_seed"]) > 0
        assert row["test_mse_std"] == 0.0
        assert np.isclose(row["mse_over_naive"], row["test_mse_mean"] / row["naive_mse"])
        assert row["train_time_s"] > 0 and row["examples_per_second"] > 0
        assert (tmp_path / f"{series}-{model}-seed0" / "summary.json").exists()
    for series in ("sines", "random_walk"):
        # the naive forecast does not depend on the model: one test set per series
        naive = {rows[(series, m)]["naive_mse"] for m in PARAMETERS}
        assert len(naive) == 1
        mses = {m: rows[(series, m)]["test_mse_mean"] for m in PARAMETERS}
        assert saved["best_model"][series] == min(mses, key=mses.get)
        assert saved["runner_up_over_best"][series] >= 1.0
    # a random walk of unit steps: the naive MSE over a horizon of 4 is (4 + 1) / 2 in expectation
    assert abs(rows[("random_walk", "mlp")]["naive_mse"] - 2.5) < 0.3

    ratios = {key: row["mse_over_naive"] for key, row in rows.items()}
    sines = all(ratios[("sines", m)] < 1.0 for m in PARAMETERS)
    walk = all(0.98 <= ratios[("random_walk", m)] <= 1.10 for m in PARAMETERS)
    assert (saved["sines_all_beat_naive"], saved["random_walk_all_match_naive"]) == (sines, walk)
    assert saved["holds"] == (sines and walk)
