"""fit() and the command line: the run directory, the NaN guard, output sizes, bad input."""

import dataclasses
import json
import math

import numpy as np
import pytest
from helpers import cli_error

from arch import MLP, MODELS, LeNet, Perceptron
from arch.errors import ConfigError
from train.__main__ import main
from train.checkpoint import CheckpointConfig
from train.guards import NonFiniteError
from train.loop import FitResult, RunConfig, evaluate, fit
from train.optim import OptimConfig
from train.tasks import TASKS, DataPosition, Digits, Xor
from train.validate import adapt_model

QUIET = dict(progress="off", tensorboard=False, compilation_cache=False)
TRAIN_KEYS = {
    "loss",
    "accuracy",
    "grad_norm",
    "param_norm",
    "update_norm",
    "lr",
    "examples_per_second",
}


def test_fit_writes_the_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "run"
    model, task, optim = MLP(hidden_sizes=(8,)), Xor(noise=0.1), OptimConfig(lr=0.02)
    run = RunConfig(
        run_dir=str(run_dir),
        steps=40,
        log_every=10,
        eval_every=20,
        progress="lines",
        compilation_cache=False,
    )
    result = fit(model, task, optim, run)

    config = json.loads((run_dir / "config.json").read_text())
    assert set(config) == {"model", "task", "optim", "run"}
    assert config["model"] == {
        "class": "MLP",
        "num_outputs": 1,  # set from the task
        "hidden_sizes": [8],
        "activation": "relu",
        "dropout_rate": 0.0,
        "dtype": "float32",
        "param_dtype": "float32",
    }
    assert config["task"] == {"class": "Xor", **dataclasses.asdict(task)}
    assert config["optim"] == json.loads(json.dumps(dataclasses.asdict(optim)))
    assert config["optim"]["lr"] == 0.02 and config["optim"]["name"] == "adam"
    assert config["run"] == json.loads(json.dumps(dataclasses.asdict(run)))  # tuples: lists

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [
        (10, "train"),
        (20, "train"),
        (20, "validation"),
        (30, "train"),
        (40, "train"),
        (40, "validation"),
    ]
    assert records == result.history
    for record in records:
        values = [v for k, v in record.items() if k not in ("step", "split")]
        assert all(math.isfinite(v) for v in values)
        if record["split"] == "train":
            assert set(record) == {"step", "split", *TRAIN_KEYS}
            assert record["lr"] == pytest.approx(0.02)  # constant schedule
            assert record["examples_per_second"] > 0 and record["grad_norm"] > 0
        else:
            assert set(record) == {"step", "split", "loss", "accuracy"}
        assert 0 <= record["accuracy"] <= 1
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == result.summary
    assert set(summary["final"]) == {"train", "validation", "test"}
    for metrics in summary["final"].values():
        assert set(metrics) == {"loss", "accuracy"}
    # the last validation record and the final validation metrics come from the same state
    assert summary["final"]["validation"] == {k: records[-1][k] for k in ("loss", "accuracy")}
    assert summary["steps"] == 40 and summary["model"] == "MLP" and summary["task"] == "Xor"
    assert summary["parameters"] == (2 * 8 + 8) + (8 * 1 + 1)
    assert summary["wall_time"] > summary["compile_time"] > 0
    assert summary["examples_per_second"] > 0

    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    content = events[0].read_bytes()
    for tag in (b"train/loss", b"train/grad_norm", b"validation/accuracy"):
        assert tag in content

    printed = capsys.readouterr().out
    assert "step 10 train: loss " in printed and "step 40 validation: loss " in printed


@dataclasses.dataclass(frozen=True)
class XorWithNanBatch(Xor):
    """Xor whose fourth training batch is all NaN."""

    def train_batch(self, position: DataPosition) -> dict:
        batch = super().train_batch(position)
        if position == DataPosition(0, 3):
            batch = {**batch, "inputs": np.full_like(batch["inputs"], np.nan)}
        return batch


def test_a_nan_batch_stops_training_at_its_step(tmp_path):
    run = RunConfig(steps=10, log_every=5, eval_every=5, run_dir=str(tmp_path / "run"), **QUIET)
    # loss, gradient, parameters and update are all NaN here: the loss is named first
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 4;") as error:
        fit(MLP(hidden_sizes=(8,)), XorWithNanBatch(), run=run)
    assert (error.value.step, error.value.metric, error.value.history) == (4, "loss", [])
    # nothing is logged for the interval that held the NaN
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_huge_learning_rate_is_caught_at_the_first_step():
    run = RunConfig(steps=10, log_every=10, eval_every=10, **QUIET)
    # one SGD step of size 1e30 puts the parameter norm beyond float32: 1e30**2 overflows
    with pytest.raises(NonFiniteError, match="non-finite param_norm .* at step 1;") as error:
        fit(MLP(hidden_sizes=(8,)), Xor(), OptimConfig(name="sgd", lr=1e30), run)
    assert "--optim.lr" in str(error.value)
    assert issubclass(NonFiniteError, FloatingPointError)


def test_adapt_model_takes_the_size_from_the_task():
    assert adapt_model(MLP(), Xor()) == MLP(num_outputs=1)
    assert adapt_model(Perceptron(), Digits()) == Perceptron(num_outputs=10)
    assert adapt_model(MLP(hidden_sizes=(3,)), Digits(classes=(1, 2))) == MLP(
        num_outputs=2, hidden_sizes=(3,)
    )
    assert adapt_model(LeNet(num_outputs=10), Digits()) == LeNet()


def test_an_explicit_wrong_num_outputs_is_refused():
    with pytest.raises(ConfigError, match="needs 10; drop --model.num-outputs or set it to 10"):
        fit(MLP(num_outputs=7), Digits(), run=RunConfig(steps=1, **QUIET))


def run_options(tmp_path, steps: int = 2) -> list[str]:
    directory = str(tmp_path / "cli")
    return ["--run-dir", directory, "--progress", "off", "--steps", str(steps)]


@pytest.mark.parametrize(
    "argv, unknown, names",
    [(["mlpp", "digits"], "mlpp", MODELS), (["mlp", "digitz"], "digitz", TASKS)],
    ids=["model", "task"],
)
def test_cli_unknown_model_or_task_lists_the_choices(argv, unknown, names, tmp_path, capsys):
    message = cli_error(capsys, [*argv, *run_options(tmp_path)])
    assert unknown in message
    for name in names:
        assert name in message
    assert not (tmp_path / "cli").exists()


def test_cli_negative_learning_rate_is_a_usage_error(tmp_path, capsys):
    # OptimConfig raises ConfigError, which tyro lets through while it builds the config;
    # main() prints it as one line with exit status 2
    message = cli_error(capsys, ["mlp", "xor", "--optim.lr", "-1", *run_options(tmp_path)])
    assert "optim.lr must be > 0, got -1.0" in message
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):
        OptimConfig(lr=-1)
    assert not (tmp_path / "cli").exists()


def test_cli_images_model_on_points_fails_before_training(tmp_path, capsys):
    message = cli_error(capsys, ["lenet", "xor", *run_options(tmp_path)])
    assert message.startswith("error: ") and "images" in message
    assert "LeNet" in message and "(32, 2)" in message and "Traceback" not in message
    assert not (tmp_path / "cli").exists()  # nothing written: it failed before any work


def test_cli_sets_the_fields(tmp_path, capsys):
    run_dir = tmp_path / "cli"
    summary = main(
        [
            "mlp",
            "xor",
            "--model.hidden-sizes",
            "8",
            "8",
            "--optim.lr",
            "0.01",
            "--steps",
            "30",
            "--run-dir",
            str(run_dir),
            "--progress",
            "off",
            "--task.batch-size",
            "16",
            "--no-compilation-cache",
            "--no-tensorboard",
        ]
    )
    assert summary["steps"] == 30 and summary["model"] == "MLP" and summary["task"] == "Xor"
    assert summary["parameters"] == (2 * 8 + 8) + (8 * 8 + 8) + (8 * 1 + 1)
    assert math.isfinite(summary["final"]["test"]["loss"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["hidden_sizes"] == [8, 8]
    assert config["optim"]["lr"] == 0.01
    assert config["task"]["batch_size"] == 16
    assert config["run"]["steps"] == 30
    assert config["run"]["compilation_cache"] is False
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert not (run_dir / "tensorboard").exists()
    assert f"run directory: {run_dir}" in capsys.readouterr().out


def test_cli_list_names_every_model_and_task(capsys):
    assert main(["--list"]) == {}
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0] for line in lines if line.startswith("  ")}
    assert listed == set(MODELS) | set(TASKS)
    assert lines[0] == "models:" and "tasks:" in lines


def test_reported_perplexity_is_exp_of_the_mean_loss():
    # evaluation averages over batches; perplexity must be exp(mean loss), not a mean of exps
    from arch import RNNLanguageModel
    from train.tasks import TASKS

    task = TASKS["markov"](batch_size=8, length=16, num_eval=40)
    run = RunConfig(steps=3, log_every=3, eval_every=3, eval_batch_size=16, **QUIET)
    summary = fit(RNNLanguageModel(cell="gru", hidden_size=16), task, run=run).summary
    for metrics in summary["final"].values():
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-6)
        assert metrics["bits_per_char"] == pytest.approx(metrics["loss"] / math.log(2), rel=1e-5)


def test_quiet_run_config_for_studies():
    off = CheckpointConfig(enabled=False)  # a study's runs never resume from old ones
    assert RunConfig.quiet(100, evaluations=4) == RunConfig(
        steps=100, eval_every=25, log_every=25, progress="off", tensorboard=False, checkpoint=off
    )
    assert RunConfig.quiet(10, seed=3, log_every=2) == RunConfig(
        steps=10,
        eval_every=10,
        log_every=2,
        seed=3,
        progress="off",
        tensorboard=False,
        checkpoint=off,
    )


def test_fit_result_curve_lists_a_metric_at_every_evaluation_of_a_split():
    history = [
        {"split": "train", "step": 1, "loss": 2.0},
        {"split": "validation", "step": 1, "loss": 1.5},
        {"split": "validation", "step": 2, "loss": 1.0},
    ]
    result = FitResult(model=None, state=None, summary={}, history=history)
    assert result.curve("loss") == [(1, 1.5), (2, 1.0)]
    assert result.curve("loss", split="train") == [(1, 2.0)]


def test_evaluate_weights_positions_and_per_example_metrics_apart():
    """Two batches: 10 real positions in 2 examples, then 2 positions in 2 examples: a
    per-position metric is weighted 10 : 2, a "sequence_*" one 2 : 2."""

    class Stub:
        def eval_batches(self, split, batch_size):
            return [0, 1]

        def finalize_metrics(self, metrics):
            return metrics

    results = [
        {"accuracy": 1.0, "sequence_accuracy": 1.0, "count": 10.0, "examples": 2.0},
        {"accuracy": 0.0, "sequence_accuracy": 0.0, "count": 2.0, "examples": 2.0},
    ]
    means = evaluate(lambda state, i: results[i], None, Stub(), "test", 2)
    assert means == {"accuracy": 10 / 12, "sequence_accuracy": 0.5}
