"""Transfer: convolutions learned on digits 0-4 help to learn digits 5-9 from few examples.

Claim: with few labelled examples of digits 5-9, a LeNet whose convolutional layers come from a
LeNet pretrained on digits 0-4 and stay frozen (only new dense layers and a new head train)
reaches a higher test accuracy than the same LeNet trained from scratch on the same examples.
Controls trained alongside: "frozen_random" (the same frozen convolutions, but random: the
same trainable parameters as "frozen"), "probe" (pretrained convolutions and dense layer both
frozen, only a new head trains), "finetune" (every layer trains from the pretrained
convolutions) and "scratch".
"holds" = frozen transfer's mean test accuracy > scratch's at the smallest labelled-set size.

Command: `python -m experiments.transfer` (`--sizes 10 50 200 --seeds 0 1 2 3 4`, `--smoke`).
The result is in README.md's table of experiments.
"""

import dataclasses
import os

import numpy as np

from arch import MODELS
from experiments.common.scaffold import Experiment, ExperimentConfig
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.report import figure, fit_seeds, format_table, save_figure
from train.tasks import TASKS

CLAIM = (
    "With few labelled examples of digits 5-9, a LeNet with frozen convolutions pretrained "
    "on digits 0-4 and a new dense head reaches a higher test accuracy than the same LeNet "
    "trained from scratch on the same examples."
)
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
METHODS = ("frozen", "frozen_random", "probe", "finetune", "scratch")


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    pretrain_steps: int = 1000
    """Steps of the LeNet on all training examples of 0-4 (batch 64: about 100 epochs)."""
    steps: int = 300
    """Steps of every method at every labelled-set size."""
    sizes: tuple[int, ...] = (10, 25, 50, 100, 200)
    """Numbers of labelled training examples of 5-9."""
    max_batch_size: int = 32
    """Batch size on the 5-9 examples: min(n, this)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Each seed pretrains its own LeNet and initialises every method's new layers."""
    lr: float = 1e-3

    def smoke_settings(self) -> dict:
        return dict(pretrain_steps=20, steps=10, sizes=self.sizes[:1], seeds=self.seeds[:1])


def study(config: Config, out: str) -> dict:
    model = MODELS["lenet"]()
    optim = OptimConfig(lr=config.lr)

    pretrain_task = TASKS["digits"](classes=PRETRAIN_CLASSES)
    accuracy = {m: {n: [] for n in config.sizes} for m in METHODS}  # test accuracy per seed
    pretrained_runs = fit_seeds(
        model,
        pretrain_task,
        optim,
        config.pretrain_steps,
        config.seeds,
        os.path.join(out, "pretrain"),
    )
    pretrain_accuracy = [r.summary["final"]["test"]["accuracy"] for r in pretrained_runs]
    for seed, pretrained in zip(config.seeds, pretrained_runs, strict=True):
        conv = {k: v for k, v in pretrained.state.params.items() if k.startswith("conv_")}
        features = {k: v for k, v in pretrained.state.params.items() if k != "head"}
        for n in config.sizes:
            task = TASKS["digits"](
                classes=TARGET_CLASSES,
                max_train_examples=n,
                batch_size=min(n, config.max_batch_size),
                seed=seed,
            )
            setups = {
                "frozen": (conv, dataclasses.replace(optim, freeze=("conv_",))),
                "frozen_random": (None, dataclasses.replace(optim, freeze=("conv_",))),
                "probe": (features, dataclasses.replace(optim, freeze=("conv_", "dense_"))),
                "finetune": (conv, optim),
                "scratch": (None, optim),
            }
            for method, (init_params, method_optim) in setups.items():
                run_dir = os.path.join(out, f"{method}-n{n}-seed{seed}")
                run = RunConfig.quiet(config.steps, seed=seed, run_dir=run_dir)
                result = fit(model, task, method_optim, run, init_params=init_params)
                accuracy[method][n].append(result.summary["final"]["test"]["accuracy"])

    mean = {m: {n: float(np.mean(accuracy[m][n])) for n in config.sizes} for m in METHODS}
    std = {m: {n: float(np.std(accuracy[m][n])) for n in config.sizes} for m in METHODS}
    smallest = min(config.sizes)
    holds = mean["frozen"][smallest] > mean["scratch"][smallest]
    frozen_wins = [n for n in config.sizes if mean["frozen"][n] > mean["scratch"][n]]
    return {
        "holds": bool(holds),
        "criterion": f"mean test accuracy of frozen > scratch at the smallest size n={smallest}",
        "sizes": list(config.sizes),
        "sizes_where_frozen_beats_scratch": frozen_wins,
        "frozen_minus_scratch": {n: mean["frozen"][n] - mean["scratch"][n] for n in config.sizes},
        "pretrain_test_accuracy": pretrain_accuracy,
        "test_accuracy": accuracy,
        "test_accuracy_mean": mean,
        "test_accuracy_std": std,
    }


def report(results: dict, config: Config, out: str) -> None:
    mean, std = results["test_accuracy_mean"], results["test_accuracy_std"]
    fig, ax = figure(figsize=(6, 4))
    for method in METHODS:
        ax.errorbar(
            config.sizes,
            [mean[method][n] for n in config.sizes],
            yerr=[std[method][n] for n in config.sizes],
            marker="o",
            capsize=4,
            label=method,
        )
    ax.set(
        xscale="log",
        xlabel="labelled training examples of digits 5-9",
        ylabel="test accuracy on 5-9 (mean ± std)",
        title="Transfer from digits 0-4 to 5-9 (LeNet)",
    )
    ax.legend()
    save_figure(fig, os.path.join(out, "transfer.png"))

    rows = [
        {"n": n, **{m: f"{mean[m][n]:.4f} ± {std[m][n]:.4f}" for m in METHODS}}
        for n in config.sizes
    ]
    print(format_table(rows))
    print(
        f"pretraining on 0-4: test accuracy {np.mean(results['pretrain_test_accuracy']):.4f}; "
        f"frozen beats scratch at n in {results['sizes_where_frozen_beats_scratch']}"
    )


EXPERIMENT = Experiment("transfer", CLAIM, Config, study, report)
main = EXPERIMENT.main_of(__name__)
