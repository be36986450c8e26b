"""Forecasting generated series: recurrent models and an MLP against the naive last-value forecast.

Claim: on noisy sums of sinusoids (Sines) every learned model (Elman, LSTM and GRU reading the
window step by step, and an MLP reading the same window flattened) beats the naive forecast
(repeat the window's last value); on a Gaussian random walk (RandomWalk), where the naive
forecast is optimal, none beats it and the learned ones come close to it, i.e. they learn to
predict "no change" rather than patterns that are not there. "holds" = on Sines every model's
mean test MSE < naive MSE; on RandomWalk every model's mean test MSE lies within
[0.98, 1.10] x naive MSE. Which model wins on which series is reported, not judged.

Setup: window 32, horizon 4 (the model outputs the next 4 values at once: "rnn" with
num_outputs = horizon, the last state -> 4 values; the MLP flattens [b, 32, 1]); recurrent
hidden size 32, MLP hidden layers (64, 64); Adam (lr 3e-3, 100 warm-up steps, cosine decay),
gradients clipped to global norm 1, batch 64, 2000 steps; seeds 0 1 2 of the initialisation.
Every training batch is freshly generated (an endless stream: nothing can be memorised); the
2048 test windows of each series are fixed and shared by every model, so the naive MSE is one
number per series.

Command: `python -m experiments.forecasting` (`--smoke` finishes in seconds).
The result is in README.md's table of experiments.
"""

import dataclasses
import os

import numpy as np

from arch import MODELS
from experiments.common.scaffold import Experiment, TrainingConfig
from train.report import figure, fit_seeds, format_table, save_figure, seed_summary
from train.tasks import TASKS

CLAIM = (
    "On noisy sines every learned forecaster (Elman, LSTM, GRU, MLP on the same window) beats "
    "the naive last-value forecast; on a random walk, where the naive forecast is optimal, "
    "none beats it and the learned ones come within 10% of it."
)
SERIES = ("sines", "random_walk")
RECURRENT = ("elman", "lstm", "gru")
RANDOM_WALK_RANGE = (0.98, 1.10)  # allowed test MSE / naive MSE on the random walk


@dataclasses.dataclass(frozen=True)
class Config(TrainingConfig):
    window: int = 32
    horizon: int = 4
    hidden_size: int = 32
    """Hidden units of every recurrent cell."""
    mlp_hidden_sizes: tuple[int, ...] = (64, 64)
    steps: int = 2000
    batch_size: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the parameter initialisation (the data of each series is fixed)."""
    num_eval: int = 2048
    """Windows in each evaluation split (more: a sharper comparison with the naive forecast)."""

    def smoke_settings(self) -> dict:
        return dict(steps=30, seeds=self.seeds[:1], num_eval=256)


def models(config: Config) -> dict:
    """The forecasters by name; fit() sets num_outputs to the horizon."""
    recurrent = {
        cell: MODELS["rnn"](cell=cell, hidden_size=config.hidden_size) for cell in RECURRENT
    }
    return {**recurrent, "mlp": MODELS["mlp"](hidden_sizes=config.mlp_hidden_sizes)}


def train_model(name: str, model, series: str, task, config: Config, out: str) -> dict:
    """Train `model` on `task` once per seed; its test MSE, the naive MSE, size and speed."""
    runs = fit_seeds(
        model,
        task,
        config.optim(config.steps, most_warmup=1.0),
        config.steps,
        config.seeds,
        os.path.join(out, f"{series}-{name}"),
        log_every=max(config.steps // 10, 1),
    )
    summary = seed_summary(runs, "mse")
    naive = runs[0].summary["final"]["test"]["naive_mse"]  # the same test set for every run
    return {
        "series": series,
        "model": name,
        **summary,
        "naive_mse": naive,
        "mse_over_naive": summary["test_mse_mean"] / naive,
    }


def plot(rows: list[dict], names: list[str], path: str) -> None:
    fig, axes = figure(1, len(SERIES), figsize=(5 * len(SERIES), 4), squeeze=False)
    for axis, series in zip(axes[0], SERIES, strict=True):
        by_model = {r["model"]: r for r in rows if r["series"] == series}
        positions = np.arange(len(names))
        bars = axis.bar(
            positions,
            [by_model[n]["test_mse_mean"] for n in names],
            yerr=[by_model[n]["test_mse_std"] for n in names],
            capsize=4,
            color=[f"C{i}" for i in range(len(names))],
        )
        axis.axhline(by_model[names[0]]["naive_mse"], color="black", ls="--", label="naive")
        ratios = [f"{by_model[n]['mse_over_naive']:.4f} x naive" for n in names]
        axis.bar_label(bars, ratios, fontsize="small")
        axis.set_xticks(positions, names)
        axis.set(ylabel="test MSE (mean ± std over seeds)")
        axis.set_title(series)
        axis.legend()
    save_figure(fig, path)


def study(config: Config, out: str) -> dict:
    forecasters = models(config)
    rows = []
    for series in SERIES:
        task = TASKS[series](
            batch_size=config.batch_size,
            window=config.window,
            horizon=config.horizon,
            num_eval=config.num_eval,
        )
        for name, model in forecasters.items():
            rows.append(train_model(name, model, series, task, config, out))

    per_series = {s: [r for r in rows if r["series"] == s] for s in SERIES}
    ranked = {s: sorted(rs, key=lambda r: r["test_mse_mean"]) for s, rs in per_series.items()}
    best = {s: rs[0]["model"] for s, rs in ranked.items()}
    # how far ahead the winner is: the runner-up's test MSE / the winner's (1.0: a tie)
    margin = {s: rs[1]["test_mse_mean"] / rs[0]["test_mse_mean"] for s, rs in ranked.items()}
    low, high = RANDOM_WALK_RANGE
    sines_beat_naive = all(r["mse_over_naive"] < 1.0 for r in per_series["sines"])
    walk_matches_naive = all(low <= r["mse_over_naive"] <= high for r in per_series["random_walk"])
    holds = sines_beat_naive and walk_matches_naive
    results = {
        "holds": bool(holds),
        "criterion": "sines: every model's mean test MSE < naive MSE; random walk: every "
        f"model's mean test MSE / naive MSE in [{low}, {high}]",
        "sines_all_beat_naive": bool(sines_beat_naive),
        "random_walk_all_match_naive": bool(walk_matches_naive),
        "best_model": best,
        "runner_up_over_best": margin,
        "models": rows,
    }
    plot(rows, list(forecasters), os.path.join(out, "forecasting.png"))
    table = [
        {
            "series": r["series"],
            "model": r["model"],
            "params": r["parameters"],
            "test mse": f"{r['test_mse_mean']:.4f} ± {r['test_mse_std']:.4f}",
            "naive mse": r["naive_mse"],
            "mse/naive": r["mse_over_naive"],
            "train s": r["train_time_s"],
            "compile s": r["compile_time_s"],
        }
        for r in rows
    ]
    print(format_table(table))
    for series in SERIES:
        print(f"best on {series}: {best[series]} (runner-up / best MSE {margin[series]:.4f})")
    return results


EXPERIMENT = Experiment("forecasting", CLAIM, Config, study)
main = EXPERIMENT.main_of(__name__)
