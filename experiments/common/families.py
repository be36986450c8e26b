"""The sequence families as byte-level language models at a matched parameter count, for the
studies that compare them (experiments/recurrence_vs_attention.py): the Elman / LSTM / GRU
language model, the linear recurrences (minGRU, the LRU, the Mamba-style model) and the gpt
with each attention kernel; `solve_width_for` finds the width that brings a family's parameter
count (from jax.eval_shape) nearest a target at a depth (`solve_width`: a preset's).
"""

import math
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp

from arch import MODELS
from arch.errors import ConfigError
from arch.linear_mixers import LRU_RECURRENCE_LR_FACTOR, lru_recurrence_lr_scale
from train.state import parameter_count

RNN_CELLS, LINEAR = ("elman", "lstm", "gru"), ("mingru", "lru", "mamba")
SCAN_LSTM = "lstm-scan"  # cuDNN's fast path off ("lstm" takes it on a GPU): our scan vs cuDNN
RECURRENT = RNN_CELLS + LINEAR + (SCAN_LSTM,)
ATTENTION = ("gpt-einsum", "gpt-xla", "gpt-blockwise", "gpt-cudnn")
PRESETS = {"smoke": (1, 21_000), "1m": (2, 1_000_000), "10m": (4, 10_000_000)}  # (layers, target)
VOCAB = 256


def heads_for(width: int) -> int:
    """Heads whose width divides the model width, is a multiple of 8 and is nearest 64."""
    head_widths = [e for e in range(8, min(width, 128) + 1, 8) if width % e == 0] or [width]
    return width // min(head_widths, key=lambda e: (abs(e - 64), -e))


def build(family: str, width: int, layers: int, dtype: str = "float32", max_len: int = 512):
    """The family's language model at this width and depth."""
    common = {"num_layers": layers, "vocab_size": VOCAB, "num_outputs": VOCAB, "dtype": dtype}
    if family in RNN_CELLS or family == SCAN_LSTM:
        fast = {"fast_path": "scan"} if family == SCAN_LSTM else {}
        cell = family.removesuffix("-scan")
        return MODELS["rnn_lm"](cell=cell, hidden_size=width, embed_size=width, **common, **fast)
    if family in LINEAR:
        state = 16 if family == "mamba" else width
        return MODELS["linear_rnn_lm"](mixer=family, features=width, state_size=state, **common)
    if family in ATTENTION:
        kernel = family.removeprefix("gpt-")
        return MODELS["gpt"](
            features=width, num_heads=heads_for(width), max_len=max_len, kernel=kernel,
            positional="rotary", **common,
        )  # fmt: skip
    raise ConfigError(f"unknown family {family!r}; choose from {RECURRENT + ATTENTION}")


def lr_scale(family: str, lru_factor: float = LRU_RECURRENCE_LR_FACTOR) -> tuple:
    """`OptimConfig.lr_scale` of a family trained by its paper's settings: the LRU's recurrence
    at `lru_factor` x lr (arch/linear_mixers.py), every other family at the one lr."""
    return lru_recurrence_lr_scale(lru_factor) if family == "lru" else ()


def count_parameters(model: Any) -> int:
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    return parameter_count(jax.eval_shape(model.init, jax.random.key(0), tokens)["params"])


@cache
def solve_width(family: str, preset: str) -> tuple[int, int]:
    """(width, parameters) at the preset's depth and target: `solve_width_for`."""
    return solve_width_for(family, *PRESETS[preset])


@cache
def solve_width_for(family: str, layers: int, target: int) -> tuple[int, int]:
    """(width, parameters): the width (a multiple of 8 for attention, 4 otherwise) whose count
    at `layers` is nearest `target`; bisection, as the count grows with the width."""
    step = 8 if family in ATTENTION else 4
    count = cache(lambda k: count_parameters(build(family, k * step, layers)))
    low, high = 1, 4096 // step
    while low < high:  # the smallest k with count(k) >= target
        middle = (low + high) // 2
        low, high = (middle + 1, high) if count(middle) < target else (low, middle)
    best = min({max(low - 1, 1), low}, key=lambda k: abs(math.log(count(k) / target)))
    return best * step, count(best)
