"""experiments/common/scaffold.py: what every experiment gets from the scaffold (the command
line, --smoke, the checks before anything is written, results.json and its shared keys, the
README row, the other-jobs warning), shown on a toy experiment."""

import dataclasses
import json
import sys

import pytest

from arch.errors import ConfigError
from experiments.common.scaffold import (
    SCAFFOLD_KEYS,
    Experiment,
    ExperimentConfig,
    TrainingConfig,
    measured_on,
    other_jobs_warning,
)
from train.optim import OptimConfig


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    steps: int = 100
    width: int = 8

    def smoke_settings(self) -> dict:
        return dict(steps=3)

    def check(self) -> None:
        if self.width <= 0:
            raise ConfigError(f"--width must be positive, got {self.width}")


def toy_study(config: Config, out: str) -> dict:
    return {"holds": config.steps > 2, "steps_run": config.steps}


def toy(**fields) -> Experiment:
    fields = {"study": toy_study, **fields}
    return Experiment("toy", "three steps are enough", Config, **fields)


def test_results_hold_the_study_and_the_shared_keys(tmp_path, capsys):
    experiment = toy(summary_line=lambda r: f"| toy | {r['steps_run']} steps, {r['holds']} |")
    results = experiment.main(["--smoke", "--width", "4", "--run-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["claim"] == "three steps are enough" and saved["holds"] is True
    # --smoke replaced the fields of smoke_settings and kept the others from the command line
    assert saved["steps_run"] == 3
    assert saved["config"] == {"smoke": True, "run_dir": str(tmp_path), "steps": 3, "width": 4}
    assert set(saved) == {"holds", "steps_run"} | SCAFFOLD_KEYS
    assert saved["summary"] == "| toy | 3 steps, True |"
    assert saved["wall_seconds"] >= 0 and saved["versions"]["jax"]
    out = capsys.readouterr().out
    assert "claim holds: True" in out and "README row:\n| toy | 3 steps, True |" in out


def test_without_smoke_the_defaults_run(tmp_path):
    assert toy().main(["--run-dir", str(tmp_path)])["steps_run"] == 100


def test_a_bad_config_is_refused_before_the_run_directory_exists(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="--width must be positive"):
        toy().main(["--width", "0", "--run-dir", str(run_dir)])
    assert not run_dir.exists()


def test_the_command_line_prints_a_config_error_as_one_line_and_exits_2(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(sys, "argv", ["toy", "--width", "-1", "--run-dir", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exit_info:
        toy().command_line()
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert captured.err == "error: --width must be positive, got -1\n" and captured.out == ""


def test_a_study_must_say_whether_the_claim_held_and_leave_the_shared_keys(tmp_path):
    with pytest.raises(TypeError, match="'holds' as a bool"):
        toy(study=lambda config, out: {"holds": 1}).main(["--run-dir", str(tmp_path)])
    with pytest.raises(TypeError, match="'holds' as a bool"):
        toy(study=lambda config, out: {"holds": {"train": None}}).main(["--run-dir", str(tmp_path)])
    with pytest.raises(TypeError, match="'holds' as a bool"):
        toy(study=lambda config, out: {"speed": 1.0}).main(["--run-dir", str(tmp_path)])
    assert (
        toy(study=lambda config, out: {"holds": None}).main(["--run-dir", str(tmp_path)])["holds"]
        is None
    )  # the reference to compare with is not installed here
    parts = {"train": True, "generate": False}  # a claim in two parts
    assert (
        toy(study=lambda config, out: {"holds": parts}).main(["--run-dir", str(tmp_path)])["holds"]
        == parts
    )
    with pytest.raises(TypeError, match=r"\['config'\]"):
        toy(study=lambda config, out: {"holds": True, "config": {}}).main(
            ["--run-dir", str(tmp_path)]
        )


def test_the_other_jobs_warning_reads_the_load_at_both_ends(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert other_jobs_warning(0.2, 2.5) is None  # the study's own threads, on a quiet machine
    assert "1.6 at the start" in other_jobs_warning(1.6, 0.5)
    assert "3.5 at the end" in other_jobs_warning(0.0, 3.5)


def test_main_of_runs_the_command_line_only_for_the_main_module(tmp_path, monkeypatch):
    experiment = toy()
    monkeypatch.setattr(sys, "argv", ["toy", "--smoke", "--run-dir", str(tmp_path)])
    assert experiment.main_of("experiments.toy") == experiment.main  # imported: nothing runs
    assert not (tmp_path / "results.json").exists()
    experiment.main_of("__main__")  # python -m experiments.toy
    assert json.loads((tmp_path / "results.json").read_text())["steps_run"] == 3


def test_a_training_study_gets_adam_with_its_warm_up_capped_by_the_run_length():
    @dataclasses.dataclass(frozen=True)
    class Study(TrainingConfig):
        lr: float = 5e-3  # a study's own default, by declaring the field again

    config = Study()
    assert (config.batch_size, config.warmup_steps, config.clip_norm) == (32, 100, 1.0)
    assert config.optim(1000) == OptimConfig(
        lr=5e-3, schedule="cosine", warmup_steps=100, clip_norm=1.0
    )
    assert config.optim(30).warmup_steps == 15  # at most half of a short run
    assert config.optim(30, most_warmup=0.25).warmup_steps == 7  # 30 // 4
    assert config.optim(30, most_warmup=1.0).warmup_steps == 30
    scaled = config.optim(50, "constant", lr_scale=(("nu_log", 0.5),))
    assert (scaled.schedule, scaled.lr_scale) == ("constant", (("nu_log", 0.5),))
    assert Study(clip_norm=None).optim(10).clip_norm is None


def test_a_speed_study_records_where_it_measured():
    where = measured_on("toy_speed", 1.25)
    assert list(where) == ["command", "device", "max_load_average", "dtype"]
    assert where["command"] == "python -m experiments.toy_speed"
    assert (where["max_load_average"], where["dtype"]) == (1.25, "float32")
    with_torch = measured_on("toy_speed", 1.25, (None, "not installed"))
    assert list(with_torch) == ["command", "device", "max_load_average", "torch", "dtype"]
    assert with_torch["torch"] == {
        "available": False,
        "reason": "not installed",
        "threads": None,
        "version": None,
    }
