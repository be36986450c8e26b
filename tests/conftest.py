"""Shared by several test files: the recurrent tests' sizes, cells, random variables and
inputs (imported as `from conftest import ...`), and fixtures (recurrent inputs and variables,
a text file with three regions).

Legend: b batch, t time, f input features, n hidden units.
"""

import functools
import os

# The suite compiles hundreds of tiny programs whose run time is negligible next to LLVM's
# optimisation passes: without them a cold run of the whole suite on 2 cores took 5:15-5:44
# instead of 7:50-8:50, with the same results. Set before JAX starts its backend (subprocesses
# inherit it); benchmarks and experiments run at XLA's default level.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax
import numpy as np
import pytest

from arch.recurrent import (
    RNN,
    ElmanCell,
    GRUCell,
    LSTMCell,
)

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


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return random_inputs(BATCH, TIME, FEATURES)


@pytest.fixture(scope="module")
def cell_variables(inputs) -> dict:
    """Random variables of the RNN layer over each cell (they do not depend on the options)."""
    return {
        name: random_variables(RNN(make(), hoist_inputs=False), inputs)
        for name, make in CELLS.items()
    }


# The text file the tests write: three regions of distinct bytes, so a window shows its region.
# 4000 bytes with 5% + 5% held out: train [0, 3600), validation [3600, 3800), test [3800, 4000).
TEXT_ALPHABETS = {
    "train": b"abcdefghijklmnopqrstuvwxyz" + bytes(range(200, 256)),  # also non-ASCII bytes
    "validation": b"0123456789",
    "test": b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
}
TEXT_BOUNDS = {"train": (0, 3600), "validation": (3600, 3800), "test": (3800, 4000)}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    content = b"".join(
        bytes(rng.choice(list(TEXT_ALPHABETS[split]), stop - start).tolist())
        for split, (start, stop) in TEXT_BOUNDS.items()
    )
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_bytes(content)
    return path, content
