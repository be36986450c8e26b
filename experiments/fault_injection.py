"""Fault injection: a training run SIGKILLed at random moments and resumed ends bit-identical.

Claim: a training run SIGKILLed N times at random moments -- during start-up, while training,
and inside checkpoint saves -- and resumed after each kill by re-running the same command ends
bit-identical to an uninterrupted run: summary.json (less its timings), every metrics.jsonl
record (less its throughput), and every array of the last checkpoint.

Command: python -m experiments.fault_injection   (`--kills 20`, `--families mlp lstm gpt`,
`--smoke`: one family, two kills). The result is in README.md's table of experiments.

Per family (an MLP on digits, an LSTM on adding, a one-layer GPT on markov; dropout on, so the
PRNG state matters), `python -m train` runs uninterrupted twice: the reference, which also
fills a private compilation cache, and a control (not in the smoke run), whose wall time T
scales the kill delays and which shows that two uninterrupted runs agree at all. Then the same
command with its own run directory is started, SIGKILLed after a delay drawn uniformly from
(0, T], and started again. Each kill is classified by what is observable once the process is
dead: "start-up" if it had not printed that its step compiled, "save" if an orbax temporary
directory is left under checkpoints/, else "training". A resumed process has fewer steps left
than T covers, so some finish on their own before the delay: that is no kill, that victim
directory is complete, and the kills go on in a fresh one. After the N-th kill the command
runs once more to completion. Every completed victim directory is compared with the
reference; every start that was not killed must exit 0. Checkpoints are saved every 5 steps,
so most of training is spent inside an asynchronous save and many kills land in one.

The result is in README.md ("Resuming, preemption and failures") and in results.json.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Literal

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments.common.scaffold import Experiment, ExperimentConfig
from train.checkpoint import TEMPORARY, flatten
from train.report import figure, format_table, save_figure

CLAIM = (
    "a training run SIGKILLed N times at random moments (start-up, training, inside checkpoint "
    "saves) and resumed by re-running the same command ends bit-identical to an uninterrupted "
    "run: summary.json, every metrics.jsonl record, every array of the last checkpoint"
)
Family = Literal["mlp", "lstm", "gpt"]
FAMILIES: dict[str, list[str]] = {
    "mlp": ["mlp", "digits", "--model.hidden-sizes", "16", "--model.dropout-rate", "0.1"],
    "lstm": [
        "rnn", "adding", "--model.cell", "lstm", "--model.hidden-size", "16",
        "--task.length", "12", "--task.batch-size", "8",
    ],
    "gpt": [
        "gpt", "markov", "--model.num-layers", "1", "--model.features", "16",
        "--model.num-heads", "2", "--model.max-len", "16", "--model.dropout-rate", "0.1",
        "--task.length", "16", "--task.batch-size", "8", "--task.vocab-size", "8",
    ],
}  # fmt: skip
MOMENTS = ("start-up", "training", "save")
COMPILED = re.compile(r"steps, compiled in ([\d.]+) s")  # printed once both steps compiled
RESUMED = re.compile(r"resuming from the checkpoint at step (\d+)")
SUMMARY_TIMING = {
    "wall_time", "init_time", "compile_time", "train_time", "examples_per_second",
    "resumed_from", "run_dir",
}  # fmt: skip
RECORD_TIMING = {"examples_per_second"}


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    families: tuple[Family, ...] = ("mlp", "lstm", "gpt")
    kills: int = 20
    """SIGKILLs per family (starts that finish on their own before their delay do not count)."""
    seed: int = 0
    """Seed of the kill delays (the training command keeps its own default seed)."""
    steps: int = 300
    """Long enough that training, not start-up (about 4 s of imports), is most of a run."""
    control: bool = True
    """Also run uninterrupted a second time, warm: T is its wall time (else the reference's),
    and it shows that two uninterrupted runs agree at all."""

    def smoke_settings(self) -> dict:
        return dict(families=("mlp",), kills=2, steps=30, control=False)


def train_command(family: str, steps: int) -> list[str]:
    return [
        *(sys.executable, "-m", "train", *FAMILIES[family]),
        *("--steps", str(steps), "--log-every", "5", "--eval-every", "20"),
        *("--checkpoint.every", "5", "--progress", "lines", "--no-tensorboard"),
    ]


def start(
    command: list[str], run_dir: str, log: str, env: dict, delay: float | None, limit: float
) -> dict[str, Any]:
    """Run `command` in `run_dir`, SIGKILLed after `delay` seconds unless it exits first (None:
    let it finish, killed only past `limit`); where it was when it stopped."""
    began = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(
            [*command, "--run-dir", run_dir], stdout=output, stderr=subprocess.STDOUT, env=env
        )
        try:
            process.wait(timeout=limit if delay is None else delay)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        finally:
            if process.poll() is None:  # interrupted ourselves: leave no orphan writing the dir
                process.kill()
                process.wait()
    seconds = time.perf_counter() - began
    with open(log) as f:
        text = f.read()
    checkpoints = os.path.join(run_dir, "checkpoints")
    compiled = COMPILED.search(text)
    saving = os.path.isdir(checkpoints) and any(TEMPORARY in n for n in os.listdir(checkpoints))
    if process.returncode != -signal.SIGKILL:
        moment = "finished"  # also a racing exit between the timeout and the signal
    elif delay is None:
        moment = "hung"
    elif not compiled:
        moment = "start-up"
    else:
        moment = "save" if saving else "training"
    resumed = RESUMED.search(text)
    return {
        "run_dir": os.path.basename(run_dir),
        "delay": delay,
        "seconds": seconds,
        "moment": moment,
        "returncode": process.returncode,
        "resumed_from": int(resumed.group(1)) if resumed else None,
        "compile_seconds": float(compiled.group(1)) if compiled else None,
        "removed_incomplete": text.count("removing an incomplete checkpoint"),
        "damaged": text.count("cannot be read"),
        "tail": text[-1500:] if moment in ("finished", "hung") and process.returncode else "",
    }


def first_difference(reference: dict, other: dict) -> str | None:
    """'key: reference value vs other value' for the first key (sorted) that differs."""
    for key in sorted(set(reference) | set(other)):
        a, b = reference.get(key, "(absent)"), other.get(key, "(absent)")
        same = (
            a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            if isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
            else type(a) is type(b) and a == b
        )  # arrays bit for bit: NaN equals its own bits, -0.0 differs from 0.0
        if not same:
            return f"{key}: {a!r} vs {b!r}"
    return None


def checkpoint_arrays(run_dir: str) -> tuple[int, dict[str, np.ndarray]]:
    """The latest finished checkpoint's step and its "state" arrays by key path, read with
    orbax directly (no target: nothing of this run's code shapes the reading)."""
    directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
    step = max(int(n) for n in os.listdir(directory) if n.isdigit())
    tree = ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "state"))
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return step, {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def compare_runs(reference: str, other: str) -> dict[str, str | None]:
    """The first difference (None: identical) of summary.json without its timings,
    metrics.jsonl record by record without throughput, and the last checkpoint's arrays."""

    def summary(run_dir: str) -> dict:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return flatten({k: v for k, v in json.load(f).items() if k not in SUMMARY_TIMING})

    def records(run_dir: str) -> list[dict]:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            lines = [json.loads(line) for line in f]
        return [{k: v for k, v in r.items() if k not in RECORD_TIMING} for r in lines]

    def metrics(a: list[dict], b: list[dict]) -> str | None:
        for line, (x, y) in enumerate(zip(a, b, strict=False), start=1):  # lengths: below
            if difference := first_difference(x, y):
                return f"line {line} (step {x.get('step')} {x.get('split')}): {difference}"
        return None if len(a) == len(b) else f"{len(a)} records vs {len(b)}"

    def arrays(a: tuple, b: tuple) -> str | None:
        if a[0] != b[0]:
            return f"latest checkpoint at step {a[0]} vs {b[0]}"
        return first_difference(a[1], b[1])

    found: dict[str, str | None] = {}
    for name, read, differ in (
        ("summary", summary, first_difference),
        ("metrics", records, metrics),
        ("checkpoint", checkpoint_arrays, arrays),
    ):
        try:
            found[name] = differ(read(reference), read(other))
        except (OSError, ValueError) as error:  # a missing file or checkpoint is a difference
            found[name] = f"{type(error).__name__}: {error}"
    return found


def attack(family: str, config: Config, out: str, cache_dir: str, rng: np.random.Generator):
    """Reference, control, then kills until config.kills and a last run to completion; the
    starts and the comparisons of every completed victim directory with the reference."""
    command = train_command(family, config.steps)
    runs = os.path.join(out, "runs", family)
    shutil.rmtree(runs, ignore_errors=True)  # a stale victim directory would be resumed
    os.makedirs(os.path.join(runs, "logs"))
    env = {**os.environ, "LINEAGE_CACHE_DIR": cache_dir}
    log = lambda name: os.path.join(runs, "logs", f"{name}.log")
    path = lambda name: os.path.join(runs, name)
    began = time.perf_counter()
    names = ("ref", "control") if config.control else ("ref",)
    uninterrupted = [start(command, path(n), log(n), env, None, 600) for n in names]
    delays = uninterrupted[-1]["seconds"]  # T; the control's cache is as warm as every victim's
    limit = max(120.0, 10 * delays)
    starts: list[dict[str, Any]] = []
    completed, kills, victim = [], 0, 0
    while all(u["returncode"] == 0 for u in uninterrupted):  # else nothing to resume towards
        name = f"victim-{victim}"
        delay = None if kills == config.kills else delays * (1.0 - rng.random())  # (0, T]
        started = start(command, path(name), log(f"{len(starts):03d}"), env, delay, limit)
        starts.append(started)
        if started["moment"] not in ("finished", "hung"):
            kills += 1
            continue
        completed.append(name)
        if started["returncode"] != 0 or kills == config.kills:
            break  # a failed start would fail again: stop and report it
        victim += 1
    comparisons = {n: compare_runs(path("ref"), path(n)) for n in [*names[1:], *completed]}
    if not completed:
        comparisons["victim"] = dict.fromkeys(("summary", "metrics", "checkpoint"), "no victim ran")
    return command, uninterrupted, starts, comparisons, time.perf_counter() - began


def report(attacked: tuple) -> dict[str, Any]:
    """One family's kills by moment, resumes, exit codes and comparisons."""
    command, uninterrupted, starts, comparisons, seconds = attacked
    victims = {n: c for n, c in comparisons.items() if n != "control"}
    kills = {m: sum(s["moment"] == m for s in starts) for m in MOMENTS}
    not_killed = [s for s in starts if s["returncode"] != -signal.SIGKILL]
    identical, first = {}, {}
    for item in ("summary", "metrics", "checkpoint"):
        identical[item] = all(c[item] is None for c in victims.values())
        differing = [f"{n}: {c[item]}" for n, c in victims.items() if c[item] is not None]
        first[item] = differing[0] if differing else None
    return {
        "command": " ".join(["python", *command[1:]]),
        "reference_seconds": uninterrupted[0]["seconds"],
        "T_seconds": uninterrupted[-1]["seconds"],
        "control_identical": (
            all(d is None for d in comparisons["control"].values())
            if "control" in comparisons
            else None
        ),
        "kills": kills,
        "kills_total": sum(kills.values()),
        "victim_runs": len(victims),
        "resumes": sum(s["resumed_from"] is not None for s in starts),
        "resumed_from": [s["resumed_from"] for s in starts if s["resumed_from"] is not None],
        "incomplete_checkpoints_removed": sum(s["removed_incomplete"] for s in starts),
        "damaged_checkpoints": sum(s["damaged"] for s in starts),
        "uninterrupted_exit_codes": [u["returncode"] for u in uninterrupted],
        "unkilled_exit_codes": [s["returncode"] for s in not_killed],
        "failures": [s["tail"] for s in [*uninterrupted, *not_killed] if s["tail"]],
        "exits_ok": all(s["returncode"] == 0 for s in [*uninterrupted, *not_killed]),
        "identical": identical,
        "first_difference": first,
        "comparisons": comparisons,
        "starts": starts,
        "seconds": seconds,
    }


def study(config: Config, out: str) -> dict:
    families = {}
    with tempfile.TemporaryDirectory() as cache_dir:  # private: the user's cache is untouched
        for family in config.families:
            # one stream per family, so a family's delays do not depend on which others ran
            rng = np.random.default_rng([config.seed, list(FAMILIES).index(family)])
            families[family] = report(attack(family, config, out, cache_dir, rng))
    results = {
        "holds": all(
            f["exits_ok"] and f["kills_total"] == config.kills and all(f["identical"].values())
            for f in families.values()
        ),
        "kills_asked": config.kills,
        "families": families,
    }
    rows = [
        {
            "family": name,
            **{m: f["kills"][m] for m in MOMENTS},
            "victim runs": f["victim_runs"],
            "resumes": f["resumes"],
            "exits ok": f["exits_ok"],
            **{item: "yes" if same else "NO" for item, same in f["identical"].items()},
            "control": {True: "yes", False: "NO", None: "-"}[f["control_identical"]],
            "T s": f["T_seconds"],
            "s": f["seconds"],
        }
        for name, f in families.items()
    ]
    results["table"] = rows
    fig, ax = figure(figsize=(5, 3))
    width = 0.8 / len(MOMENTS)
    for i, moment in enumerate(MOMENTS):
        positions = [j + (i - 1) * width for j in range(len(families))]
        ax.bar(positions, [f["kills"][moment] for f in families.values()], width, label=moment)
    ax.set_xticks(range(len(families)), list(families))
    ax.set_ylabel("SIGKILLs")
    ax.set_title(f"where {config.kills} kills per family landed", fontsize=9)
    counts = [n for f in families.values() for n in f["kills"].values()]
    ax.set_ylim(0, 1.3 * max(counts, default=1) + 0.5)  # room for the legend above the bars
    ax.legend(fontsize=8, ncols=len(MOMENTS), loc="upper center")
    save_figure(fig, os.path.join(out, "fault_injection.png"))
    print(format_table(rows))
    for name, f in families.items():
        for failure in f["failures"]:
            print(f"{name}: a start that was not killed failed:\n{failure}")
        for item, difference in f["first_difference"].items():
            if difference:
                print(f"{name} {item} differs: {difference}")
    return results


EXPERIMENT = Experiment("fault_injection", CLAIM, Config, study)
main = EXPERIMENT.main_of(__name__)
