"""Smoke test of experiments/recurrent_speed.py: width 32, length 16, 2 repeats, unroll 2."""

from helpers import TORCH, speed_results

from experiments import recurrent_speed


def test_smoke_run_measures_every_implementation_and_they_agree(tmp_path):
    results = speed_results(recurrent_speed, tmp_path)
    assert (results["versions"]["torch"] is not None) is TORCH

    rows = results["measurements"]
    names = {(r["cell"], r["implementation"]) for r in rows}
    expected = {
        ("lstm", "ours fused u2"),
        ("lstm", "flax OptimizedLSTMCell"),
        ("lstm", "flax LSTMCell"),
        ("gru", "ours fused u2"),
        ("gru", "ours reset_after=False fused u2"),
        ("gru", "flax GRUCell"),
        ("lstm", "proto concat u1"),
        ("gru", "proto concat u1"),
        ("lstm", "ours fused u2 autodiff"),  # the backward pass the default replaced
        ("gru", "ours fused u2 custom"),  # measured slower than autodiff for the GRU
    } | ({("lstm", "torch nn.LSTM"), ("gru", "torch nn.GRU")} if TORCH else set())
    assert expected <= names
    assert all(r["family"] != "torch" for r in rows) or TORCH
    # every implementation, in both modes, at the one length, timed twice, at a positive speed
    assert len(rows) == 2 * len(names)
    for row in rows:
        assert row["length"] == 16 and row["mode"] in ("train", "infer")
        assert len(row["seconds"]) == 2 and all(s > 0 for s in row["seconds"])
        speed = row["tokens_per_second"]
        assert 0 < speed["min"] <= speed["median"] <= speed["max"]
        assert (row["compile_seconds"] is None) == (row["family"] == "torch")

    # the same weights give the same function: ours, Flax's cells, PyTorch's and the prototypes
    assert results["max_abs_difference"] < 1e-4
    for cell_name in ("lstm", "gru"):
        outputs = results["max_abs_difference_outputs"][cell_name]
        gradients = results["max_relative_difference_input_gradient"][cell_name]
        assert set(outputs) == set(gradients) == {n for c, n in names if c == cell_name}
        assert max(outputs.values()) < 1e-4 and max(gradients.values()) < 1e-4

    ratios = {(r["cell"], r["mode"]): r for r in results["ratios"]}
    assert set(ratios) == {(c, m) for c in ("lstm", "gru") for m in ("train", "infer")}
    for (cell_name, mode), r in ratios.items():
        speeds = {
            row["implementation"]: row["tokens_per_second"]["median"]
            for row in rows
            if (row["cell"], row["mode"]) == (cell_name, mode)
        }
        # each term of a ratio is the recorded median of the row it names
        assert r["ours"] == speeds["ours fused u2"]
        assert r["fastest_ours"].startswith("ours")
        assert r["fastest_ours_tokens_per_second"] == speeds[r["fastest_ours"]]
        assert r["flax"].startswith("flax") and r["flax_tokens_per_second"] == speeds[r["flax"]]
        # the fastest of ours is at least as fast as the default; above 1 is ours faster
        assert r["fastest_ours_vs_flax"] >= r["ours_vs_flax"] > 0
        assert (r["ours_vs_flax"] > 1) == (r["ours"] > r["flax_tokens_per_second"])
        assert (r["ours_vs_torch"] is not None) is TORCH
    assert isinstance(results["holds"], bool) and results["summary"].startswith(
        "| `python -m experiments.recurrent_speed`"
    )
