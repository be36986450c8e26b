"""What every experiment writes: results.json, a printed table, and its run directory; and
the runs of one model over several seeds, summarised."""

import json
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import numpy as np
from matplotlib.figure import Figure

from train.loop import FitResult, RunConfig, fit
from train.optim import OptimConfig
from train.tasks.base import Task


def experiment_dir(name: str, run_dir: str | None = None) -> str:
    """`run_dir` if given, else runs/experiments/<name>; created."""
    path = run_dir or os.path.join("runs", "experiments", name)
    os.makedirs(path, exist_ok=True)
    return path


def write_results(run_dir: str, results: dict[str, Any]) -> str:
    """Write results.json (the claim, its numbers, whether it held); return the path."""
    path = os.path.join(run_dir, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=float)
    return path


def figure(nrows: int = 1, ncols: int = 1, **subplots_kw: Any) -> tuple[Figure, Any]:
    """A figure and its axes, like pyplot.subplots but without pyplot's global state or a
    display backend: the figure lives until it is saved and dropped."""
    fig = Figure(figsize=subplots_kw.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def save_figure(fig: Figure, path: str, dpi: int = 120) -> str:
    """Lay out and write `fig` as a PNG; return the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of `rows` (dicts) with one column per key; floats to 4 digits."""
    columns = list(columns or rows[0].keys())
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def fit_seeds(
    model: nn.Module,
    task: Task,
    optim: OptimConfig,
    steps: int,
    seeds: Sequence[int],
    run_dir: str,
    evaluations: int = 1,
    **run_fields: Any,
) -> list[FitResult]:
    """One quiet `fit` per seed, in order, each evaluated `evaluations` times and written to
    `run_dir`-seed<seed>; `run_fields` set anything else of its RunConfig. The results."""
    return [
        fit(
            model,
            task,
            optim,
            RunConfig.quiet(
                steps, evaluations, seed=seed, run_dir=f"{run_dir}-seed{seed}", **run_fields
            ),
        )
        for seed in seeds
    ]


def seed_summary(results: Sequence[FitResult], metric: str = "accuracy") -> dict[str, Any]:
    """One model's runs over seeds: its parameter count, the final test `metric`'s mean, std
    and per-seed values, the mean times and throughput, and the mean validation curve of
    `metric` (the runs share a step budget, so they are evaluated at the same steps)."""
    test = np.array([r.summary["final"]["test"][metric] for r in results])
    curves = [r.curve(metric) for r in results]
    mean_of = lambda key: float(np.mean([r.summary[key] for r in results]))
    return {
        "parameters": results[0].summary["parameters"],
        f"test_{metric}_mean": float(test.mean()),
        f"test_{metric}_std": float(test.std()),  # of the seeds themselves (ddof 0)
        f"test_{metric}_per_seed": test.tolist(),
        "train_time_s": mean_of("train_time"),
        "compile_time_s": mean_of("compile_time"),
        "wall_time_s": mean_of("wall_time"),
        "examples_per_second": mean_of("examples_per_second"),
        "validation_steps": [step for step, _ in curves[0]],
        f"validation_{metric}_mean": np.mean([[v for _, v in c] for c in curves], axis=0).tolist(),
    }


def plot_seed_summaries(rows: Sequence[dict[str, Any]], path: str, titles: tuple[str, str]) -> None:
    """Left: test accuracy (mean ± std over seeds) against parameters; right: the mean
    validation accuracy curves. `rows`: seed_summary's dicts, each with its "model"."""
    fig, (left, right) = figure(1, 2, figsize=(10, 4))
    for row in rows:
        left.errorbar(
            row["parameters"],
            row["test_accuracy_mean"],
            yerr=row["test_accuracy_std"],
            fmt="o",
            capsize=4,
        )
        left.annotate(
            row["model"],
            (row["parameters"], row["test_accuracy_mean"]),
            xytext=(6, 6),
            textcoords="offset points",
        )
        right.plot(
            row["validation_steps"], row["validation_accuracy_mean"], marker=".", label=row["model"]
        )
    left.set(xscale="log", xlabel="parameters", ylabel="test accuracy (mean ± std over seeds)")
    right.set(xlabel="step", ylabel="validation accuracy (mean over seeds)")
    left.set_title(titles[0])
    right.set_title(titles[1])
    right.legend()
    save_figure(fig, path, dpi=120)
