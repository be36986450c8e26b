"""Smoke test of experiments/gpt_speed.py: a 1-layer width-32 GPT, 2 timed passes."""

import importlib.util
import json

import pytest

from experiments import gpt_speed

TORCH = importlib.util.find_spec("torch") is not None


def test_smoke_run_times_every_implementation_of_the_same_model(tmp_path):
    returned = gpt_speed.main(["--smoke", "--run-dir", str(tmp_path)])

    results = json.loads((tmp_path / "results.json").read_text())
    assert results == json.loads(json.dumps(returned, default=float))
    rows = {r["implementation"]: r for r in results["rows"]}
    expected = {"ours (einsum)", "ours (xla)"} | ({"torch eager"} if TORCH else set())
    assert set(rows) == expected
    # the PyTorch model is the same architecture: the same number of parameters
    assert len({r["parameters"] for r in rows.values()}) == 1
    assert results["flops_per_step"] > 0 and results["matmul_peak"]["median"] > 0
    for row in rows.values():
        assert len(row["samples"]) == 2 and all(s > 0 for s in row["samples"])
        per_second = results["flops_per_step"] / (row["step_ms"] / 1e3)
        assert row["flops_per_second"] == pytest.approx(per_second, rel=1e-9)
        assert row["utilisation"] > 0 and row["utilisation_of_own_peak"] > 0
        if row["implementation"].startswith("ours"):
            assert row["utilisation_of_own_peak"] == row["utilisation"]
        assert (row["compile_seconds"] is None) == (row["implementation"] == "torch eager")
    if TORCH:
        assert rows["torch eager"]["vs_torch"] == 1.0 and isinstance(results["holds"], bool)
    else:
        assert results["holds"] is None
