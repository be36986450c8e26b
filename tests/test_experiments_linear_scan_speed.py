"""Smoke test of experiments/linear_scan_speed.py: float32 at t = 1024 and complex64 at t = 16,
b2 n8, sequential unroll 1 and 4 and parallel, forward and forward+backward, 2 passes."""

import json

import jax

from experiments import linear_scan_speed


def test_smoke_run_measures_every_scan_and_they_agree(tmp_path):
    returned = linear_scan_speed.main(["--smoke", "--run-dir", str(tmp_path)])

    results = json.loads((tmp_path / "results.json").read_text())
    assert results == json.loads(json.dumps(returned, default=float))
    assert (tmp_path / "linear_scan_speed.png").stat().st_size > 0
    assert results["versions"]["jax"] == jax.__version__
    assert results["lengths"] == [1024] and results["complex_lengths"] == [16]

    rows = results["measurements"]
    names = {"sequential", "sequential unroll 4", "parallel"}
    passes = {"forward", "forward+backward"}
    expected = {(1024, "float32"), (16, "complex64")}
    keys = [(r["length"], r["dtype"], r["implementation"], r["pass"]) for r in rows]
    assert sorted(keys) == sorted((t, d, n, p) for t, d in expected for n in names for p in passes)
    for row in rows:
        assert len(row["samples"]) == 2 and all(s > 0 for s in row["samples"])
        seconds = row["seconds"]
        assert 0 < seconds["min"] <= seconds["median"] <= seconds["max"]
        assert row["compile_seconds"] > 0
        # same recurrence: states and gradients agree with lax.scan's to float32 rounding
        assert row["max_relative_difference"] < 1e-5, row
        memory = row["memory"]
        assert row["peak_bytes"] == memory["argument"] + memory["output"] + memory["temp"]
        # a, b, c in; h (and d/da, d/db) out, each b2 x t x n8 of 4 (8 if complex) bytes
        item = 8 if row["dtype"] == "complex64" else 4
        arrays = 3 + (1 if row["pass"] == "forward" else 3)
        assert row["peak_bytes"] >= arrays * 2 * row["length"] * 8 * item
        if row["implementation"] == "sequential":
            assert row["time_vs_sequential"] == 1.0 and row["max_abs_difference"] == 0
            assert row["memory_vs_sequential"] == 1.0
        # unrolling reorders no real arithmetic of the forward pass (its backward pass rounds
        # differently: see tests/test_linear_recurrent.py)
        key = (row["implementation"], row["dtype"], row["pass"])
        if key == ("sequential unroll 4", "float32", "forward"):
            assert row["max_abs_difference"] == 0

    ratio = next(
        r["time_vs_sequential"]
        for r in rows
        if (r["implementation"], r["pass"], r["dtype"])
        == ("parallel", "forward+backward", "float32")
    )
    assert results["parallel_over_sequential"] == {"1024": ratio}
    threshold = linear_scan_speed.CPU_SLOWDOWN if results["platform"] == "cpu" else None
    assert results["holds"] == (ratio >= threshold if threshold else ratio < 1)
    assert results["summary"].startswith("| `python -m experiments.linear_scan_speed`")
    assert f"parallel {ratio:.2f}" in results["summary"]
