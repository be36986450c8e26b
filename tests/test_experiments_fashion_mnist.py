"""Smoke test of experiments/fashion_mnist.py on small IDX files the test writes (the real data
is an optional install): every model trains, the verdict follows the published ranges."""

import json

import numpy as np
import pytest

from arch.errors import ConfigError
from experiments import fashion_mnist
from train.tasks.idx import write_idx


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for name, shape in [("train-images-idx3-ubyte", (5200, 28, 28)), ("t10k-images-idx3-ubyte",
                        (200, 28, 28))]:  # fmt: skip
        write_idx(directory / name, rng.integers(0, 256, shape).astype(np.uint8))
        labels = name.replace("images-idx3", "labels-idx1")
        write_idx(directory / labels, rng.integers(0, 10, shape[0]).astype(np.uint8))
    return directory


def test_smoke(tmp_path, data_dir):
    results = fashion_mnist.main(
        [
            "--smoke",
            "--data-dir",
            str(data_dir),
            "--models",
            "mlp",
            "vit",
            "--run-dir",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["holds"] == results["holds"] is False  # 5 steps on noise reach nothing
    rows = {r["model"]: r for r in saved["models"]}
    assert set(rows) == {"mlp", "vit"} and saved["training_examples"] == 200
    assert rows["mlp"]["reaches_published"] is False and rows["vit"]["reaches_published"] is None
    assert rows["mlp"]["published"] == [0.87, 0.88]
    assert (tmp_path / "fashion_mnist.png").stat().st_size > 0
    assert saved["summary"].startswith("| `python -m experiments.fashion_mnist`")


def test_the_verdict_is_the_published_ranges_low_end_less_the_slack():
    row = lambda model, accuracy: {"model": model, "test_accuracy_mean": accuracy}
    assert fashion_mnist.verdict(row("lenet", 0.8901)) is True
    assert fashion_mnist.verdict(row("lenet", 0.8899)) is False
    assert fashion_mnist.verdict(row("vit", 0.99)) is None


def test_an_unknown_model_is_refused(tmp_path):
    with pytest.raises((ConfigError, SystemExit)):
        fashion_mnist.main(["--smoke", "--models", "gpt", "--run-dir", str(tmp_path)])
