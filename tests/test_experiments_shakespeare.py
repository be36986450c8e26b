"""Smoke test of experiments/shakespeare.py on a small texts folder the test writes (the real
texts are an optional install): every family and the anchor come back, missing data is one
line, and the verdicts follow their rules."""

import json
import sys

import numpy as np
import pytest

from arch.errors import ConfigError
from experiments import shakespeare
from train.tasks.shakespeare import TEST_WORKS, VALIDATION_WORKS

WORDS = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """A folder of NAME_gut.txt works: two of train and the fixed validation / test works."""
    folder = tmp_path_factory.mktemp("texts")
    rng = np.random.default_rng(0)
    for name in ("hamlet", "sonnets", *VALIDATION_WORKS, *TEST_WORKS):
        lines = [" ".join(rng.choice(WORDS, 6)) for _ in range(30)]
        (folder / f"{name}_gut.txt").write_text("ROMEO.\n" + "\n".join(lines))
    return folder


def test_smoke(tmp_path, texts):
    results = shakespeare.main(["--smoke", "--data-dir", str(texts), "--run-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    rows = {r["family"]: r for r in saved["families"]}
    assert list(rows) == list(shakespeare.FAMILIES)
    assert set(saved["holds"]) == {"anchor", *shakespeare.FAMILIES[1:]}
    assert all(isinstance(v, bool) for v in saved["holds"].values())
    assert saved["anchor"]["validation_loss"] == rows["gpt"]["validation_loss"]
    assert saved["anchor"]["holds"] is False  # 5 steps stay near log(256) = 5.5 nats
    assert rows["gpt"]["as_good_as_gpt"] is None and rows["gpt"]["bits_vs_gpt"] == 0.0
    target = saved["target_parameters"]
    assert rows["gpt"]["parameters"] == target
    assert all(abs(r["parameters"] / target - 1) < 0.25 for r in rows.values())  # tiny widths
    for row in rows.values():
        assert 0 < row["test_bits_per_byte"] <= 9 and row["tokens_per_second"] > 0
        assert isinstance(row["sample"], str) and row["validation_curve"]
    assert saved["works"]["test"] == sorted(TEST_WORKS)
    assert (tmp_path / "shakespeare.png").stat().st_size > 0
    assert saved["summary"].startswith("| `python -m experiments.shakespeare`")
    assert results["holds"] == saved["holds"]


def test_missing_data_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="does not exist.*pip install") as error:
        shakespeare.main(["--smoke", "--data-dir", missing, "--run-dir", str(tmp_path / "r")])
    assert "\n" not in str(error.value)
    assert not (tmp_path / "r").exists()  # refused before anything was written
    monkeypatch.setattr(sys, "argv", ["shakespeare", "--smoke", "--data-dir", missing])
    with pytest.raises(SystemExit) as exit_:
        shakespeare.EXPERIMENT.command_line()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_gpt_is_always_trained(tmp_path, texts):
    with pytest.raises(ConfigError, match="must include gpt"):
        shakespeare.main(["--smoke", "--data-dir", str(texts), "--families", "lstm"])


def test_the_anchor_rule_is_ten_percent_of_nanogpts_loss():
    assert shakespeare.anchor_holds(2.06) and shakespeare.anchor_holds(1.70)
    assert not shakespeare.anchor_holds(2.07) and not shakespeare.anchor_holds(1.69)
    assert shakespeare.anchor_holds(1.88)


def test_a_family_holds_within_a_tenth_of_a_bit_of_the_gpt_either_way():
    assert shakespeare.family_holds(2.55, 2.50) and shakespeare.family_holds(2.45, 2.50)
    assert not shakespeare.family_holds(2.61, 2.50) and not shakespeare.family_holds(2.39, 2.50)
