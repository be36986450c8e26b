"""Positional encodings: without them a Transformer cannot see order.

Claim: on tasks that only a model of token order can solve, an encoder-only Transformer with
no positional information stays at the order-blind level, and the same Transformer with
sinusoidal, learned or rotary positions solves them. Two tasks (train/tasks/order.py):

- "sorted": is the token sequence non-decreasing? The negatives are sorted sequences with two
  distinct tokens swapped, so both classes share the same distribution of multisets: an
  order-blind model is at chance, 0.5. Model: "transformer" (TransformerClassifier, [CLS]
  pooling), one logit.
- "reverse": output the sequence reversed, one token per position. Model: "bert"
  (MaskedLanguageModel: tokens in, a token per position out). Without positions self-attention
  is permutation-equivariant, so position i's output is a function of its own token x_i and the
  multiset M of the sequence; the target x_{t-1-i} is then a uniform draw from M minus one copy
  of x_i, and the best order-blind accuracy is E[max_c count_c(M - x_i)] / (t - 1), computed
  exactly on the test inputs (the "order-blind level"; 1 / vocab is plain guessing).

"holds" (per task) = the "none" model's test accuracy < the order-blind level + 0.05, and
each of sinusoidal, learned and rotary reaches >= 0.95; "reverse + anchor" (`--anchored`,
rotary by default): the same reversal with one fixed token starting each sequence, where each
anchored encoding must reach >= 0.95. The claim holds if it holds on every task. Rotary
encodes only relative offsets (it rotates queries and keys inside attention); the others add
an absolute position vector to the embeddings.

Command: `python -m experiments.positional_encoding` (`--tasks sorted`, `--smoke`).
The result is in README.md's table of experiments.
"""

import dataclasses
import os
from typing import Literal

import numpy as np

from arch import MODELS
from arch.errors import ConfigError
from arch.layers import Positional
from experiments.common.scaffold import Experiment, TrainingConfig
from train.loop import FitResult
from train.report import figure, fit_seeds, format_table, save_figure, seed_summary
from train.tasks import TASKS
from train.tasks.order import AnchoredReverse

CLAIM = (
    "Without positional information a Transformer stays at the order-blind level on "
    "order-dependent tasks (is the sequence sorted; reverse it); with sinusoidal, learned or "
    "rotary positions it solves them."
)
SOLVED = 0.95
"""Test accuracy that counts as solving a task."""
BLIND_MARGIN = 0.05
"""The "none" model stays at the order-blind level: its accuracy is below level + margin."""
MODEL_OF_TASK = {"sorted": "transformer", "reverse": "bert"}

TaskName = Literal["sorted", "reverse"]


@dataclasses.dataclass(frozen=True)
class Config(TrainingConfig):
    encodings: tuple[Positional, ...] = ("none", "sinusoidal", "learned", "rotary")
    """Positional encodings to train; "none" and at least one other are needed."""
    tasks: tuple[TaskName, ...] = ("sorted", "reverse")
    features: int = 32
    """d: the model width (4 heads of 8; feed-forward 4d)."""
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 3000
    """Train steps per model (fresh batches of batch_size sequences)."""
    vocab_size: int = 10
    sorted_length: int = 10
    reverse_length: int = 12
    """Even: every position's target is another position's token."""
    anchored: tuple[Positional, ...] = ("rotary",)
    """Encodings also trained on "reverse" with an anchor token starting every sequence
    (train.tasks.order.AnchoredReverse: an edge to count positions from, which relative
    offsets alone lack; the "sorted" classifier's [CLS] token is one already)."""
    evaluations: int = 10
    """Validation evaluations per run (the curves of the plot)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of initialisation (the tasks' data and test sets stay fixed)."""

    def smoke_settings(self) -> dict:
        return dict(
            features=16, num_layers=1, steps=20, warmup_steps=5, evaluations=2, seeds=self.seeds[:1]
        )


def make_task(name: TaskName, config: Config):
    length = config.sorted_length if name == "sorted" else config.reverse_length
    return TASKS[name](batch_size=config.batch_size, vocab_size=config.vocab_size, length=length)


def order_blind_level(name: TaskName, task) -> float:
    """The best test accuracy of a model that sees the tokens but not their order."""
    if name == "sorted":
        return 0.5  # the multisets of both classes are drawn the same way
    inputs = task.data["test"][0]  # [n, t]
    length, vocab = inputs.shape[1], task.vocab_size
    counts = np.stack([np.sum(inputs == c, axis=1) for c in range(vocab)], axis=1)  # [n, v]
    others = counts[:, None, :] - (inputs[:, :, None] == np.arange(vocab))  # M - x_i: [n, t, v]
    return float(np.mean(others.max(axis=-1)) / (length - 1))


def per_position_accuracy(result: FitResult, task) -> list[float] | None:
    """Test accuracy at each scored output position [t] of a per-token model (None: one
    output); an anchor's position, never scored, is left out."""
    inputs, targets = task.data["test"][:2]
    if targets.ndim != 2:
        return None
    mask = task.data["test"][2]
    logits = result.model.apply(result.state.variables, inputs)  # [n, t, v]
    right = np.mean(np.argmax(logits, axis=-1) == targets, axis=0)
    return right[mask.any(axis=0)].tolist()


def train_model(name: TaskName, positional: Positional, task, config: Config, out: str) -> dict:
    """Train one encoder with one positional encoding once per seed; its test accuracy (mean
    over seeds), size, times and validation curve."""
    anchor = isinstance(task, AnchoredReverse)
    # the classifier's [CLS] token; the anchor token of an anchored reverse
    max_len = task.length + (name == "sorted" or anchor)
    model = MODELS[MODEL_OF_TASK[name]](
        features=config.features,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        positional=positional,
        max_len=max_len,
    )
    results = fit_seeds(
        model,
        task,
        config.optim(config.steps),
        config.steps,
        config.seeds,
        os.path.join(out, f"{name}-{positional}" + ("-anchor" if anchor else "")),
        config.evaluations,
    )
    summary = seed_summary(results)
    # this study's names of the mean accuracy and curve (its plot, table and tests read them)
    summary["test_accuracy"] = summary.pop("test_accuracy_mean")
    summary["validation_accuracy"] = summary.pop("validation_accuracy_mean")
    final = lambda split, key: np.array(
        [r.summary["final"][split].get(key, np.nan) for r in results]
    )
    whole = final("test", "sequence_accuracy")
    positions = [per_position_accuracy(r, task) for r in results]
    return {
        "task": name,
        "positional": positional,
        "anchor": anchor,
        "label": positional + (" + anchor" if anchor else ""),
        "model": type(results[0].model).__name__,
        **summary,
        "test_sequence_accuracy": None if np.isnan(whole).any() else float(whole.mean()),
        "per_position_accuracy": None
        if positions[0] is None
        else np.mean(positions, axis=0).tolist(),
        "train_accuracy": float(final("train", "accuracy").mean()),
    }


def task_verdict(rows: list[dict], level: float) -> bool:
    """The claim on one task: "none" at the order-blind level, every encoding solves it (an
    anchored run: every encoding solves it)."""
    blind = [r for r in rows if r["positional"] == "none"]
    others = [r for r in rows if r["positional"] != "none"]
    return all(r["test_accuracy"] < level + BLIND_MARGIN for r in blind) and all(
        r["test_accuracy"] >= SOLVED for r in others
    )


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    parts = []
    for name, holds in results["holds_per_task"].items():
        task = name.removesuffix(" + anchor")
        rows = [r for r in results["runs"] if r["task"] == task and r["anchor"] == (task != name)]
        accuracies = ", ".join(f"{r['positional']} {r['test_accuracy']:.3f}" for r in rows)
        level = results["order_blind_level"][task]
        verdict = "holds" if holds else "fails"
        parts.append(
            f"{name} ({MODEL_OF_TASK[task]}, order-blind level {level:.3f}): {accuracies} "
            f"({verdict})"
        )
    seconds, config = results["wall_seconds"], results["config"]
    runtime = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return (
        f"| `python -m experiments.positional_encoding` (~{runtime}) | without positions a "
        f"Transformer is blind to order (at chance on sorted / reverse); sinusoidal, learned and "
        f"rotary positions solve both | **{'holds' if results['holds'] else 'fails'}.** Test "
        f"accuracy, mean of {len(config['seeds'])} seeds, after {config['steps']} Adam steps, "
        f"d{config['features']} x {config['num_layers']} layers: {'; '.join(parts)}. |"
    )


def plot(results: dict, path: str) -> None:
    """Test accuracy per encoding and task; validation curves per task; accuracy per position
    of the per-token task(s)."""
    names = list(results["order_blind_level"])
    per_token = [r for r in results["runs"] if r["per_position_accuracy"] is not None]
    panels = 1 + len(names) + bool(per_token)
    fig, axes = figure(1, panels, figsize=(5 * panels, 4), squeeze=False)
    bars, curves = axes[0, 0], axes[0, 1 : 1 + len(names)]
    encodings = list(dict.fromkeys(r["label"] for r in results["runs"]))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        rows = {r["label"]: r for r in results["runs"] if r["task"] == name}
        x = np.arange(len(encodings)) + (i - (len(names) - 1) / 2) * width
        heights = [rows[e]["test_accuracy"] if e in rows else np.nan for e in encodings]
        bars.bar(x, heights, width, label=name)
        level = results["order_blind_level"][name]
        bars.hlines(level, x[0] - width / 2, x[-1] + width / 2, colors="k", linestyles=":")
        for row in rows.values():
            curves[i].plot(
                row["validation_steps"],
                row["validation_accuracy"],
                marker=".",
                label=row["label"],
            )
        curves[i].axhline(level, color="gray", linestyle=":", label=f"order-blind {level:.3f}")
        curves[i].set(xlabel="step", ylabel="validation accuracy", ylim=(0, 1.02))
        curves[i].set_title(f"{name} ({MODEL_OF_TASK[name]})")
        curves[i].legend(fontsize=8)
    bars.set_xticks(np.arange(len(encodings)), encodings)
    bars.set(ylabel="test accuracy (mean over seeds)", ylim=(0, 1.02))
    bars.set_title("Test accuracy per positional encoding (dotted: order-blind level)")
    bars.legend(fontsize=8)
    if per_token:
        positions = axes[0, -1]
        for row in per_token:
            accuracy = row["per_position_accuracy"]
            positions.plot(range(len(accuracy)), accuracy, marker="o", label=row["label"])
        positions.set(xlabel="output position", ylabel="test accuracy", ylim=(0, 1.02))
        positions.set_title(f"{per_token[0]['task']}: accuracy per position")
        positions.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def study(config: Config, out: str) -> dict:
    if "none" not in config.encodings or len(set(config.encodings)) < 2:
        raise ConfigError(
            f"the claim compares no positions with positions: --encodings must include none and "
            f"another encoding, got {config.encodings}"
        )
    if config.reverse_length % 2:
        raise ConfigError(f"--reverse-length must be even, got {config.reverse_length}")
    runs, levels = [], {}
    for name in config.tasks:
        task = make_task(name, config)
        levels[name] = order_blind_level(name, task)
        runs += [train_model(name, p, task, config, out) for p in config.encodings]
    if "reverse" in config.tasks:
        anchored = AnchoredReverse(**dataclasses.asdict(make_task("reverse", config)))
        runs += [train_model("reverse", p, anchored, config, out) for p in config.anchored]
    holds_per_task = {
        name: task_verdict([r for r in runs if r["task"] == name and not r["anchor"]], level)
        for name, level in levels.items()
    }
    if "reverse" in config.tasks and config.anchored:
        rows = [r for r in runs if r["anchor"]]
        holds_per_task["reverse + anchor"] = all(r["test_accuracy"] >= SOLVED for r in rows)
    results = {
        "holds": all(holds_per_task.values()),
        "holds_per_task": holds_per_task,
        "criterion": f"per task: 'none' test accuracy < order-blind level + {BLIND_MARGIN}, "
        f"every other encoding >= {SOLVED}; reverse + anchor: every anchored encoding >= "
        f"{SOLVED}",
        "order_blind_level": levels,
        "guessing": 1 / config.vocab_size,
        "runs": runs,
    }
    plot(results, os.path.join(out, "positional_encoding.png"))
    table = [
        {
            "task": r["task"],
            "positional": r["label"],
            "parameters": r["parameters"],
            "test accuracy": f"{r['test_accuracy']:.4f} ± {r['test_accuracy_std']:.4f}",
            "worst seed": min(r["test_accuracy_per_seed"]),
            "order-blind": levels[r["task"]],
            "sequences right": "-"
            if r["test_sequence_accuracy"] is None
            else r["test_sequence_accuracy"],
            "train s": r["train_time_s"],
            "compile s": r["compile_time_s"],
        }
        for r in runs
    ]
    print(format_table(table))
    for r in runs:
        if r["per_position_accuracy"] is not None:
            accuracies = " ".join(f"{a:.2f}" for a in r["per_position_accuracy"])
            print(f"{r['task']} {r['label']:16}  accuracy per position: {accuracies}")
    print(f"holds per task: {holds_per_task}")
    return results


EXPERIMENT = Experiment("positional_encoding", CLAIM, Config, study, summary_line=summary_line)
main = EXPERIMENT.main_of(__name__)
