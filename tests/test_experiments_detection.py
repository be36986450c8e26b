"""Smoke test of experiments/detection.py: 20 steps, 64 held-out scenes, mAP and the picture."""

import json
import math

from experiments import detection


def test_smoke(tmp_path):
    results = detection.main(["--smoke", "--run-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["claim"] and saved["holds"] == results["holds"]
    assert saved["holds"] == (saved["map"] > detection.MAP_BAR)
    assert saved["parameters"] == 60809
    assert saved["test_scenes"] == 64 and sum(saved["test_objects_per_class"]) >= 64
    assert len(saved["ap"]) == len(saved["classes"]) == 4
    assert 0.0 <= saved["map"] <= 1.0 and 0.0 <= saved["validation_map"] <= 1.0
    assert math.isclose(saved["map"], sum(saved["ap"]) / 4)  # every class has test objects
    assert saved["map_iou_0.75"] <= saved["map"]  # a stricter overlap finds fewer matches
    assert saved["final_metrics"]["test"]["loss"] > 0
    assert saved["summary"].startswith("| `python -m experiments.detection`")
    assert (tmp_path / "detection.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "summary.json").exists()
