"""`python -m train MODEL TASK [options]`: train any registered model on any registered task;
`python -m train eval RUN_DIR` / `sample RUN_DIR`: evaluate or sample a trained run;
`import-hf PATH TASK --run-dir R` / `export-hf RUN_DIR PATH`: Hugging Face GPT-2 weights;
`build-corpus OUT_DIR TASK`: a text task tokenised into memory-mapped files (task tokens).

Every field of the model, the task, the optimizer and the run is an option
(`--model.hidden-sizes 256 256 --task.batch-size 32 --optim.lr 3e-4 --steps 2000`);
`python -m train --list` prints the registered models and tasks; `--help` after a model and
task lists their options with defaults.
"""

import atexit
import contextlib
import functools
import os
import signal
import sys
import threading


def stop_at_once(number: int, frame: object, when: str = "during start-up") -> None:
    """SIGINT / SIGTERM while fit() does not hold the signals (importing and parsing before it,
    printing after it): nothing is being written, so stop now, with one line. fit() records
    them instead, and stops between its phases or after a step, with a checkpoint."""
    print(f"{signal.Signals(number).name} received {when}: stopped", file=sys.stderr)
    os._exit(128 + number)


def handle_signals(when: str) -> None:
    """Stop at once on SIGINT / SIGTERM, except a signal the parent chose to ignore (a shell's
    background job ignores SIGINT): that one stays ignored, as Python itself would leave it."""
    for number in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, functools.partial(stop_at_once, when=when))


if __name__ == "__main__":  # before the imports below, which take seconds
    handle_signals("during start-up, before anything was written")

import dataclasses  # noqa: E402
import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Annotated, Literal, Union  # noqa: E402

import tyro  # noqa: E402

from arch import MODELS, describe  # noqa: E402
from arch.errors import ConfigError  # noqa: E402
from train.checkpoint import CheckpointConfig  # noqa: E402
from train.guards import NonFiniteError, Preempted  # noqa: E402
from train.hf import read_gpt2, save_imported_run, write_gpt2  # noqa: E402
from train.load import (  # noqa: E402
    evaluate_run,
    from_fields,
    load_run,
    read_config_file,
    registered,
    sample_run,
    saved_params,
    text_codec,
    translate_run,
    translates,
)
from train.loop import RunConfig, fit  # noqa: E402
from train.optim import OptimConfig  # noqa: E402
from train.report import format_table  # noqa: E402
from train.rundir import StorageError, write_atomically  # noqa: E402
from train.runtime import keep_freed_memory  # noqa: E402
from train.sharding import ShardingConfig, initialize_distributed  # noqa: E402
from train.tasks import TASKS, TextFile, describe_task  # noqa: E402
from train.tokenize import build_corpus  # noqa: E402
from train.validate import unknown_name  # noqa: E402


def choices(registry: dict[str, type], describe_fn) -> type:
    """A tyro subcommand per registered class: its name is the positional argument."""
    options = tuple(
        Annotated[
            cls,
            tyro.conf.subcommand(
                name, default=cls(), prefix_name=False, description=describe_fn(cls)
            ),
        ]
        for name, cls in registry.items()
    )
    return Union[options]  # noqa: UP007 - a Union built at run time


@dataclasses.dataclass(frozen=True)
class Command:
    model: choices(MODELS, describe)
    task: choices(TASKS, describe_task)
    optim: OptimConfig = OptimConfig()
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = RunConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    sharding: ShardingConfig = ShardingConfig()
    init_from: str | None = None
    """Start from a saved run's parameters (fine-tuning, transfer): RUN_DIR or RUN_DIR:STEP
    (a number, best or latest); a parameter whose shape differs is an error that names it."""
    init_include: str | None = None
    """With --init-from: take only the parameters whose path matches this regex (the rest
    start fresh)."""


@dataclasses.dataclass(frozen=True)
class EvalCommand:
    """`python -m train eval RUN_DIR`: a run's checkpoint evaluated on one split (every
    example); prints the metrics and writes them to RUN_DIR/eval/SPLIT-STEP.json."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    split: Literal["test", "validation", "train"] = "test"
    step: str = "latest"
    """"latest", "best" (by the run's checkpoint.best_metric among the kept checkpoints) or a
    step number."""


def evaluate_command(argv: list[str]) -> dict:
    command = tyro.cli(EvalCommand, args=argv, prog="python -m train eval")
    loaded = load_run(command.run_dir, command.step)
    metrics = evaluate_run(loaded, command.split)
    print(format_table([{"split": command.split, **metrics}]))
    path = os.path.join(command.run_dir, "eval", f"{command.split}-{loaded.step}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {"step": loaded.step, "split": command.split, "metrics": metrics}
    write_atomically(path, json.dumps(record, indent=2))
    print(
        f"{loaded.model_name} on {loaded.task_name} at step {loaded.step} of "
        f"{command.run_dir}; written to {path}"
    )
    return record


@dataclasses.dataclass(frozen=True)
class SampleCommand:
    """`python -m train sample RUN_DIR`: continue a prompt with a run's language model (text
    for tasks of text, through the run's tokenizer; token ids otherwise), or translate --source
    with a seq2seq run."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    prompt: str = ""
    """Text (text and tokens tasks) or space-separated token ids."""
    prompt_file: str | None = None
    """Read the prompt from this file instead."""
    num_tokens: int = 200
    temperature: float = 0.8
    """0: greedy decoding."""
    top_k: int | None = None
    seed: int = 0
    step: str = "latest"
    """"latest", "best" or a step number."""
    source: str = ""
    """Seq2seq runs: the source's space-separated word ids."""
    beam_width: int = 1
    length_penalty: float = 0.0


def token_ids(text: str, option: str) -> list[int]:
    try:
        return [int(t) for t in text.split()]
    except ValueError:
        raise ConfigError(f"{option} takes space-separated token ids, got {text!r}") from None


def sample_command(argv: list[str]) -> dict:
    command = tyro.cli(SampleCommand, args=argv, prog="python -m train sample")
    loaded = load_run(command.run_dir, command.step)
    if translates(loaded):  # an encoder-decoder translates its source
        source = token_ids(command.source, "--source")
        tokens = translate_run(loaded, source, command.beam_width, command.length_penalty)
        print(" ".join(map(str, tokens)))
        return {"step": loaded.step, "source": source, "tokens": tokens}
    prompt = command.prompt
    if command.prompt_file is not None:
        try:
            with open(command.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except OSError as error:
            raise ConfigError(f"cannot read --prompt-file: {error}") from None
    codec = text_codec(loaded)
    ids = codec.encode(prompt) if codec else token_ids(prompt, "--prompt")
    tokens = sample_run(
        loaded, ids, command.num_tokens, command.temperature, command.top_k, command.seed
    )
    if codec:
        print(prompt + codec.decode(tokens))
    else:
        print(" ".join(map(str, ids + tokens)))
    return {"step": loaded.step, "prompt": ids, "tokens": tokens}


@dataclasses.dataclass(frozen=True)
class ImportCommand:
    """`python -m train import-hf PATH TASK --run-dir RUN_DIR`: a Hugging Face GPT-2 directory
    (config.json, model.safetensors) as step 0 of a gpt run on TASK (whose vocabulary must be
    the model's), which sample, eval, --init-from and `--config RUN_DIR/config.json` read."""

    path: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PATH")]
    """A directory with config.json and model.safetensors (what save_pretrained writes)."""
    task: choices(TASKS, describe_task)
    optim: OptimConfig = OptimConfig()
    """The optimizer a run trained on from this checkpoint uses (its state starts fresh)."""
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = RunConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()


def import_command(argv: list[str]) -> dict:
    command = tyro.cli(
        ImportCommand,
        args=argv,
        config=(tyro.conf.CascadeSubcommandArgs,),
        prog="python -m train import-hf",
    )
    run = dataclasses.replace(command.run, checkpoint=command.checkpoint)
    if run.run_dir is None:
        raise ConfigError("import-hf needs --run-dir: the new run directory to write")
    model, params = read_gpt2(command.path)
    vocab = command.task.model_fields.get("vocab_size")
    if vocab != model.vocab_size:
        has = "no token ids" if vocab is None else vocab
        raise ConfigError(
            f"the model in {command.path} reads {model.vocab_size} token ids and task "
            f"{name_of(TASKS, command.task)} has {has}: choose a task of its vocabulary"
        )
    loaded = save_imported_run(model, params, command.task, command.optim, run)
    print(
        f"{command.path} imported as step 0 of gpt on {loaded.task_name} in {run.run_dir} "
        f"({model.num_layers} layers, d {model.features}, {model.num_heads} heads, vocabulary "
        f"{model.vocab_size}, {model.max_len} positions)"
    )
    return {"run_dir": run.run_dir, "step": loaded.step}


@dataclasses.dataclass(frozen=True)
class ExportCommand:
    """`python -m train export-hf RUN_DIR PATH`: a gpt run's checkpoint as a Hugging Face GPT-2
    directory (config.json, model.safetensors) that GPT2LMHeadModel.from_pretrained reads."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    path: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PATH")]
    """The directory to write config.json and model.safetensors into."""
    step: str = "latest"
    """"latest", "best" or a step number."""


def export_command(argv: list[str]) -> dict:
    command = tyro.cli(ExportCommand, args=argv, prog="python -m train export-hf")
    loaded = load_run(command.run_dir, command.step)
    write_gpt2(command.path, loaded.model, loaded.state.params)
    print(f"step {loaded.step} of {command.run_dir} written to {command.path} (GPT-2 layout)")
    return {"step": loaded.step, "path": command.path}


TEXT_TASKS = {name: cls for name, cls in TASKS.items() if issubclass(cls, TextFile)}


@dataclasses.dataclass(frozen=True)
class BuildCorpusCommand:
    """`python -m train build-corpus OUT_DIR TASK`: a text task's train, validation and test
    regions tokenised into OUT_DIR (train.bin, validation.bin, test.bin, tokenizer.json,
    meta.json), which task tokens reads with --task.data-dir OUT_DIR; see train/tokenize.py."""

    out_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")]
    """A new or empty directory."""
    task: choices(TEXT_TASKS, describe_task)
    tokenizer: Literal["bpe", "bytes"] = "bpe"
    """bpe: a byte-level BPE trained on the train region only; bytes: one token per byte."""
    vocab_size: int | None = None
    """BPE's largest vocabulary (the 256 bytes and the merges; default 4096)."""


def build_corpus_command(argv: list[str]) -> dict:
    command = tyro.cli(
        BuildCorpusCommand,
        args=argv,
        config=(tyro.conf.CascadeSubcommandArgs,),
        prog="python -m train build-corpus",
    )
    meta = build_corpus(command.out_dir, command.task, command.tokenizer, command.vocab_size)
    counts = ", ".join(f"{s} {n['tokens']:,} tokens" for s, n in meta["splits"].items())
    print(f"{command.out_dir}: {meta['tokenizer']} vocabulary {meta['vocab_size']}, {counts}")
    return meta


VERBS = {
    "eval": evaluate_command,
    "sample": sample_command,
    "import-hf": import_command,
    "export-hf": export_command,
    "build-corpus": build_corpus_command,
}


def config_defaults(argv: list[str]) -> tuple[Command | None, list[str]]:
    """`--config FILE` taken out of argv and read as the Command the other options change."""
    for i, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            path = arg.partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "")
            rest = argv[:i] + argv[i + (1 if "=" in arg else 2) :]
            break
    else:
        return None, argv
    if not path:
        raise ConfigError("--config needs a file: a run's config.json, or a TOML or YAML file")
    data = read_config_file(path)
    try:
        run = from_fields(RunConfig, data.get("run", {}))
        command = Command(
            model=registered(MODELS, "model", data["model"])[1],
            task=registered(TASKS, "task", data["task"])[1],
            optim=from_fields(OptimConfig, data.get("optim", {})),
            run=run,
            checkpoint=run.checkpoint,
            sharding=run.sharding,
        )
    except TypeError as error:
        raise ConfigError(f"--config {path}: {error}") from None
    return command, rest


def listing() -> str:
    width = max(map(len, [*MODELS, *TASKS])) + 2
    lines = ["models:"] + [f"  {n:<{width}}{describe(c)}" for n, c in MODELS.items()]
    lines += ["tasks:"] + [f"  {n:<{width}}{describe_task(c)}" for n, c in TASKS.items()]
    return "\n".join(lines)


def name_of(registry: dict[str, type], obj: object) -> str:
    return next(name for name, cls in registry.items() if type(obj) is cls)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """What the user can act on, as one line on standard error and no traceback: ConfigError
    (status 2, as a usage error), StorageError and NonFiniteError (1); Preempted (its
    checkpoint saved) as a process killed by the signal would exit, 128 + its number."""
    try:
        yield
    except Preempted as stop:
        print(stop, file=sys.stderr)
        raise SystemExit(128 + stop.signal_number) from None
    except (ConfigError, NonFiniteError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2 if isinstance(error, ConfigError) else 1) from None


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--list"]:
        print(listing())
        return {}
    with one_line_errors():
        if argv[:1] and argv[0] in VERBS:
            return VERBS[argv[0]](argv[1:])
        return train_command(argv)


def train_command(argv: list[str]) -> dict:
    """`python -m train [MODEL TASK] [--config FILE] [options]`: fit, then its report."""
    default, argv = config_defaults(argv)
    for position, (kind, registry) in enumerate((("model", MODELS), ("task", TASKS))):
        name = argv[position] if len(argv) > position else "-"
        if name.startswith("-"):  # options from here on (MODEL TASK come first, if at all)
            break
        if name not in registry:
            raise ConfigError(unknown_name(kind, name, registry))
    command = tyro.cli(
        Command,
        args=argv,
        default=default,
        config=(tyro.conf.CascadeSubcommandArgs,),
        description=__doc__.splitlines()[0],
        prog="python -m train",
    )
    run = dataclasses.replace(command.run, checkpoint=command.checkpoint, sharding=command.sharding)
    if run.distributed:
        initialize_distributed()
    if run.run_dir is None:
        name = f"{name_of(MODELS, command.model)}-{name_of(TASKS, command.task)}"
        run = dataclasses.replace(run, run_dir=f"runs/{name}")
    given = None
    if command.init_from is not None:
        given = saved_params(command.init_from, command.init_include)
    elif command.init_include is not None:
        raise ConfigError("--init-include needs --init-from")
    try:
        result = fit(command.model, command.task, command.optim, run, given)
    finally:
        if isinstance(signal.getsignal(signal.SIGTERM), functools.partial):  # the command line's
            handle_signals("after the run ended (its files are complete)")
    summary = result.summary
    print(
        format_table([{"split": split, **metrics} for split, metrics in summary["final"].items()])
    )
    resumed = summary.get("resumed_from", 0)
    if resumed == summary["steps"]:
        print(
            f"the run in {run.run_dir} was already complete at step {resumed}: nothing was "
            "trained, its final metrics were evaluated again (`python -m train eval "
            f"{run.run_dir}` evaluates a checkpoint; raise --steps to train on)"
        )
        return result.summary
    trained = (
        f"{summary['steps'] - resumed} steps after resuming at step {resumed}"
        if resumed
        else (f"{summary['steps']} steps")
    )
    print(
        f"{summary['parameters']:,} parameters, {trained} in "
        f"{summary['wall_time']:.1f} s (compile {summary['compile_time']:.2f} s, "
        f"{summary['examples_per_second']:,.0f} examples/s); run directory: {run.run_dir}"
    )
    return result.summary


def exit_with_handlers(code: object) -> None:
    """Run the exit functions (JAX's own shut-down, the distributed client's among them), flush
    and leave, without the interpreter's teardown: that takes seconds with XLA loaded, and it
    puts the default handlers back first, so a Ctrl-C arriving then killed the process with no
    word (exit -2) instead of the one line and 130 of every other moment."""
    if code is not None and not isinstance(code, int):  # SystemExit("message"), as Python does
        print(code, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():  # what the interpreter's own exit would wait for
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    keep_freed_memory()  # before the first JAX computation (train/runtime.py)
    try:
        main()
    except SystemExit as stop:
        exit_with_handlers(stop.code)
    exit_with_handlers(0)
