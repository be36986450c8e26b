"""Smoke test of experiments/vit_vs_cnn.py: LeNet and the matched ViTs, 20 steps, one seed."""

import json
import math

import pytest

from arch.errors import ConfigError
from experiments import vit_vs_cnn

MATCHED = ("vit_wide", "vit_deep", "vit_p4")
PARAMETERS = {"lenet": 13706, "vit_wide": 13834, "vit_deep": 12946, "vit_p4": 12946}


def vit_parameters(d: int, layers: int, ffn: int, tokens: int, patch_pixels: int) -> int:
    """Patch embedding, [CLS], learned positions (one per token), pre-norm blocks (4
    projections, 2 LayerNorms, feed-forward), the final LayerNorm, the 10-class head."""
    block = 4 * (d * d + d) + 2 * 2 * d + (d * ffn + ffn + ffn * d + d)
    embed = patch_pixels * d + d + d + tokens * d
    return embed + layers * block + 2 * d + d * 10 + 10


def test_the_matched_vits_have_about_lenets_parameters():
    by_hand = {
        "vit_wide": vit_parameters(32, 1, 128, tokens=17, patch_pixels=4),
        "vit_deep": vit_parameters(24, 2, 72, tokens=17, patch_pixels=4),
        "vit_p4": vit_parameters(24, 2, 72, tokens=5, patch_pixels=16),
    }
    assert by_hand == {name: PARAMETERS[name] for name in MATCHED}
    for name in MATCHED:
        assert abs(PARAMETERS[name] / PARAMETERS["lenet"] - 1) <= vit_vs_cnn.MATCH_TOLERANCE


def test_smoke(tmp_path):
    results = vit_vs_cnn.main(["--smoke", "--vits", *MATCHED, "--run-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["claim"] and isinstance(saved["holds"], bool)
    assert results["holds"] == saved["holds"]
    rows = {row["model"]: row for row in saved["models"]}
    assert {name: row["parameters"] for name, row in rows.items()} == PARAMETERS
    assert saved["training_examples"] == 1257  # 70% of 1797
    for row in rows.values():
        assert 0.0 <= row["test_accuracy_mean"] <= 1.0 and row["test_accuracy_std"] >= 0.0
        assert len(row["test_accuracy_per_seed"]) == 1  # smoke: one seed
        assert row["train_time_s"] > 0 and math.isfinite(row["compile_time_s"])
        assert len(row["validation_steps"]) == len(row["validation_accuracy_mean"]) >= 1
    assert all(rows[name]["matched"] for name in MATCHED)
    best = max(MATCHED, key=lambda name: rows[name]["test_accuracy_mean"])
    margin = rows["lenet"]["test_accuracy_mean"] - rows[best]["test_accuracy_mean"]
    assert saved["best_matched_vit"] == best
    assert saved["lenet_minus_best_matched_vit"] == margin
    assert saved["holds"] == (margin > 0)
    assert saved["summary"].startswith("| `python -m experiments.vit_vs_cnn`")
    assert (tmp_path / "vit_vs_cnn.png").exists()
    assert (tmp_path / "vit_p4-seed0" / "summary.json").exists()


def test_an_unknown_vit_size_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown ViT sizes.*vit_huge"):
        vit_vs_cnn.main(["--smoke", "--vits", "vit_huge", "--run-dir", str(tmp_path)])


def test_the_claim_needs_a_matched_vit(tmp_path):
    with pytest.raises(ConfigError, match="no ViT .* within 10%"):
        vit_vs_cnn.main(["--smoke", "--vits", "vit_default", "--run-dir", str(tmp_path)])
