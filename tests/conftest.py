"""Fixtures shared by several test files: recurrent layers' inputs and variables, a text file."""

import numpy as np
import pytest
from recurrent_support import BATCH, CELLS, FEATURES, TIME, random_inputs, random_variables

from arch.recurrent import RNN


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
