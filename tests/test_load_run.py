"""train/load.py and `python -m train eval`: a run directory comes back as its model, task,
configurations and state, read only; its evaluation equals fit()'s final metrics to the bit;
every registered model's and task's configuration survives JSON; bad directories and steps are
one clear error."""

import dataclasses
import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from arch import MODELS
from arch.errors import ConfigError
from train.__main__ import main
from train.checkpoint import CheckpointConfig
from train.decide import module_config
from train.load import evaluate_run, from_fields, load_run
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import TASKS

sys.path.insert(0, os.path.dirname(__file__))
from helpers import cli_error  # noqa: E402
from test_run_directory import snapshot  # noqa: E402

CASES = {  # tiny runs of different kinds: arrays, a stream with dropout, a recurrent LM, seq2seq
    "mlp-digits": (MODELS["mlp"](hidden_sizes=(16, 8)), TASKS["digits"](batch_size=32)),
    "gpt-markov": (
        MODELS["gpt"](num_layers=1, features=16, num_heads=2, max_len=16, dropout_rate=0.1),
        TASKS["markov"](length=16, batch_size=8, vocab_size=8),
    ),
    "lstm-markov": (
        MODELS["rnn_lm"](cell="lstm", hidden_size=16, embed_size=8),
        TASKS["markov"](length=12, batch_size=8, vocab_size=8),
    ),
    "seq2seq-translation": (
        MODELS["rnn_seq2seq"](cell="gru", hidden_size=16, embed_size=8, attention="bahdanau"),
        TASKS["translation"](batch_size=8, min_length=2, max_length=5, num_words=6),
    ),
}


def train(name: str, run_dir, steps: int = 12, **run_fields) -> dict:
    model, task = CASES[name]
    fields = dict(
        steps=steps,
        eval_every=4,
        log_every=4,
        run_dir=str(run_dir),
        progress="off",
        tensorboard=False,
        eval_batch_size=64,
        checkpoint=CheckpointConfig(every=4, keep_last=2, keep_best=1),
    )
    fields.update(run_fields)
    return fit(model, task, OptimConfig(lr=3e-3, warmup_steps=2), RunConfig(**fields)).summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    return {name: (root / name, train(name, root / name)) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_evaluating_the_latest_checkpoint_equals_the_summary_to_the_bit(runs, name):
    run_dir, summary = runs[name]
    loaded = load_run(str(run_dir))
    names = {"lstm": "rnn_lm", "seq2seq": "rnn_seq2seq"}
    model_name, task_name = name.split("-")
    assert (loaded.model_name, loaded.task_name) == (names.get(model_name, model_name), task_name)
    assert loaded.step == 12 and int(loaded.state.step) == 12
    assert loaded.model == fit_model(name, loaded.task)
    for split in ("train", "validation", "test"):
        assert evaluate_run(loaded, split) == summary["final"][split], split


def fit_model(name: str, task):
    """The model as fit() trains it (num_outputs set from the task)."""
    from train.validate import adapt_model

    return adapt_model(CASES[name][0], task)


def test_the_restored_parameters_are_the_trained_ones_and_the_directory_is_untouched(tmp_path):
    run_dir = tmp_path / "run"
    model, task = CASES["mlp-digits"]
    optim = OptimConfig(lr=3e-3, warmup_steps=2)
    run = RunConfig(
        steps=8, eval_every=4, log_every=4, run_dir=str(run_dir), progress="off",
        tensorboard=False, checkpoint=CheckpointConfig(every=4),
    )  # fmt: skip
    result = fit(model, task, optim, run)
    before = snapshot(run_dir)
    loaded = load_run(str(run_dir))
    assert snapshot(run_dir) == before  # read only: no lock, no log, nothing set aside
    jax.tree.map(np.testing.assert_array_equal, loaded.state.params, result.state.params)
    jax.tree.map(np.testing.assert_array_equal, loaded.state.opt_state, result.state.opt_state)
    assert loaded.optim == optim and loaded.run == run and loaded.task == task
    assert [r["step"] for r in loaded.history if r["split"] == "validation"] == [4, 8]
    outputs = loaded.model.apply(loaded.variables, task.train_batch(loaded_position())["inputs"])
    assert outputs.shape == (32, 10)


def loaded_position():
    from train.tasks.base import DataPosition

    return DataPosition()


def test_steps_latest_best_and_a_number(runs):
    run_dir, summary = runs["mlp-digits"]
    kept = sorted(int(s) for s in os.listdir(run_dir / "checkpoints") if s.isdigit())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in history if r["split"] == "validation"}
    best = min(kept, key=lambda s: losses[s])
    assert load_run(str(run_dir), "best").step == best
    assert load_run(str(run_dir), "latest").step == max(kept)
    first = load_run(str(run_dir), kept[0])
    assert first.step == kept[0] and int(first.state.step) == kept[0]
    assert load_run(str(run_dir), str(kept[0])).step == kept[0]  # as the command line gives it


def test_bad_directories_and_steps_are_one_clear_error(tmp_path, runs):
    run_dir, _ = runs["mlp-digits"]
    with pytest.raises(ConfigError, match="no run directory at"):
        load_run(str(tmp_path / "absent"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="has no checkpoints directory"):
        load_run(str(tmp_path / "plain"))
    with pytest.raises(ConfigError, match=r"has no checkpoint at step 5 \(it keeps steps 8, 12\)"):
        load_run(str(run_dir), 5)
    with pytest.raises(ConfigError, match="step must be a number, 'latest' or 'best'"):
        load_run(str(run_dir), "first")
    loaded = load_run(str(run_dir))
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        evaluate_run(loaded, "dev")


def test_a_damaged_or_foreign_checkpoint_is_refused_and_left_where_it_is(tmp_path, runs):
    source, _ = runs["mlp-digits"]
    run_dir = tmp_path / "copy"
    shutil.copytree(source, run_dir)
    for directory, _, files in os.walk(run_dir / "checkpoints" / "12" / "state"):
        for name in files:
            if "ocdbt" in directory or name.startswith("d"):  # the array data files
                with open(os.path.join(directory, name), "r+b") as f:
                    f.write(b"\0" * 64)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match="the checkpoint at step 12 .* cannot be read"):
        load_run(str(run_dir))
    assert snapshot(run_dir) == before
    # a configuration that names a class no registry holds
    meta_dir = run_dir / "checkpoints" / "8" / "meta"
    meta_file = next(p for p in meta_dir.iterdir() if p.is_file())
    meta = json.loads(meta_file.read_text())
    meta["config"]["model"]["class"] = "Perceptronic"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(
        ConfigError, match="the saved model class 'Perceptronic' is not a registered"
    ):
        load_run(str(run_dir), 8)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_models_configuration_survives_json(name):
    model = MODELS[name]()
    saved = json.loads(json.dumps(module_config(model), default=str))
    assert from_fields(type(model), saved) == model


@pytest.mark.parametrize("name", list(TASKS))
def test_every_registered_tasks_configuration_survives_json(name):
    task = TASKS[name]()
    saved = json.loads(json.dumps(dataclasses.asdict(task), default=str))
    assert from_fields(type(task), saved) == task


def test_a_field_the_class_lacks_is_named():
    with pytest.raises(ConfigError, match="gives OptimConfig fields it does not have: momentum2"):
        from_fields(OptimConfig, {"momentum2": 0.9})


def test_the_eval_command_prints_and_writes_the_summarys_metrics(runs, capsys):
    run_dir, summary = runs["gpt-markov"]
    record = main(["eval", str(run_dir), "--split", "validation"])
    assert record["metrics"] == summary["final"]["validation"] and record["step"] == 12
    written = json.loads((run_dir / "eval" / "validation-12.json").read_text())
    assert written == record
    out = capsys.readouterr().out
    assert "gpt on markov at step 12" in out and "bits_per_char" in out
    assert "has no checkpoint at step 3" in cli_error(capsys, ["eval", str(run_dir), "--step", "3"])


def test_a_run_with_eval_files_still_resumes(runs, tmp_path):
    source, _ = runs["lstm-markov"]
    run_dir = tmp_path / "resumed"
    shutil.copytree(source, run_dir)
    main(["eval", str(run_dir)])
    summary = train("lstm-markov", run_dir)  # the finished run, run again: resumed, evaluated
    assert summary["resumed_from"] == 12 and summary["final"] == runs["lstm-markov"][1]["final"]


# python -m train sample


def test_sample_at_temperature_0_is_generate_on_the_restored_variables(runs, capsys):
    from arch.decoding import generate

    run_dir, _ = runs["gpt-markov"]
    record = main(["sample", str(run_dir), "--prompt", "1 2 3", "--num-tokens", "6",
                   "--temperature", "0"])  # fmt: skip
    loaded = load_run(str(run_dir))
    expected = generate(loaded.model, loaded.variables, np.array([[1, 2, 3]]), 6)
    assert record["tokens"] == np.asarray(expected)[0, 3:].tolist()
    assert capsys.readouterr().out.split() == [str(t) for t in [1, 2, 3, *record["tokens"]]]


def test_sampling_with_a_seed_is_generate_with_that_key(runs):
    from arch.decoding import generate

    run_dir, _ = runs["lstm-markov"]
    argv = ["sample", str(run_dir), "--prompt", "4", "--num-tokens", "8", "--temperature", "1.0",
            "--top-k", "3", "--seed", "5"]  # fmt: skip
    record = main(argv)
    loaded = load_run(str(run_dir))
    expected = generate(
        loaded.model, loaded.variables, np.array([[4]]), 8, jax.random.key(5), 1.0, 3
    )
    assert record["tokens"] == np.asarray(expected)[0, 1:].tolist()
    assert main(argv)["tokens"] == record["tokens"]  # the same seed, the same sample


def test_a_byte_level_run_samples_text(tmp_path, capsys):
    path = tmp_path / "text.txt"
    path.write_text("abcabcabd " * 300)
    model = MODELS["gpt"](num_layers=1, features=16, num_heads=2, max_len=32)
    task = TASKS["text"](path=str(path), length=16, batch_size=8, num_eval=8)
    run = RunConfig(steps=4, eval_every=4, log_every=4, run_dir=str(tmp_path / "run"),
                    progress="off", tensorboard=False)  # fmt: skip
    fit(model, task, OptimConfig(), run)
    record = main(["sample", run.run_dir, "--prompt", "abc", "--num-tokens", "10",
                   "--temperature", "0"])  # fmt: skip
    assert record["prompt"] == list(b"abc") and len(record["tokens"]) == 10
    printed = capsys.readouterr().out
    assert printed == "abc" + bytes(record["tokens"]).decode("utf-8", errors="replace") + "\n"


def test_a_seq2seq_run_translates_its_source(runs, capsys):
    run_dir, _ = runs["seq2seq-translation"]
    loaded = load_run(str(run_dir))
    source = [3, 5, 7, 4]
    record = main(["sample", str(run_dir), "--source", "3 5 7 4", "--beam-width", "2"])
    padded = np.zeros((1, loaded.task.max_length), np.int32)
    padded[0, :4] = source
    inputs = {"source": padded, "source_mask": padded > 0}
    expected = loaded.task.decode(loaded.model, loaded.variables, inputs, beam_width=2)[0].tolist()
    assert record["tokens"] == (expected[: expected.index(2)] if 2 in expected else expected)
    assert capsys.readouterr().out.split() == [str(t) for t in record["tokens"]]
    assert "source ids must lie in [3, 9)" in cli_error(
        capsys, ["sample", str(run_dir), "--source", "3 99"]
    )


def test_sample_refuses_what_cannot_be_sampled(runs, capsys):
    mlp, _ = runs["mlp-digits"]
    assert "mlp does not generate a continuation" in cli_error(capsys, ["sample", str(mlp)])
    gpt, _ = runs["gpt-markov"]
    assert "prompt token ids must lie in [0, 8)" in cli_error(
        capsys, ["sample", str(gpt), "--prompt", "1 9"]
    )
    assert "--prompt takes space-separated token ids" in cli_error(
        capsys, ["sample", str(gpt), "--prompt", "hello"]
    )
    assert "a prompt of at least one token" in cli_error(capsys, ["sample", str(gpt)])


# --init-from


def test_init_from_starts_from_the_saved_parameters(runs, tmp_path):
    from flax.traverse_util import flatten_dict

    source, _ = runs["mlp-digits"]
    saved = load_run(str(source), 8).state.params
    # the hidden layers frozen: they stay where they started, so the result shows where that was
    frozen = ["mlp", "digits", "--model.hidden-sizes", "16", "8", "--task.batch-size", "32",
              "--optim.freeze", "^hidden", "--steps", "1", "--progress", "off",
              "--no-tensorboard"]  # fmt: skip
    main([*frozen, "--run-dir", str(tmp_path / "all"), "--init-from", f"{source}:8"])
    tuned = load_run(str(tmp_path / "all")).state.params
    for name in ("hidden_0", "hidden_1"):
        jax.tree.map(np.testing.assert_array_equal, tuned[name], saved[name])
    assert not np.array_equal(tuned["head"]["kernel"], saved["head"]["kernel"])  # trained on
    main([*frozen, "--run-dir", str(tmp_path / "part"), "--init-from", str(source),
          "--init-include", "^hidden_0/"])  # fmt: skip
    part = flatten_dict(load_run(str(tmp_path / "part")).state.params, sep="/")
    latest = flatten_dict(load_run(str(source)).state.params, sep="/")
    for path, value in part.items():
        if path.startswith("head/"):
            continue  # trained for a step
        if path.startswith("hidden_0/"):
            np.testing.assert_array_equal(value, latest[path])
        elif "kernel" in path:  # a fresh initialisation, not the source's
            assert not np.array_equal(value, latest[path]), path
        else:  # fresh biases are zeros
            assert not np.any(value), path


def test_init_from_a_differently_shaped_model_names_the_parameter(runs, capsys):
    source, _ = runs["mlp-digits"]
    wider = ["mlp", "digits", "--model.hidden-sizes", "32", "8", "--steps", "1",
             "--init-from", str(source)]  # fmt: skip
    assert "hidden_0/kernel has shape (64, 16), the model needs (64, 32)" in cli_error(
        capsys, wider
    )
    assert "--init-include '^nothing' matches no parameter" in cli_error(
        capsys, [*wider, "--init-include", "^nothing"]
    )
    assert "--init-include needs --init-from" in cli_error(
        capsys, ["mlp", "digits", "--init-include", "x"]
    )


def test_running_a_finished_run_again_says_so_and_points_to_eval(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    argv = ["mlp", "digits", "--model.hidden-sizes", "8", "--steps", "4", "--eval-every", "4",
            "--log-every", "4", "--progress", "off", "--run-dir", run_dir]  # fmt: skip
    main(argv)
    capsys.readouterr()
    main(argv)
    out = capsys.readouterr().out
    assert "was already complete at step 4: nothing was trained" in out
    assert f"python -m train eval {run_dir}" in out and "examples/s" not in out


# --config FILE


def test_a_runs_config_json_reproduces_it_in_another_directory(runs, tmp_path):
    source, summary = runs["gpt-markov"]
    config = str(source / "config.json")
    again = main(["--config", config, "--run-dir", str(tmp_path / "b"), "--progress", "off"])
    assert again["final"] == summary["final"] and again["steps"] == 12
    saved = json.loads((source / "config.json").read_text())
    copied = json.loads((tmp_path / "b" / "config.json").read_text())
    saved["run"].pop("run_dir"), copied["run"].pop("run_dir")
    assert copied == saved


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_a_toml_or_yaml_file_of_the_same_fields_with_options_over_it(tmp_path, suffix):
    if suffix == ".yaml":
        pytest.importorskip("yaml")
        text = "model:\n  class: mlp\n  hidden_sizes: [12]\ntask:\n  class: Digits\n  batch_size: 16\noptim:\n  lr: 0.01\nrun:\n  steps: 40\n"  # noqa: E501
    else:
        text = '[model]\nclass = "mlp"\nhidden_sizes = [12]\n[task]\nclass = "Digits"\nbatch_size = 16\n[optim]\nlr = 0.01\n[run]\nsteps = 40\n'  # noqa: E501
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    run_dir = tmp_path / "run"
    main(["--config", str(path), "--steps", "3", "--task.batch-size", "8",
          "--run-dir", str(run_dir), "--progress", "off"])  # fmt: skip
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["hidden_sizes"] == [12] and config["optim"]["lr"] == 0.01
    assert (config["task"]["batch_size"], config["run"]["steps"]) == (8, 3)  # the options win


def test_bad_config_files_are_one_clear_error(tmp_path, capsys):
    assert "cannot read --config" in cli_error(capsys, ["--config", str(tmp_path / "none.json")])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert "cannot be parsed" in cli_error(capsys, ["--config", str(broken)])
    partial = tmp_path / "partial.toml"
    partial.write_text('[model]\nclass = "mlp"\n')
    assert "needs a model and a task section" in cli_error(capsys, ["--config", str(partial)])
    foreign = tmp_path / "foreign.toml"
    foreign.write_text('[model]\nclass = "mlp"\nwidth = 3\n[task]\nclass = "digits"\n')
    assert "gives MLP fields it does not have: width" in cli_error(
        capsys, ["--config", str(foreign)]
    )
    assert "--config needs a file" in cli_error(capsys, ["--config"])
