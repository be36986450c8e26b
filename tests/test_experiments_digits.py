import json

from experiments import digits

PARAMETERS = {"mlp": 85002, "lenet": 13706, "resnet": 19706}  # MLP (256, 256), defaults


def test_digits_smoke(tmp_path):
    results = digits.main(["--smoke", "--run-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["claim"] and isinstance(saved["holds"], bool)
    rows = {row["model"]: row for row in saved["models"]}
    assert {name: row["parameters"] for name, row in rows.items()} == PARAMETERS
    for row in rows.values():
        assert 0.0 <= row["test_accuracy_mean"] <= 1.0 and row["test_accuracy_std"] >= 0.0
        assert len(row["test_accuracy_per_seed"]) == 1  # smoke: one seed
        assert row["wall_time_s"] > 0 and row["examples_per_second"] > 0
        assert len(row["validation_steps"]) == len(row["validation_accuracy_mean"]) >= 1
    lenet, mlp = rows["lenet"], rows["mlp"]
    margin = lenet["test_accuracy_mean"] - mlp["test_accuracy_mean"]
    assert saved["lenet_minus_mlp_test_accuracy"] == margin
    assert saved["holds"] == (margin > 0)
    assert results["holds"] == saved["holds"]
    assert (tmp_path / "digits.png").exists()
    assert (tmp_path / "lenet-seed0" / "summary.json").exists()
