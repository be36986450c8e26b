import json

from experiments import transfer


def test_transfer_smoke(tmp_path):
    results = transfer.main(["--smoke", "--run-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["claim"] and isinstance(saved["holds"], bool)
    assert saved["sizes"] == [10]  # smoke: the smallest size only
    assert set(saved["test_accuracy_mean"]) == set(transfer.METHODS)
    assert set(transfer.METHODS) == {"frozen", "frozen_random", "probe", "finetune", "scratch"}
    for method, by_size in saved["test_accuracy"].items():
        assert list(by_size) == ["10"], method
        assert all(0.0 <= a <= 1.0 for a in by_size["10"]) and len(by_size["10"]) == 1
    means = saved["test_accuracy_mean"]
    margin = means["frozen"]["10"] - means["scratch"]["10"]
    assert saved["frozen_minus_scratch"] == {"10": margin}
    assert saved["holds"] == (margin > 0)
    # even 20 pretraining steps on 0-4 are far above chance (0.2)
    assert all(a > 0.5 for a in saved["pretrain_test_accuracy"])
    assert results["holds"] == saved["holds"]
    assert (tmp_path / "transfer.png").exists()
