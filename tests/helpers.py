"""Helpers shared by several test files: the recurrent tests' sizes and cells, random variables
and inputs from NumPy, dropout's outputs under two keys, the lowered generation program, the
regions of the text file that conftest.py's fixture writes, the command line's exit on a usage
error, and an experiment's smoke run with its results.json (as a fixture; a speed comparison's).

Legend: b batch, t time, f input features, n hidden units.
"""

import functools
import importlib.util
import json
import pathlib
import re
from collections.abc import Callable
from types import ModuleType

import jax
import numpy as np
import pytest

from arch.decoding import generate
from arch.rnn_cells import ElmanCell, GRUCell, LSTMCell
from arch.rnn_layer import RNN

BATCH, TIME, FEATURES, HIDDEN = 3, 6, 5, 4
TOLERANCE = dict(rtol=1e-5, atol=1e-6)
TORCH = importlib.util.find_spec("torch") is not None  # the speed comparisons time it if found

CELLS = {
    "elman": lambda: ElmanCell(HIDDEN, parent=None),
    "elman_relu": lambda: ElmanCell(HIDDEN, activation="relu", parent=None),
    "lstm": lambda: LSTMCell(HIDDEN, parent=None),
    "gru": lambda: GRUCell(HIDDEN, reset_after=False, parent=None),
    "gru_reset_after": lambda: GRUCell(HIDDEN, reset_after=True, parent=None),
}


def random_variables(module, *inputs, seed: int = 0) -> dict:
    """Parameters of the module's shapes from NumPy: standard normal over sqrt(fan-in) for
    matrices, 0.5 * standard normal for vectors (non-zero biases, so that each one matters)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
    scale = lambda shape: 1 / np.sqrt(shape[0]) if len(shape) > 1 else 0.5
    fill = lambda s: (scale(s.shape) * rng.standard_normal(s.shape)).astype(s.dtype)
    return jax.tree.map(fill, shapes)


def random_inputs(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@functools.cache
def layer_function(name: str, reverse: bool = False, hoist_inputs: bool = False, unroll: int = 1):
    """The RNN layer over the cell `name`, its apply jitted once for the whole module:
    (variables, inputs [b, t, f], mask [b, t], initial state) -> (outputs [b, t, n], state)."""
    layer = RNN(CELLS[name](), reverse=reverse, hoist_inputs=hoist_inputs, unroll=unroll)
    return jax.jit(
        lambda variables, x, mask=None, state=None: layer.apply(variables, x, mask, state)
    )


def dropout_outputs(apply: Callable, apply_without_rng: Callable, key_a, key_b) -> dict:
    """`apply(train, key)` in training under key_a, key_a again and key_b, and in evaluation
    under key_a and key_b; "eval_no_rng" is `apply_without_rng()`, evaluation with no PRNG key."""
    return {
        "train_a": apply(True, key_a),
        "train_a_again": apply(True, key_a),
        "train_b": apply(True, key_b),
        "eval_a": apply(False, key_a),
        "eval_b": apply(False, key_b),
        "eval_no_rng": apply_without_rng(),
    }


def generation_programs(model, variables, prompt, *num_tokens: int) -> list[str]:
    """The StableHLO text of `generate(model, variables, prompt, n)` lowered for each n of
    num_tokens, every run of digits in it written N (so sizes do not tell them apart)."""
    return [
        re.sub(r"\d+", "N", generate.lower(model, variables, prompt, n).as_text())
        for n in num_tokens
    ]


# The text file conftest.py's `text_file` writes: three regions of distinct bytes, so a window
# shows its region. 4000 bytes with 5% + 5% held out: train [0, 3600), validation [3600, 3800),
# test [3800, 4000).
TEXT_ALPHABETS = {
    "train": b"abcdefghijklmnopqrstuvwxyz" + bytes(range(200, 256)),  # also non-ASCII bytes
    "validation": b"0123456789",
    "test": b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
}
TEXT_BOUNDS = {"train": (0, 3600), "validation": (3600, 3800), "test": (3800, 4000)}


def cli_error(capsys, argv: list[str]) -> str:
    """What `python -m train ARGV` printed on standard error as it exited with status 2 (a
    usage or configuration error), having printed nothing on standard output."""
    # Imported here: conftest.py imports this module in every worker, and the command line
    # would add all of train/ (tyro, orbax, optax) to each worker's start.
    from train.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured.err
    assert captured.out == ""
    return captured.err


def smoke_run(experiment: ModuleType, run_dir: pathlib.Path, *args: str) -> tuple[dict, dict]:
    """What `experiment.main(["--smoke", *ARGS, "--run-dir", RUN_DIR])` returned, and the
    results.json it wrote into RUN_DIR."""
    returned = experiment.main(["--smoke", *args, "--run-dir", str(run_dir)])
    return returned, json.loads((run_dir / "results.json").read_text())


def smoke_results(experiment: ModuleType, run_dir: pathlib.Path, *args: str) -> dict:
    """The results.json of the experiment's smoke run (smoke_run), having checked that it holds
    what main returned, NumPy scalars written as floats."""
    returned, saved = smoke_run(experiment, run_dir, *args)
    assert saved == json.loads(json.dumps(returned, default=float)), "main returned otherwise"
    return saved


def smoke_fixture(experiment: ModuleType):
    """A module-scoped fixture `smoke`: (run directory, what main returned, results.json) of the
    experiment's smoke run (smoke_run), in a directory named after the experiment."""

    @pytest.fixture(scope="module")
    def smoke(tmp_path_factory) -> tuple[pathlib.Path, dict, dict]:
        run_dir = tmp_path_factory.mktemp(experiment.__name__.rpartition(".")[2])
        return run_dir, *smoke_run(experiment, run_dir)

    return smoke


def speed_results(experiment: ModuleType, run_dir: pathlib.Path) -> dict:
    """The results.json of a speed comparison's smoke run (smoke_results), having checked what
    each of them records: its plot NAME.png, float32 timings, the JAX version and whether
    PyTorch was found."""
    results = smoke_results(experiment, run_dir)
    assert (run_dir / f"{experiment.__name__.rpartition('.')[2]}.png").stat().st_size > 0
    assert results["dtype"] == "float32" and results["versions"]["jax"]
    assert results["torch"]["available"] is TORCH
    return results
