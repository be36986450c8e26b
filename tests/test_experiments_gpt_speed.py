"""Smoke test of experiments/gpt_speed.py: a 1-layer width-32 GPT, 2 timed passes."""

import json

import pytest
from helpers import TORCH

from experiments import gpt_speed


def test_smoke_run_times_every_implementation_of_the_same_model(tmp_path):
    returned = gpt_speed.main(["--smoke", "--run-dir", str(tmp_path)])

    results = json.loads((tmp_path / "results.json").read_text())
    assert results == json.loads(json.dumps(returned, default=float))
    rows = {r["implementation"]: r for r in results["rows"]}
    expected = {"ours (einsum)", "ours (xla)"} | ({"torch eager"} if TORCH else set())
    assert set(rows) == expected
    # the PyTorch model is the same architecture: the same number of parameters
    assert len({r["parameters"] for r in rows.values()}) == 1
    config = results["config"]
    d, vocab, tokens = config["width"], config["vocab"], config["batch"] * config["length"]
    # by hand: tied embedding, positions, per block two norms, q/k/v/out and a 4d-wide
    # feed-forward with biases (12 d^2 + 13 d), the final norm
    hand_count = vocab * d + config["length"] * d + config["layers"] * (12 * d * d + 13 * d) + 2 * d
    assert {r["parameters"] for r in rows.values()} == {hand_count}
    assert results["flops_per_step"] > 0 and results["matmul_peak"]["flops_per_second"] > 0
    # at least the forward and two backward products (6 FLOPs per weight and token) of every
    # weight matrix: 12 d^2 per block and the tied output projection
    matmul_weights = config["layers"] * 12 * d * d + vocab * d
    assert results["flops_per_step"] >= 6 * matmul_weights * tokens
    for row in rows.values():
        assert len(row["samples"]) == 2 and all(s > 0 for s in row["samples"])
        # step_ms is in milliseconds, the samples in seconds per step
        assert min(row["samples"]) <= row["step_ms"] / 1e3 <= max(row["samples"])
        # tokens per second times seconds per step: the batch's tokens
        assert row["tokens_per_second"]["median"] * row["step_ms"] / 1e3 == pytest.approx(tokens)
        assert row["utilisation"] > 0 and row["utilisation_of_own_peak"] > 0
        if row["implementation"].startswith("ours"):
            assert row["utilisation_of_own_peak"] == row["utilisation"]
        assert (row["compile_seconds"] is None) == (row["implementation"] == "torch eager")
    # every row counts the same FLOPs per step and divides by JAX's one peak: FLOP/s and
    # utilisation rank the rows as their tokens per second do
    flops_per_token = {
        r["flops_per_second"] / r["tokens_per_second"]["median"] for r in rows.values()
    }
    peak_per_flop = {r["utilisation"] / r["flops_per_second"] for r in rows.values()}
    assert max(flops_per_token) == pytest.approx(min(flops_per_token), rel=1e-9)
    assert max(peak_per_flop) == pytest.approx(min(peak_per_flop), rel=1e-9)
    if TORCH:
        assert rows["torch eager"]["vs_torch"] == 1.0 and isinstance(results["holds"], bool)
    else:
        assert results["holds"] is None
