"""Fixtures shared by several test files (recurrent inputs and variables, a text file with
three regions), and the XLA flag of the whole suite. Helpers that tests import are in
helpers.py.
"""

import os

# The suite compiles hundreds of tiny programs whose run time is negligible next to LLVM's
# optimisation passes: without them a cold run of the whole suite on 2 cores took 5:15-5:44
# instead of 7:50-8:50, with the same results. Set before JAX starts its backend (subprocesses
# inherit it); benchmarks and experiments run at XLA's default level.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import numpy as np
import pytest

pytest.register_assert_rewrite("helpers")  # its checks report values as a test's asserts do
from helpers import (
    BATCH,
    CELLS,
    FEATURES,
    TEXT_ALPHABETS,
    TEXT_BOUNDS,
    TIME,
    random_inputs,
    random_variables,
)

from arch.rnn_layer import RNN


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
