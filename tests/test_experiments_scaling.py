"""experiments/scaling.py: the smoke sweep's rows, its FLOP counts against hand math, and the
power-law fit on synthetic data of known parameters."""

import json
import math

import numpy as np
import pytest

from arch import MODELS
from experiments import scaling
from train.optim import OptimConfig
from train.tasks import MarkovLanguage

VOCAB = 16


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("scaling")
    results = scaling.main(["--smoke", "--run-dir", str(run_dir)])
    return run_dir, results, json.loads((run_dir / "results.json").read_text())


def lstm_parameters(hidden: int) -> int:
    """Embedding v*e (e = min(32, n)) + cell 4n(e + n + 1) + output layer n*v + v."""
    embed = min(32, hidden)
    return VOCAB * embed + 4 * hidden * (embed + hidden + 1) + hidden * VOCAB + VOCAB


def test_every_family_and_size_has_a_row_growing_along_the_ladder(smoke):
    run_dir, results, saved = smoke
    config = saved["config"]
    assert (run_dir / "scaling_parameters.png").exists()
    assert (run_dir / "scaling_compute.png").exists()
    for family in config["families"]:
        rows = [r for r in saved["runs"] if r["family"] == family]
        ladder = [r for r in rows if r["steps"] == config["steps"]]
        key = {"gpt": "gpt_widths", "lstm": "lstm_widths"}.get(family, "linear_widths")
        assert [r["width"] for r in ladder] == config[key]
        for smaller, larger in zip(ladder, ladder[1:], strict=False):
            assert larger["parameters"] > smaller["parameters"]
            assert larger["flops_per_step"] > smaller["flops_per_step"]
        middle = config[key][len(config[key]) // 2]
        shorter = [r["steps"] for r in rows if r["steps"] != config["steps"]]
        assert shorter == [round(f * config["steps"]) for f in config["budget_fractions"]]
        assert all(r["width"] == middle for r in rows if r["steps"] != config["steps"])
        for r in rows:
            assert r["train_flops"] == r["steps"] * r["flops_per_step"] and not r["uncounted"]
            assert math.isfinite(r["test_bits_per_char"]) and r["train_time_s"] > 0
            assert r["curve_steps"][-1] == r["steps"]
    lstm = [r for r in saved["runs"] if r["family"] == "lstm" and r["steps"] == config["steps"]]
    assert [r["parameters"] for r in lstm] == [lstm_parameters(n) for n in config["lstm_widths"]]
    # XLA's count sees the LSTM's scan body once; without loops (the GPT) it agrees with ours
    assert all(r["xla_flops_per_step"] < 0.75 * r["flops_per_step"] for r in lstm)
    for r in (r for r in saved["runs"] if r["family"] == "gpt"):
        assert r["xla_flops_per_step"] == pytest.approx(r["flops_per_step"], rel=0.05)
    verdicts = saved["verdicts"]
    assert saved["holds"] == all(all(v.values()) for v in verdicts.values()) == results["holds"]
    assert [row["family"] for row in saved["exponents"]] == list(config["families"])
    assert saved["summary"].startswith("| `python -m experiments.scaling`")


def lstm_step_flops(length: int, hidden: int = 128, batch: int = 4) -> dict:
    task = MarkovLanguage(batch_size=batch, length=length, num_eval=4)
    model = MODELS["rnn_lm"](cell="lstm", hidden_size=hidden, embed_size=32)
    return scaling.step_flops(model, task, OptimConfig(), 10)


def test_lstm_step_flops_grow_linearly_in_length_and_match_hand_math():
    hidden, embed, batch = 128, 32, 4
    counts = {t: lstm_step_flops(t, hidden, batch) for t in (16, 32, 48)}
    flops = {t: c["flops_per_step"] for t, c in counts.items()}
    per_16 = flops[32] - flops[16]
    assert flops[48] - flops[32] == pytest.approx(per_16, rel=1e-9)  # affine in the length
    # per token: products 2 x (4n(e + n) + n v) forward, twice that backward; the gates'
    # elementwise arithmetic adds a few percent
    products = 3 * 2 * (4 * hidden * (embed + hidden) + hidden * VOCAB)
    assert 1.0 < per_16 / (16 * batch) / products < 1.08
    # XLA's cost analysis counts one step of the scan bodies, whatever the length: it sees
    # only the products outside the loops (the embedding, the logits, the custom backward's
    # weight gradients after its loop), so it grows more slowly than the real count
    xla = {t: c["xla_flops_per_step"] for t, c in counts.items()}
    assert xla[48] - xla[16] < 0.5 * (flops[48] - flops[16])
    assert all(xla[t] < 0.6 * flops[t] for t in xla)


def test_fit_recovers_a_known_power_law_with_an_irreducible_term():
    x = np.geomspace(1e3, 1e5, 7)
    e, a, alpha = 2.1, 40.0, 0.45
    rng = np.random.default_rng(0)
    loss = e + a * x**-alpha + rng.normal(0, 1e-4, x.size)
    fit = scaling.fit_power_law(x, loss)
    assert fit["E"] == pytest.approx(e, abs=0.01)
    assert fit["alpha"] == pytest.approx(alpha, abs=0.02)
    assert fit["A"] * fit["x0"] ** fit["alpha"] == pytest.approx(a, rel=0.1)
    assert fit["r2"] > 0.9999 and not fit["ill_conditioned"] and fit["notes"] == []
    fixed = scaling.fit_power_law(x, loss, floor=e)
    assert fixed["E"] == e and fixed["alpha"] == pytest.approx(alpha, abs=0.005)
    pure = scaling.fit_power_law(x, a * x**-alpha, floor=0.0)
    assert pure["alpha"] == pytest.approx(alpha, rel=1e-4)


def test_fit_flags_too_few_points_and_a_floor_at_its_bound():
    x = np.array([1e3, 1e4, 1e5])
    none = scaling.fit_power_law(x[:2], [3.0, 2.5])
    assert none["ill_conditioned"] and math.isnan(none["alpha"]) and "no fit" in none["notes"][0]
    exact = scaling.fit_power_law(x, [3.0, 2.5, 2.3])
    assert exact["ill_conditioned"] and any("exact fit" in n for n in exact["notes"])
    # a pure power law has no floor: the fitted E goes to its lower bound, 0
    x = np.geomspace(1e3, 1e6, 8)
    floorless = scaling.fit_power_law(x, 5.0 * x**-0.3)
    assert floorless["E"] == pytest.approx(0.0, abs=1e-3)
    assert "E at its bound" in floorless["notes"] and floorless["ill_conditioned"]


def test_frontier_keeps_the_points_no_cheaper_point_beats():
    points = [(4.0, 2.0), (1.0, 3.0), (2.0, 3.5), (3.0, 2.5), (5.0, 2.2)]
    assert scaling.frontier(points) == [(1.0, 3.0), (3.0, 2.5), (4.0, 2.0)]
