import json
import time

from experiments import cold_start


def test_cold_start_smoke(tmp_path):
    started = time.perf_counter()
    results = cold_start.main(["--smoke", "--run-dir", str(tmp_path)])
    elapsed = time.perf_counter() - started
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["claim"] and isinstance(saved["holds"], bool)
    assert set(saved["median_seconds"]) == {"cache off", "cache on"}
    assert all(t > 0 for t in saved["median_seconds"].values())
    # --smoke: one repeat of 5 steps, each timed process inside the wall time of the whole study
    assert saved["command"].endswith("--steps 5")
    assert {setting: len(times) for setting, times in saved["seconds"].items()} == {
        "cache off": 1,
        "cache on": 1,
    }
    assert sum(saved["seconds"]["cache off"] + saved["seconds"]["cache on"]) < elapsed
    for setting, times in saved["seconds"].items():
        assert min(times) <= saved["median_seconds"][setting] <= max(times)
    # the speed-up is above 1 exactly when the cache made the start faster; it holds above 1
    faster = saved["median_seconds"]["cache on"] < saved["median_seconds"]["cache off"]
    assert (saved["speedup"] > 1) == faster
    assert not saved["holds"] or saved["speedup"] > 1
    assert (tmp_path / "cold_start.png").exists()
