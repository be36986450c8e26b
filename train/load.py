"""A run directory back as what trained it: `load_run` rebuilds the registered model and task,
the optimizer and run configurations from the checkpoint's saved configuration, and restores
the train state of the latest, the best or a given checkpoint, reading only (nothing in the
directory is moved or written). `evaluate_run` evaluates such a checkpoint on one split.

The configuration is JSON (lists for tuples, dicts for nested dataclasses); `from_fields` turns
it back into the frozen dataclasses by their type hints. The state lands on one device (the
first local one), whatever devices the saving run used.
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from arch import MODELS
from arch.decoding import generate
from arch.errors import ConfigError
from train.checkpoint import (
    Restored,
    error_reason,
    handlers,
    quiet_orbax,
    restored_from,
    state_arrays,
)
from train.decide import prepare
from train.loop import evaluate
from train.optim import OptimConfig
from train.run_config import RunConfig
from train.state import TrainState
from train.step import make_eval_step
from train.tasks import TASKS
from train.tasks.base import SPLITS, Task
from train.tasks.translation import EOS, FIRST_WORD, PAD
from train.tokenize import Tokenizer, read_tokenizer

Step = int | Literal["latest", "best"] | None


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run directory's checkpoint with everything needed to use it."""

    run_dir: str
    model_name: str
    """The registry name (`python -m train MODEL ...`)."""
    task_name: str
    model: nn.Module
    """As trained (num_outputs set from the task)."""
    task: Task
    optim: OptimConfig
    run: RunConfig
    config: dict[str, Any]
    """The configuration the checkpoint was saved with (config.json's layout)."""
    step: int
    state: TrainState
    history: list[dict[str, Any]]
    """The records logged up to the checkpoint (metrics.jsonl's)."""

    @property
    def variables(self) -> dict[str, Any]:
        """The variables to pass to `model.apply`."""
        return self.state.variables


def convert(hint: Any, value: Any) -> Any:
    """A JSON value as the type `hint` asks for: lists to tuples, dicts to dataclasses."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return convert(typing.get_args(hint)[0], value)
    if origin in (Union, types.UnionType):
        for member in typing.get_args(hint):
            is_tuple = typing.get_origin(member) is tuple or member is tuple
            if (isinstance(value, list) and is_tuple) or (
                isinstance(value, dict) and dataclasses.is_dataclass(member)
            ):
                return convert(member, value)
        return value
    if isinstance(value, dict) and dataclasses.is_dataclass(hint):
        return from_fields(hint, value)
    if isinstance(value, list) and (origin is tuple or hint is tuple):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(convert(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    return value


def from_fields(cls: type, data: dict[str, Any]) -> Any:
    """`cls(**data)` from a saved configuration (its "class" entry aside); a field `cls` does
    not have is ConfigError (a configuration of other code)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    fields = {k: v for k, v in data.items() if k != "class"}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ConfigError(
            f"the saved configuration gives {cls.__name__} fields it does not have: "
            f"{', '.join(unknown)} (saved by other code?)"
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    return cls(**{k: convert(hints.get(k, Any), v) for k, v in fields.items()})


def registered(registry: dict[str, type], kind: str, data: dict[str, Any]) -> tuple[str, Any]:
    """(registry name, instance) of a saved model or task configuration."""
    name = data.get("class")
    for key, cls in registry.items():
        if name in (cls.__name__, key):  # the class (config.json) or its registry name
            return key, from_fields(cls, data)
    raise ConfigError(f"the saved {kind} class {name!r} is not a registered {kind}")


def read_config_file(path: str) -> dict[str, Any]:
    """A run configuration file: a run's config.json, or a TOML or YAML file of the same
    sections (model and task with their "class", a class or registry name; optim; run)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as error:
        raise ConfigError(f"cannot read --config {path}: {error.strerror}") from None
    try:
        if path.endswith(".toml"):
            import tomllib

            data = tomllib.loads(raw.decode())
        elif path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise ConfigError("a YAML --config needs PyYAML: pip install pyyaml") from None
            try:
                data = yaml.safe_load(raw)
            except yaml.YAMLError as error:
                raise ValueError(str(error)) from None
        else:
            data = json.loads(raw)
    except ValueError as error:  # JSON's, TOML's and YAML's (and undecodable bytes)
        raise ConfigError(f"--config {path} cannot be parsed: {error}") from None
    sections = isinstance(data, dict) and all(
        isinstance(data.get(k), dict) for k in ("model", "task")
    )
    if not sections:
        raise ConfigError(f"--config {path} needs a model and a task section, each with a class")
    return data


@contextlib.contextmanager
def reader(directory: str) -> Iterator[ocp.CheckpointManager]:
    with quiet_orbax(logging.CRITICAL):
        options = ocp.CheckpointManagerOptions(read_only=True)
        manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers())
        try:
            yield manager
        finally:
            manager.close()


def read(manager: ocp.CheckpointManager, step: int, target: Any = None) -> Any:
    """The "meta" of a checkpoint (target None), or its state arrays onto `target` and meta."""
    items = {"meta": ocp.args.JsonRestore()}
    if target is not None:
        items["state"] = ocp.args.StandardRestore(target)
    try:
        loaded = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # noqa: BLE001 (any unreadable checkpoint)
        raise ConfigError(
            f"the checkpoint at step {step} in {manager.directory} cannot be read "
            f"({error_reason(error)})"
        ) from None
    return loaded["meta"] if target is None else loaded


def best_step(steps: list[int], meta: dict[str, Any]) -> int:
    """The kept checkpoint with the best validation `checkpoint.best_metric`."""
    rule = meta["config"]["run"]["checkpoint"]
    metric, sign = rule["best_metric"], (1 if rule["best_mode"] == "min" else -1)
    scored = {
        r["step"]: sign * r[metric]
        for r in meta["history"]
        if r["split"] == "validation" and r["step"] in steps and metric in r
    }
    if not scored:
        raise ConfigError(
            f"no kept checkpoint has a validation {metric!r} to rank it by (steps "
            f"{', '.join(map(str, steps))}); give a step number"
        )
    return min(scored, key=lambda s: (scored[s], -s))


def choose_step(manager: ocp.CheckpointManager, run_dir: str, step: Step) -> tuple[int, dict]:
    """The step asked for among the complete checkpoints, and its meta."""
    steps = sorted(manager.all_steps())
    if not steps:
        raise ConfigError(f"{run_dir} holds no complete checkpoint")
    if step in (None, "latest", "best"):
        failures = []
        for latest in reversed(steps):  # the latest readable one
            try:
                meta = read(manager, latest)
            except ConfigError as error:
                failures.append(str(error))
                continue
            if step != "best":
                return latest, meta
            chosen = best_step(steps, meta)
            return chosen, read(manager, chosen)
        raise ConfigError(f"no checkpoint in {run_dir} can be read: {'; '.join(failures)}")
    if isinstance(step, str) and not step.isdigit():
        raise ConfigError(f"step must be a number, 'latest' or 'best', got {step!r}")
    if int(step) not in steps:
        raise ConfigError(
            f"{run_dir} has no checkpoint at step {step} (it keeps steps "
            f"{', '.join(map(str, steps))})"
        )
    return int(step), read(manager, int(step))


def load_run(run_dir: str, step: Step = None) -> LoadedRun:
    """The run in `run_dir` at its latest checkpoint (`step` None or "latest"), its best
    ("best": by the run's checkpoint.best_metric among the kept ones) or a given step."""
    if not os.path.isdir(run_dir):
        raise ConfigError(f"no run directory at {run_dir}")
    directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
    if not os.path.isdir(directory):
        raise ConfigError(
            f"{run_dir} has no checkpoints directory: it is not a run directory, or its run "
            "had checkpoints off"
        )
    with reader(directory) as manager:
        chosen, meta = choose_step(manager, run_dir, step)
        config = meta["config"]
        try:
            model_name, model = registered(MODELS, "model", config["model"])
            task_name, task = registered(TASKS, "task", config["task"])
            optim = from_fields(OptimConfig, config["optim"])
            run = from_fields(RunConfig, config["run"])
        except (KeyError, TypeError) as error:
            raise ConfigError(
                f"the configuration saved at step {chosen} in {run_dir} is not a run's "
                f"({error_reason(error)})"
            ) from None
        prepared = prepare(model, task, optim, dataclasses.replace(run, run_dir=None), None)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
            jax.eval_shape(state_arrays, prepared.abstract),
        )
        loaded = read(manager, chosen, target)
    restored: Restored = restored_from(loaded["state"], loaded["meta"], chosen)
    return LoadedRun(
        run_dir, model_name, task_name, prepared.model, task, optim, run, config, chosen,
        restored.state, restored.history,
    )  # fmt: skip


def saved_params(spec: str, include: str | None = None) -> dict[str, Any]:
    """The parameters of a saved run, "RUN_DIR" (its latest checkpoint) or "RUN_DIR:STEP"
    (a number, "best" or "latest"), for fit(init_params=...): all of them, or those whose
    path ("decoder/blocks_0/self_attention/query/kernel") matches the regex `include`."""
    run_dir, step = spec, None
    head, _, tail = spec.rpartition(":")
    if head and (tail.isdigit() or tail in ("best", "latest")):
        run_dir, step = head, tail
    params = load_run(run_dir, step).state.params
    if include is None:
        return params
    try:
        pattern = re.compile(include)
    except re.error as error:
        raise ConfigError(f"--init-include is not a regular expression: {error}") from None
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    chosen = {path: value for path, value in flat.items() if pattern.search(path)}
    if not chosen:
        shown = ", ".join(sorted(flat)[:8])
        raise ConfigError(
            f"--init-include {include!r} matches no parameter of {run_dir} ({shown}, ...)"
        )
    return flax.traverse_util.unflatten_dict(chosen, sep="/")


def evaluate_run(loaded: LoadedRun, split: str = "test") -> dict[str, float]:
    """The metrics of a loaded checkpoint on every example of `split`, as fit() computes its
    final ones."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    eval_step = make_eval_step(loaded.model, loaded.task)
    return evaluate(eval_step, loaded.state, loaded.task, split, loaded.run.eval_batch_size)


def text_codec(loaded: LoadedRun) -> Tokenizer | None:
    """The tokenizer between a run's token ids and text (its prompts and samples are then
    text), None where its tokens are no text: RUN_DIR/tokenizer.json, the one the run trained
    with (the tokens task keeps it there), else the task's own `tokenizer` (bytes for text, the
    corpus's for tokens)."""
    path = os.path.join(loaded.run_dir, "tokenizer.json")
    if os.path.isfile(path):
        return read_tokenizer(path)
    return getattr(loaded.task, "tokenizer", None)


def translates(loaded: LoadedRun) -> bool:
    """Whether the run is a seq2seq model on a task that decodes sources (translation)."""
    return hasattr(loaded.task, "decode") and hasattr(loaded.model, "encode")


def sample_run(
    loaded: LoadedRun,
    prompt: list[int],
    num_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
) -> list[int]:
    """A language model's continuation of the token ids `prompt` by `num_tokens` tokens
    (temperature 0: greedy; else sampled with `seed`), through arch.decoding.generate."""
    if not hasattr(loaded.model, "decode_step") or translates(loaded):
        raise ConfigError(
            f"{loaded.model_name} does not generate a continuation (sample works for the "
            "models with init_cache / decode_step: gpt, rnn_lm, linear_rnn_lm; a seq2seq "
            "model translates --source)"
        )
    if not prompt or num_tokens < 1:
        raise ConfigError("sample needs a prompt of at least one token and num_tokens >= 1")
    vocab = loaded.task.vocab_size
    if min(prompt) < 0 or max(prompt) >= vocab:
        raise ConfigError(f"prompt token ids must lie in [0, {vocab}), got {prompt}")
    tokens = generate(
        loaded.model,
        loaded.variables,
        jnp.asarray([prompt], jnp.int32),
        num_tokens,
        jax.random.key(seed),
        temperature,
        top_k,
    )
    return np.asarray(tokens)[0, len(prompt) :].tolist()


def translate_run(
    loaded: LoadedRun, source: list[int], beam_width: int = 1, length_penalty: float = 0.0
) -> list[int]:
    """A seq2seq run's translation of the source ids (greedy, or beam search), up to its EOS."""
    task = loaded.task
    if not translates(loaded):
        raise ConfigError(f"{loaded.model_name} on {loaded.task_name} does not translate")
    if not 1 <= len(source) <= task.max_length:
        raise ConfigError(f"a source of 1 to {task.max_length} ids is needed, got {len(source)}")
    words = range(FIRST_WORD, FIRST_WORD + task.num_words)
    if not set(source) <= set(words):
        raise ConfigError(f"source ids must lie in [{words.start}, {words.stop}), got {source}")
    padded = np.full((1, task.max_length), PAD, np.int32)
    padded[0, : len(source)] = source
    inputs = {"source": padded, "source_mask": np.arange(task.max_length)[None] < len(source)}
    out = task.decode(loaded.model, loaded.variables, inputs, beam_width, length_penalty)
    out = out[0].tolist()
    return out[: out.index(EOS)] if EOS in out else out
