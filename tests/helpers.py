"""Helpers shared by several test files: the recurrent tests' sizes and cells, random variables
and inputs from NumPy, the regions of the text file that conftest.py's fixture writes, and the
command line's exit on a usage error.

Legend: b batch, t time, f input features, n hidden units.
"""

import functools

import jax
import numpy as np
import pytest

from arch.rnn_cells import ElmanCell, GRUCell, LSTMCell
from arch.rnn_layer import RNN

BATCH, TIME, FEATURES, HIDDEN = 3, 6, 5, 4
TOLERANCE = dict(rtol=1e-5, atol=1e-6)

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
