"""Bad input gets one clear message before anything is compiled (train/validate.py and the
command line): unknown names with the closest valid ones, invalid values, a sequence longer
than the model's positions, a vocabulary too small for the task, a batch that does not split."""

import flax.linen as nn
import numpy as np
import pytest
from helpers import cli_error

from arch import MODELS
from arch.errors import ConfigError
from train.loop import RunConfig, fit
from train.tasks import TASKS
from train.validate import (
    adapt_model,
    check_batch_divides,
    check_model_config,
    check_sequence_length,
)

QUIET = dict(steps=1, progress="off", tensorboard=False, compilation_cache=False)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["lenett", "digits"], "unknown model 'lenett'; did you mean 'lenet' or 'resnet'?"),
        (["gtp", "markov"], "unknown model 'gtp'; did you mean 'gpt'?"),
        (["lenet", "digitz"], "unknown task 'digitz'; did you mean 'digits'?"),
        (["lenet", "qqqq"], "unknown task 'qqqq' (choose from xor, blobs"),
    ],
)
def test_unknown_names_suggest_the_closest(capsys, argv, expected):
    assert expected in cli_error(capsys, argv)


def test_an_unknown_option_suggests_the_closest(capsys, tmp_path):
    message = cli_error(capsys, ["mlp", "xor", "--optim.lrr", "3", "--run-dir", str(tmp_path)])
    assert "--optim.lrr" in message and "Perhaps you meant" in message and "--optim.lr" in message


def test_every_invalid_size_and_rate_is_named_at_once():
    with pytest.raises(ConfigError) as error:
        check_model_config(MODELS["gpt"](num_heads=0, features=-8, dropout_rate=1.5))
    message = str(error.value)
    assert message.startswith("TransformerLM: ")
    assert "model.features must be positive, got -8 (set --model.features)" in message
    assert "model.num_heads must be positive, got 0" in message
    assert "model.dropout_rate must be in [0, 1), got 1.5" in message
    check_model_config(MODELS["gpt"]())  # the defaults pass


def test_a_zero_width_layer_stops_fit_before_compiling():
    with pytest.raises(ConfigError, match=r"model\.hidden_sizes must be positive, got \(16, 0\)"):
        fit(MODELS["mlp"](hidden_sizes=(16, 0)), TASKS["xor"](), run=RunConfig(**QUIET))


def test_a_sequence_longer_than_the_learned_positions_is_refused():
    model = MODELS["gpt"](positional="learned", max_len=16, num_layers=1, features=16)
    with pytest.raises(
        ConfigError,
        match=r"sequences have 32 positions but TransformerLM learns "
        r"only max_len = 16; set --model.max-len 32",
    ):
        fit(model, TASKS["markov"](length=32), run=RunConfig(**QUIET))


def test_a_vocabulary_too_small_for_the_task_is_refused_and_a_larger_one_kept():
    task = TASKS["markov"](vocab_size=16)
    with pytest.raises(
        ConfigError,
        match=r"model\.vocab_size 8 is too small: task MarkovLanguage "
        r"has token ids 0\.\.15; drop --model\.vocab-size or set it to at least 16",
    ):
        adapt_model(MODELS["gpt"](vocab_size=8), task)
    assert adapt_model(MODELS["gpt"](vocab_size=32), task).vocab_size == 32


def test_a_batch_that_does_not_split_over_the_devices_is_refused():
    check_batch_divides(32, 8)
    with pytest.raises(
        ConfigError,
        match=r"task\.batch_size 30 does not split over 4 devices; set "
        r"--task\.batch-size to a multiple of 4 \(e\.g\. 28 or 32\)",
    ):
        check_batch_divides(30, 4)


def test_inputs_of_the_wrong_kind_or_shape_get_a_clear_message():
    with pytest.raises(
        ConfigError,
        match=r"LeNet expects images .* got shape \(32, 128\); use an "
        "image task",
    ):
        fit(MODELS["lenet"](), TASKS["markov"](), run=RunConfig(**QUIET))  # token ids
    with pytest.raises(
        ConfigError,
        match=r"MLP outputs shape \(32, 16\) on MarkovLanguage inputs "
        r"\(32, 128\), but the task's loss needs \(32, 128, 16\)",
    ):
        fit(MODELS["mlp"](), TASKS["markov"](), run=RunConfig(**QUIET))


def test_a_model_reports_what_only_it_knows_through_its_own_hooks():
    class Picky(nn.Module):
        hidden_size: int = 0

        @nn.nowrap
        def config_problems(self) -> list[str]:
            return ["the picky model wants an even hidden_size"]

        @nn.nowrap
        def check_length(self, length: int) -> None:
            raise ConfigError(f"too long: {length}")

    # the generic field check and the model's own problem, in one message
    with pytest.raises(ConfigError, match="hidden_size must be positive.*picky model wants"):
        check_model_config(Picky())
    with pytest.raises(ConfigError, match="too long: 7"):
        check_sequence_length(Picky(), {"inputs": np.zeros((2, 7), np.int32)})
    check_sequence_length(MODELS["mlp"](), {"inputs": np.zeros((2, 7), np.float32)})  # no limit
