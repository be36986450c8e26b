"""Smoke test of experiments/attention_speed.py: t = 64, b2 d32 h4, blocks 16 and 512, 2 passes."""

from helpers import TORCH, speed_results

from experiments import attention_speed


def test_smoke_run_measures_every_kernel_and_they_agree(tmp_path):
    results = speed_results(attention_speed, tmp_path)
    assert results["lengths"] == [64]

    rows = {r["implementation"]: r for r in results["measurements"]}
    expected = {"einsum", "xla", "blockwise 16", "blockwise 512"}
    assert set(rows) == expected | ({"torch sdpa"} if TORCH else set())
    for name, row in rows.items():
        assert row["length"] == 64
        assert len(row["samples"]) == 2 and all(s > 0 for s in row["samples"])
        seconds = row["seconds"]
        assert 0 < seconds["min"] <= seconds["median"] <= seconds["max"]
        # same function: outputs and the three gradients agree with the einsum kernel's
        assert row["max_abs_difference"] < 1e-4, name
        assert (row["compile_seconds"] is None) == (name == "torch sdpa")
        # arrays of the call are counted: q, k, v, cotangent in; output, dQ, dK, dV out
        assert row["peak_bytes"] >= 8 * 2 * 64 * 32 * 4
        if name != "torch sdpa":
            memory = row["memory"]
            total = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
            assert row["peak_bytes"] == total
    assert rows["einsum"]["time_vs_einsum"] == 1.0 and rows["einsum"]["max_abs_difference"] == 0
    assert results["max_abs_difference"] < 1e-4
    assert results["summary"].startswith("| `python -m experiments.attention_speed`")
    if TORCH:
        assert rows["torch sdpa"]["time_vs_torch"] == 1.0
        assert rows["torch sdpa"]["memory_vs_torch"] == 1.0
        assert isinstance(results["holds"], bool)
        by_block = results["goal_by_block_size"]
        assert set(by_block) == {"16", "512"}  # JSON keys
        assert results["holds"] == by_block["512"]["meets_goal"]  # the default block size
        blockwise = rows["blockwise 16"]
        assert by_block["16"]["time_vs_torch"] == blockwise["time_vs_torch"]
        assert by_block["16"]["memory_vs_torch"] == blockwise["memory_vs_torch"]
    else:
        assert results["holds"] is None and results["goal_by_block_size"] == {}
