"""Checks of a run's configuration before anything is compiled: each problem gets one clear
message that says what is wrong and how to fix it (the command line prints it without a
traceback and exits with status 2)."""

import dataclasses
import difflib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from arch.errors import ConfigError
from train.optim import OptimConfig, frozen_labels, param_path
from train.tasks.base import Task


def adapt_model(model: nn.Module, task: Task) -> nn.Module:
    """The model with the fields the task decides (task.model_fields, e.g. num_outputs) set.

    A field the model lacks is skipped; a field set to something other than both its default
    and the task's need is refused, with the value to use (a vocabulary larger than the task's
    is allowed: its extra tokens are never seen).
    """
    defaults = {f.name: f.default for f in dataclasses.fields(model)}
    changes = {}
    for field, needed in task.model_fields.items():
        value = getattr(model, field, None)
        if field not in defaults or value == needed:
            continue
        flag = "--model." + field.replace("_", "-")
        if field == "vocab_size" and value is not None and value != defaults[field]:
            if value > needed:
                continue
            raise ConfigError(
                f"model.vocab_size {value} is too small: task {type(task).__name__} has token "
                f"ids 0..{needed - 1}; drop {flag} or set it to at least {needed}"
            )
        if value != defaults[field]:
            raise ConfigError(
                f"model.{field} is {getattr(model, field)} but task {type(task).__name__} "
                f"needs {needed}; drop {flag} or set it to {needed}"
            )
        changes[field] = needed
    return model.clone(**changes) if changes else model


def shapes(inputs: Any) -> Any:
    """(32, 128) for an array, {"source": (32, 20), ...} for a dict of them."""
    if isinstance(inputs, dict):
        return {k: tuple(v.shape) for k, v in inputs.items()}
    return tuple(inputs.shape)


def check_model_fits_task(model: nn.Module, task: Task, batch: dict) -> None:
    """Trace the model on one batch (no compilation) and check its output shape."""
    inputs = batch["inputs"]
    shape = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], inputs).shape
    expected = tuple(task.output_shape(batch))
    if tuple(shape) != expected:
        hint = "choose a model whose outputs have that shape"
        if len(shape) == len(expected) and shape[:-1] == expected[:-1]:
            hint = f"set --model.num-outputs {expected[-1]}"
        elif len(expected) in (2, 3) and len(shape) in (2, 3):  # per sequence vs per step
            hint += " (e.g. one output per sequence: rnn; one per step: rnn_tagger)"
        raise ConfigError(
            f"{type(model).__name__} outputs shape {tuple(shape)} on "
            f"{type(task).__name__} inputs {shapes(inputs)}, but the task's loss "
            f"needs {expected}; {hint}"
        )


def check_freeze_patterns(params: Any, optim: OptimConfig) -> None:
    """Every optim.freeze / optim.lr_scale pattern must match a parameter (a typo would
    otherwise change nothing, silently), and freezing must leave something to train."""
    patterns = [("optim.freeze", p) for p in optim.freeze]
    patterns += [("optim.lr_scale", p) for p, _ in optim.lr_scale]
    if not patterns:
        return
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for option, pattern in patterns:
        if not any(re.search(pattern, p) for p in paths):
            raise ConfigError(
                f"{option} pattern {pattern!r} matches no parameter; the parameters are {paths}"
            )
    labels = jax.tree.leaves(frozen_labels(params, optim.freeze))
    if optim.freeze and all(label == "frozen" for label in labels):
        raise ConfigError(
            f"optim.freeze {optim.freeze} freezes every parameter; nothing would train"
        )


POSITIVE_FIELD = re.compile(
    r"^num_|_size$|_sizes$|^features$|^hidden|^max_len$|^expand$|^ffn_hidden$|_width$|^patch"
)
"""Model fields that count something: every integer in them must be >= 1."""

FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")
"""The names a `*dtype` model field accepts (compute and storage are floating point)."""


def dtype_name(value: Any) -> str | None:
    """'bfloat16' for "bfloat16" or jnp.bfloat16; None for what names no dtype ("float33")."""
    if value is None:  # NumPy would read None as float64
        return None
    try:
        return jnp.dtype(value).name
    except TypeError:
        return None


def check_model_config(model: nn.Module) -> None:
    """Sizes, counts, rates and dtypes of a model's fields, and the problems the model itself
    reports (`config_problems`, e.g. a Transformer's heads against its width), all in one
    message. The field names that count something (POSITIVE_FIELD) are the convention every
    model in arch/ follows, so the rule stays here rather than in each model."""
    problems = []
    for field in dataclasses.fields(model):
        value = getattr(model, field.name, None)
        flag = "--model." + field.name.replace("_", "-")
        values = value if isinstance(value, tuple) else (value,)
        integers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if POSITIVE_FIELD.search(field.name) and any(v < 1 for v in integers):
            problems.append(f"model.{field.name} must be positive, got {value} (set {flag})")
        if "dropout" in field.name and isinstance(value, float) and not 0 <= value < 1:
            problems.append(f"model.{field.name} must be in [0, 1), got {value} (set {flag})")
        optional = value is None and field.default is None
        if field.name.endswith("dtype") and not optional and dtype_name(value) not in FLOAT_DTYPES:
            problems.append(
                f"model.{field.name} must name a floating dtype, got {value!r} (set {flag} to "
                f"one of {', '.join(FLOAT_DTYPES)})"
            )
    own_checks = getattr(model, "config_problems", None)  # what only the model knows
    if own_checks is not None:
        problems += own_checks()
    if problems:
        raise ConfigError(f"{type(model).__name__}: " + "; ".join(problems))


def sequence_length(inputs: Any) -> int | None:
    """The time axis of token ids [b, t] or features [b, t, f] (seq2seq: the longer side)."""
    if isinstance(inputs, dict):
        lengths = [sequence_length(v) for k, v in inputs.items() if not k.endswith("mask")]
        return max((n for n in lengths if n is not None), default=None)
    shape = getattr(inputs, "shape", ())
    return shape[1] if len(shape) in (2, 3) else None


def check_sequence_length(model: nn.Module, batch: dict) -> None:
    """The batch's sequence length against a model that limits it (`check_length`, e.g. a
    Transformer's learned positions)."""
    check, length = getattr(model, "check_length", None), sequence_length(batch["inputs"])
    if check is not None and length is not None:
        check(length)


def check_batch_divides(
    batch_size: int, devices: int, *, option: str = "--task.batch-size"
) -> None:
    """A batch split over `devices` must divide evenly; `option` is the flag that sets it
    (e.g. "--eval-batch-size"), named in the message."""
    if batch_size % devices:
        lower, upper = batch_size // devices * devices, -(-batch_size // devices) * devices
        name = option.lstrip("-").replace("-", "_")  # "--task.batch-size" -> "task.batch_size"
        raise ConfigError(
            f"{name} {batch_size} does not split over {devices} devices; set "
            f"{option} to a multiple of {devices} (e.g. {max(lower, devices)} or {upper})"
        )


def unknown_name(kind: str, name: str, registry: dict[str, Any]) -> str:
    """'unknown model 'lenett'; did you mean 'lenet'? (choose from ...)'."""
    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (choose from {', '.join(registry)})"
