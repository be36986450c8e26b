"""Checkpoints and resumption (train/checkpoint.py, train/loop.py): a run killed at a random
step (SIGKILL, in a subprocess: tests/resume_driver.py) and resumed ends bit-identical to an
uninterrupted one; so does one killed inside a save, or with its latest checkpoint damaged;
SIGTERM saves and exits cleanly; a planted NaN stops with the step named; a different
configuration refuses to resume; a checkpoint restores onto another device count."""

import dataclasses
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from train.checkpoint import CheckpointConfig, config_differences
from train.decide import ConfigMismatchError
from train.guards import NonFiniteError
from train.loop import fit
from train.optim import OptimConfig

sys.path.insert(0, os.path.dirname(__file__))
from resume_driver import case, configs, plant, poison  # noqa: E402

DRIVER = os.path.join(os.path.dirname(__file__), "resume_driver.py")
TIMING = ("examples_per_second",)  # the only logged values that depend on the clock


def drive(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, DRIVER, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def train(name: str, run_dir, **run_fields):
    model, task = case(name)
    optim, run = configs(str(run_dir), False)
    return fit(model, task, optim, dataclasses.replace(run, **run_fields))


def leaves(result) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves((result.state.params, result.state.opt_state))]


def history(result) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in result.history]


def assert_identical(resumed, reference) -> None:
    for a, b in zip(leaves(resumed), leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    assert history(resumed) == history(reference)
    assert resumed.summary["final"] == reference.summary["final"]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs, one per case."""
    return {
        name: train(name, tmp_path_factory.mktemp(f"reference-{name}"))
        for name in ("mlp", "lstm", "transformer")
    }


@pytest.mark.parametrize("name", ["mlp", "lstm", "transformer"])
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(name, references, tmp_path):
    step = int(np.random.default_rng(sum(map(ord, name))).integers(1, 45))
    killed = drive(name, str(tmp_path), "--kill-at", str(step))
    assert killed.returncode == -9, killed.stderr  # SIGKILL
    assert not (tmp_path / "summary.json").exists()
    resumed = train(name, tmp_path)
    assert 0 < resumed.summary["resumed_from"] <= step
    assert_identical(resumed, references[name])


def test_killed_inside_a_save_resumes_from_the_last_complete_checkpoint(references, tmp_path):
    killed = drive("mlp", str(tmp_path), "--kill-in-save", "30")
    assert killed.returncode == -9, killed.stderr
    names = os.listdir(tmp_path / "checkpoints")
    assert "30" not in names and any(n.startswith("30.orbax-checkpoint-tmp") for n in names)
    resumed = train("mlp", tmp_path)
    assert resumed.summary["resumed_from"] == 20  # not the interrupted 30
    assert_identical(resumed, references["mlp"])


def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(
    references, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(references["transformer"].summary["run_dir"], run_dir)
    for root, _, files in os.walk(run_dir / "checkpoints" / "45" / "state"):
        for file in files:
            with open(os.path.join(root, file), "wb") as f:
                f.write(b"garbage")
    resumed = train("transformer", run_dir, progress="lines")
    out = capsys.readouterr().out
    assert "checkpoint at step 45 cannot be read" in out and "trying the previous one" in out
    assert resumed.summary["resumed_from"] == 40 and (run_dir / "damaged-checkpoint-45").exists()
    assert_identical(resumed, references["transformer"])


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(references, tmp_path):
    stopped = drive("lstm", str(tmp_path), "--term-at", "17")
    assert stopped.returncode == 128 + 15, stopped.stderr
    assert "SIGTERM received: stopped after step 17 and saved a checkpoint" in stopped.stdout
    assert "run the same command again to resume" in stopped.stdout
    assert "Traceback" not in stopped.stderr
    assert "17" in os.listdir(tmp_path / "checkpoints")
    resumed = train("lstm", tmp_path)
    assert resumed.summary["resumed_from"] == 17
    assert_identical(resumed, references["lstm"])


@pytest.fixture
def nan_at_13():
    """The mlp case's batch of step 13 has NaN inputs (undone after the test)."""
    model, task = case("mlp")
    undo = plant(task, 12, poison)
    yield model, task
    undo()


def test_a_planted_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    nan_at_13, tmp_path
):
    model, task = nan_at_13
    optim, run = configs(str(tmp_path), False)
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite loss \(nan\) at step 13.*the last good "
        r"checkpoint \(step 10\)",
    ) as error:
        fit(model, task, optim, run)
    assert error.value.step == 13 and error.value.metric == "loss"
    assert os.listdir(tmp_path / "checkpoints") == ["10"]


def test_skip_non_finite_skips_the_poisoned_update_and_finishes(nan_at_13, tmp_path):
    model, task = nan_at_13
    optim, run = configs(str(tmp_path), True)
    result = fit(model, task, optim, run)
    train_records = [r for r in result.history if r["split"] == "train"]
    assert [r["step"] for r in train_records if r["skipped"]] == [16]  # the interval 13-16
    assert all(np.isfinite(r["loss"]) for r in train_records)
    assert all(np.all(np.isfinite(x)) for x in leaves(result))


def test_the_last_and_the_best_checkpoints_are_kept(references):
    result = references["mlp"]
    steps = sorted(map(int, os.listdir(os.path.join(result.summary["run_dir"], "checkpoints"))))
    validation = {r["step"]: r["loss"] for r in result.history if r["split"] == "validation"}
    best = min(validation, key=validation.get)  # evaluated at 20, 40, 45
    assert steps == sorted({40, 45, best})


def test_a_differently_configured_run_refuses_to_resume_unless_forced(references, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(references["mlp"].summary["run_dir"], run_dir)
    model, task = case("mlp")
    optim, run = configs(str(run_dir), False)
    changed = dataclasses.replace(optim, lr=1e-3)
    with pytest.raises(ConfigMismatchError, match=r"1 field differs: optim\.lr: 0\.003 -> 0\.001"):
        fit(model, task, changed, run)
    forced = dataclasses.replace(run, checkpoint=CheckpointConfig(every=10, resume="force"))
    result = fit(model, task, changed, forced)
    assert result.summary["resumed_from"] == 45


def test_config_differences_ignore_logging_fields_and_name_the_rest():
    saved = {"run": {"progress": "bar", "steps": 10}, "optim": {"lr": 0.1, "freeze": []}}
    now = {"run": {"progress": "off", "steps": 20}, "optim": {"lr": 0.1, "freeze": ["x"]}}
    assert config_differences(saved, now) == ["optim.freeze: [] -> ['x']", "run.steps: 10 -> 20"]


def test_a_checkpoint_restores_onto_four_devices(references):
    run_dir = references["mlp"].summary["run_dir"]
    np.savez(os.path.join(run_dir, "final.npz"), *leaves(references["mlp"]))
    flags = "--xla_force_host_platform_device_count=4"
    restored = drive("restore-sharded", run_dir, env={"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"})
    assert restored.returncode == 0, restored.stderr
    assert "restored onto 4 devices: identical" in restored.stdout


def test_a_finished_constant_schedule_run_extends_without_force(tmp_path):
    """Raising --steps of a finished run whose schedule is constant after its warm-up: the steps
    taken keep their learning rates, so it is the same run, resumed; it ends as the longer run
    trained straight through does, to the bit."""
    model, task = case("mlp")
    optim = OptimConfig(name="adamw", lr=3e-3, schedule="constant", warmup_steps=5)
    _, run = configs(str(tmp_path / "extended"), False)
    fit(model, task, optim, dataclasses.replace(run, steps=20))
    extended = fit(model, task, optim, run)  # 45 steps, no --checkpoint.resume force
    straight = fit(model, task, optim, dataclasses.replace(run, run_dir=str(tmp_path / "one")))
    assert extended.summary["resumed_from"] == 20
    assert_identical(extended, straight)


def test_stretching_a_cosine_schedule_is_a_different_run(tmp_path):
    model, task = case("mlp")
    optim, run = configs(str(tmp_path / "cosine"), False)  # cosine decay over run.steps
    fit(model, task, optim, dataclasses.replace(run, steps=20))
    with pytest.raises(ConfigMismatchError, match=r"1 field differs: run.steps: 20 -> 45"):
        fit(model, task, optim, run)
