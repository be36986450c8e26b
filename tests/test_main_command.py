"""The `python -m train` entry point as a user runs it: a separate process, real exit codes."""

import json
import subprocess
import sys

import pytest

from train.__main__ import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], capture_output=True, text=True)


def test_train_command_trains_and_writes_summary(tmp_path):
    result = run(
        "perceptron",
        "blobs",
        "--steps",
        "60",
        "--optim.lr",
        "0.05",
        "--run-dir",
        str(tmp_path),
        "--progress",
        "off",
        "--no-tensorboard",
    )
    assert result.returncode == 0, result.stderr
    assert f"run directory: {tmp_path}" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "Perceptron" and summary["steps"] == 60
    assert summary["final"]["test"]["accuracy"] >= 0.99  # blobs are linearly separable


def test_unknown_model_exits_with_error_naming_the_choices(tmp_path):
    result = run("lenett", "digits", "--run-dir", str(tmp_path))
    assert result.returncode != 0
    assert "lenet" in result.stdout + result.stderr
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(("model", "bar"), [("mlp", 0.95), ("lenet", 0.97)])
def test_default_command_reaches_the_stated_accuracy_on_digits(tmp_path, model, bar):
    # `python -m train MODEL digits` with every default (1000 steps), in-process for speed
    summary = main(
        [model, "digits", "--run-dir", str(tmp_path), "--progress", "off", "--no-tensorboard"]
    )
    assert summary["steps"] == 1000
    assert summary["final"]["test"]["accuracy"] >= bar


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["mlp", "digits", "--help"], "usage: python -m train mlp digits "),
        (["eval", "--help"], "usage: python -m train eval [-h] RUN_DIR"),
        (["sample", "--help"], "usage: python -m train sample [-h] [OPTIONS] RUN_DIR"),
    ],
)
def test_help_names_the_command_a_user_types(argv, usage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(usage)


def test_the_listing_gives_whole_sentences(capsys):
    main(["--list"])
    rows = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()]
    described = [row for row in rows if len(row) == 2]
    assert len(described) >= 30  # every model and task
    for name, description in described:  # not cut where the docstring's first line wraps
        assert description.endswith("."), (name, description)
