"""Smoke test of experiments/analogies.py: one seed, marker noise 0.2 and 0.5, 800 steps."""

import json
import os

import pytest

from experiments import analogies


def test_smoke_run_writes_results_and_plot_and_the_claim_holds(tmp_path, capsys):
    returned = analogies.main(["--smoke", "--run-dir", str(tmp_path)])

    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert results == json.loads(json.dumps(returned, default=float))
    assert os.path.getsize(tmp_path / "analogies.png") > 0
    assert results["chance"] == pytest.approx(1 / 69)
    assert results["analogies_per_kind"] == {"group": 360, "gender": 264, "age": 264}
    assert set(results["accuracy"]) == {"0.2", "0.5"}
    planted, unplanted = results["accuracy"]["0.2"], results["accuracy"]["0.5"]
    for kind in ("group", "gender", "age"):
        assert planted[kind][0] >= 0.9 > results["only_c"]["0.2"][kind][0]
        # at noise 0.5 gender and age markers carry no information: the planted answer is
        # only one of c's indistinguishable siblings, and accuracy falls far below
        assert unplanted[kind][0] < 0.6
    assert results["neighbour_fraction"]["0.2"] == [1.0]
    assert set(results["neighbours"]) == {"king", "girl", "mare", "he", "crown"}
    assert results["holds"] is True
    printed = capsys.readouterr().out
    assert results["summary"] in printed and results["summary"].startswith("| `python -m")
