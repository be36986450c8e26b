"""Bad inputs and configurations end `python -m train` with one line, `error: ...`, and exit
status 2 before anything is compiled or written (arch/errors.py's ConfigError); a bug keeps its
traceback. Each case also checks the function that refuses it, where that is natural."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cli_error

import train.__main__
import train.loop
from arch import MODELS
from arch.errors import ConfigError
from train.__main__ import main
from train.optim import OptimConfig
from train.sharding import Placement, ShardingConfig
from train.tasks import Mnist
from train.tasks.idx import write_idx
from train.validate import FLOAT_DTYPES, check_batch_divides, check_model_config

TYRO_BOX = ("╭", "│", "╰")  # how tyro frames the errors it reports itself


def usage_error(capsys, tmp_path, argv: list[str]) -> str:
    """The one line that `main(argv)` prints on stderr as it exits with status 2, having
    created no run directory."""
    run_dir = tmp_path / "run"
    error = cli_error(
        capsys, [*argv, "--run-dir", str(run_dir), "--progress", "off", "--steps", "2"]
    )
    lines = error.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), error
    assert "Traceback" not in error
    assert not any(mark in error for mark in TYRO_BOX)
    assert not run_dir.exists()
    return lines[0]


def mnist_files(directory, train_labels: np.ndarray | None = None, skip: tuple[str, ...] = ()):
    """The four MNIST IDX files, 12 training and 4 test images of 28 x 28, in `directory`."""
    rng = np.random.default_rng(0)
    train_labels = rng.integers(0, 10, 12) if train_labels is None else train_labels
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28)),
        "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 4),
    }
    directory.mkdir(exist_ok=True)
    for name, array in arrays.items():
        if name not in skip:
            write_idx(directory / name, np.asarray(array, np.uint8))
    return directory


# Task inputs: files and directories.


def test_a_missing_text_file_is_named(capsys, tmp_path):
    missing = tmp_path / "missing.txt"
    line = usage_error(capsys, tmp_path, ["gpt", "text", "--task.path", str(missing)])
    assert f"--task.path '{missing}' does not exist" in line


def test_a_directory_as_the_text_file_is_named_as_a_directory(capsys, tmp_path):
    line = usage_error(capsys, tmp_path, ["gpt", "text", "--task.path", str(tmp_path)])
    assert f"--task.path '{tmp_path}' is a directory, not a file" in line


def test_a_device_as_the_text_file_is_not_a_regular_file(capsys, tmp_path):
    line = usage_error(capsys, tmp_path, ["gpt", "text", "--task.path", "/dev/null"])
    assert "--task.path '/dev/null' is not a regular file" in line


def test_an_empty_text_file_is_refused(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    line = usage_error(capsys, tmp_path, ["gpt", "text_mlm", "--task.path", str(empty)])
    assert f"--task.path '{empty}' is empty" in line


def test_a_missing_mnist_directory_says_what_to_put_there_and_how_to_install(capsys, tmp_path):
    nowhere = tmp_path / "nowhere"
    line = usage_error(capsys, tmp_path, ["mlp", "mnist", "--task.data-dir", str(nowhere)])
    assert f"--task.data-dir '{nowhere}' does not exist" in line
    for name in ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "dataset-fashion-mnist"]:
        assert name in line


def test_an_mnist_directory_without_its_files_names_the_missing_ones(capsys, tmp_path):
    skip = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    directory = mnist_files(tmp_path / "mnist", skip=skip)
    line = usage_error(capsys, tmp_path, ["mlp", "mnist", "--task.data-dir", str(directory)])
    assert "lacks the MNIST files t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]" in line
    assert "train-images-idx3-ubyte[.gz]," not in line.split(";")[0]  # present: not listed


def test_mnist_labels_outside_the_classes_are_refused_at_load(capsys, tmp_path):
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 3])
    directory = mnist_files(tmp_path / "mnist", train_labels=labels)
    line = usage_error(capsys, tmp_path, ["mlp", "mnist", "--task.data-dir", str(directory)])
    label_file = directory / "train-labels-idx1-ubyte"
    assert f"{label_file}: labels range from 0 to 12, but the task has 10 classes" in line
    with pytest.raises(ConfigError, match="labels range from 0 to 12"):
        Mnist(data_dir=str(directory)).data  # noqa: B018 - loading is lazy


# Model, optimizer and sharding options.


def test_a_dtype_that_is_not_a_float_lists_the_accepted_names(capsys, tmp_path):
    line = usage_error(capsys, tmp_path, ["mlp", "digits", "--model.dtype", "float33"])
    assert "model.dtype must name a floating dtype, got 'float33'" in line
    assert "set --model.dtype to one of bfloat16, float16, float32, float64" in line
    with pytest.raises(ConfigError, match=r"model\.param_dtype .* got 'int32'"):
        check_model_config(MODELS["mlp"](param_dtype="int32"))
    for name in FLOAT_DTYPES:
        check_model_config(MODELS["mlp"](dtype=name, param_dtype=name))
    check_model_config(MODELS["mlp"](dtype=jnp.bfloat16))  # a dtype object names itself


def test_heads_that_do_not_divide_the_width_suggest_options_of_the_model(capsys, tmp_path):
    line = usage_error(capsys, tmp_path, ["gpt", "markov", "--model.num-heads", "3"])
    assert (
        "--model.features 64 is not divisible by --model.num-heads 3; set --model.num-heads to "
        "a divisor of 64 (1, 2, 4, 8, 16, 32, 64) or --model.features to a multiple of 3 "
        "(e.g. 63 or 66)"
    ) in line
    assert "head_dim" not in line  # not an option of the gpt model


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--optim.lr", "inf", "optim.lr must be a finite number, got inf (set --optim.lr)"),
        ("--optim.lr", "nan", "optim.lr must be a finite number, got nan"),
        ("--optim.b1", "1.0", "optim.b1 must be in [0, 1), got 1.0 (set --optim.b1)"),
        ("--optim.b2", "1.0", "optim.b2 must be in [0, 1), got 1.0"),
        ("--optim.momentum", "1.0", "optim.momentum must be in [0, 1), got 1.0"),
        ("--optim.eps", "0", "optim.eps must be > 0, got 0.0"),
    ],
)
def test_optimizer_numbers_that_would_give_nan_at_step_one(
    capsys, tmp_path, option, value, message
):
    assert message in usage_error(capsys, tmp_path, ["mlp", "digits", option, value])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lr": math.inf}, r"optim\.lr must be a finite number, got inf"),
        ({"weight_decay": math.inf}, r"optim\.weight_decay must be a finite number"),
        # one problem, not also "must be in [0, 1]": nan fails every comparison
        (
            {"min_lr_ratio": math.nan},
            r"^optim\.min_lr_ratio must be a finite number, got nan \(set --optim\.min-lr-ratio\)$",
        ),
        ({"clip_norm": math.inf}, r"optim\.clip_norm must be a finite number"),
        ({"b1": -0.1}, r"optim\.b1 must be in \[0, 1\), got -0\.1"),
        ({"eps": -1e-8}, r"optim\.eps must be > 0"),
        ({"lr_scale": (("nu", math.inf),)}, r"lr_scale factor for 'nu' must be > 0 and finite"),
    ],
)
def test_optim_config_refuses_each_number_naming_it(fields, message):
    with pytest.raises(ConfigError, match=message):
        OptimConfig(**fields)


def test_optim_config_accepts_decays_of_zero():
    config = OptimConfig(momentum=0.0, b1=0.0, b2=0.0)
    assert (config.momentum, config.b1, config.b2) == (0.0, 0.0, 0.0)


def test_a_mesh_larger_than_the_devices_is_refused_on_one_device_too(capsys, tmp_path):
    devices = jax.device_count()
    line = usage_error(capsys, tmp_path, ["mlp", "digits", "--sharding.data", str(devices + 2)])
    assert f"= {devices + 2} devices, but {devices}" in line and "--sharding.data" in line
    with pytest.raises(ConfigError, match="do not split into fsdp"):
        Placement.for_run(ShardingConfig(fsdp=devices + 1))
    assert Placement.for_run(ShardingConfig()).batch_ways == devices  # the default fits all


def test_the_eval_batch_that_does_not_split_names_its_own_option():
    with pytest.raises(
        ConfigError,
        match=r"^eval_batch_size 30 does not split over 4 devices; set --eval-batch-size to a "
        r"multiple of 4 \(e\.g\. 28 or 32\)$",
    ):
        check_batch_divides(30, 4, option="--eval-batch-size")
    with pytest.raises(ConfigError, match=r"^task\.batch_size 30 .* set --task\.batch-size"):
        check_batch_divides(30, 4)


# A bug is not a usage error.


def test_an_internal_value_error_keeps_its_traceback(monkeypatch, tmp_path):
    def broken_fit(*args, **kwargs):
        raise ValueError("internal")

    monkeypatch.setattr(train.loop, "fit", broken_fit)
    monkeypatch.setattr(train.__main__, "fit", broken_fit, raising=False)  # main's own name
    with pytest.raises(ValueError, match="^internal$"):
        main(["mlp", "digits", "--run-dir", str(tmp_path / "run"), "--progress", "off"])
