import json

from experiments import cold_start


def test_cold_start_smoke(tmp_path):
    results = cold_start.main(["--smoke", "--run-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["claim"] and isinstance(saved["holds"], bool)
    assert set(saved["median_seconds"]) == {"cache off", "cache on"}
    assert all(t > 0 for t in saved["median_seconds"].values())
    assert (
        results["speedup"]
        == saved["median_seconds"]["cache off"] / saved["median_seconds"]["cache on"]
    )
    assert (tmp_path / "cold_start.png").exists()
