"""Smoke test of experiments/vanishing_gradients.py: one seed, 30 Adam steps per model, 50 SGD
steps per clipping run."""

import os

import numpy as np
from helpers import smoke_results

from experiments import vanishing_gradients


def test_smoke_run_writes_results_and_plot_and_gradients_vanish_as_stated(tmp_path):
    results = smoke_results(vanishing_gradients, tmp_path)
    assert os.path.getsize(tmp_path / "vanishing_gradients.png") > 0
    assert isinstance(results["claim"], str) and results["claim"]
    length = results["config"]["length"]
    assert length == 100 and results["config"]["seeds"] == [0]

    # the scalar recurrence: d h_T / d x_t = w^(T-t) exactly; tanh' <= 1 only shrinks it
    distances = np.arange(length)
    for w in (4.0, 0.2):
        scalar = results["scalar"][str(w)]
        np.testing.assert_allclose(scalar["linear"], w**distances, rtol=1e-12)
        assert scalar["max_relative_error"] < 1e-12
        assert np.all(np.asarray(scalar["tanh"]) <= np.asarray(scalar["linear"]) * (1 + 1e-12))
    # in float32, 4^64 = 2^128 overflows; 0.2^k leaves the normal range (1.2e-38) at k = 55,
    # where XLA on CPU flushes it to zero (subnormals would last until about k = 65)
    assert results["scalar"]["4.0"]["float32_inf_from"] == 64
    assert results["scalar"]["4.0"]["float32_zero_from"] is None
    assert results["scalar"]["0.2"]["float32_inf_from"] is None
    assert 55 <= results["scalar"]["0.2"]["float32_zero_from"] <= 66

    # the summaries agree with the profiles they come from
    floor = float(np.finfo(np.float32).tiny)
    for cell, by_when in results["decay"].items():
        for when, decay in by_when.items():
            profile = np.asarray(decay["log10_norm_by_distance"])
            assert profile.shape == (length,) and np.all(profile >= np.log10(floor) - 1e-6)
            assert np.isclose(decay["ratio"], 10 ** (profile[-1] - profile[0]), rtol=1e-6)
            end = decay["underflow_from"] or length
            assert decay["ratio_is_upper_bound"] == (decay["underflow_from"] is not None)
            assert (decay["underflowed_fraction"] > 0) == decay["ratio_is_upper_bound"]
            slope = np.polyfit(distances[:end], profile[:end], 1)[0]
            assert np.isclose(decay["decay_per_step"], 10**slope, rtol=1e-6), (cell, when)
    # at initialisation (steps do not matter): Elman's gradient falls by far more than 1e3 over
    # 99 steps; LSTM (forget bias 1) keeps >= 100x more; GRU (z ~ 1/2) decays even faster
    ratio = {cell: results["decay"][cell]["init"]["ratio"] for cell in ("elman", "lstm", "gru")}
    assert ratio["elman"] < 1e-6
    assert ratio["lstm"] >= 100 * ratio["elman"]
    assert ratio["gru"] < ratio["elman"]
    assert results["holds_at_init"] is False
    for cell in ("elman", "lstm", "gru"):
        assert results["decay"][cell]["init"]["decay_per_step"] < 1.0
        assert len(results["test_mse"][cell]) == 1 and results["test_mse"][cell][0] > 0

    # clipping: with the recurrent kernel scaled, unclipped SGD meets a NaN/inf within 50 steps;
    # clipped and control runs stay finite (a clipped SGD step moves the weights <= lr * clip)
    clipping = results["clipping"]
    exploding, clipped, control = (
        clipping[k]["runs"][0] for k in ("exploding", "clipped", "control")
    )
    assert exploding["initial_grad_norm"] == clipped["initial_grad_norm"]
    assert exploding["initial_grad_norm"] != control["initial_grad_norm"]
    assert exploding["diverged_at"] is not None and exploding["diverged_at"] <= 50
    assert exploding["final_test_mse"] is None
    # logged every 10 steps until the interval that held the NaN/inf
    assert exploding["steps"] == list(range(10, exploding["diverged_at"], 10))
    assert exploding["max_grad_norm"] > 1e3 * clipped["max_grad_norm"]
    for run in (clipped, control):
        assert run["diverged_at"] is None and run["steps"] == [10, 20, 30, 40, 50]
        assert np.all(np.isfinite(run["loss"])) and np.isfinite(run["final_test_mse"])
    for condition in ("exploding", "clipped", "control"):
        assert (tmp_path / "clipping" / f"{condition}-0" / "metrics.jsonl").exists()

    trained = {cell: results["decay"][cell]["trained"]["ratio"] for cell in ratio}
    gated_keep = all(trained[cell] >= 100 * trained["elman"] for cell in ("lstm", "gru"))
    assert results["holds_trained"] == (trained["elman"] < 1e-3 and gated_keep)
    expected = (
        results["holds_trained"]
        and exploding["diverged_at"] is not None
        and clipped["diverged_at"] is None
        and control["diverged_at"] is None
    )
    assert results["holds"] == expected
