"""Digits: a CNN beats an MLP with more parameters.

Claim: on scikit-learn's 8x8 digits, a LeNet-style CNN reaches a higher test accuracy than an
MLP that has more parameters, for the same step budget (weight sharing and locality are a
better prior than width). A small BatchNorm ResNet is trained alongside through the same step.
"holds" = LeNet's mean test accuracy over the seeds is above the MLP's, with fewer parameters.

Command: python -m experiments.digits   (--steps 2000 --seeds 0 1 2 3 4; --smoke: 20 steps,
one seed). The result is in README.md's table of experiments.
"""

import dataclasses
import os

from arch import MODELS
from experiments.common.scaffold import Experiment, ExperimentConfig
from train.optim import OptimConfig
from train.report import fit_seeds, format_table, plot_seed_summaries, seed_summary
from train.tasks import TASKS

CLAIM = (
    "On scikit-learn's digits, LeNet reaches a higher mean test accuracy than an MLP "
    "with more parameters, for the same number of train steps."
)


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    steps: int = 1000
    """Train steps of every model (batch 64: 1000 steps are about 50 epochs)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    mlp_hidden_sizes: tuple[int, ...] = (256, 256)
    """Wide enough that the MLP has more parameters than the LeNet."""
    batch_size: int = 64
    lr: float = 1e-3
    evaluations: int = 10
    """Validation evaluations per run (the curves of the plot)."""

    def smoke_settings(self) -> dict:
        return dict(steps=20, seeds=self.seeds[:1], evaluations=2)


def train_model(name: str, model, task, config: Config, out: str) -> dict:
    """Train `model` once per seed; its test accuracies, size, speed and validation curves."""
    optim = OptimConfig(lr=config.lr)
    runs = fit_seeds(
        model, task, optim, config.steps, config.seeds, os.path.join(out, name), config.evaluations
    )
    return {"model": name, **seed_summary(runs)}


def study(config: Config, out: str) -> dict:
    models = {
        "mlp": MODELS["mlp"](hidden_sizes=config.mlp_hidden_sizes),
        "lenet": MODELS["lenet"](),
        "resnet": MODELS["resnet"](),
    }
    task = TASKS["digits"](batch_size=config.batch_size)
    rows = [train_model(name, model, task, config, out) for name, model in models.items()]
    by_name = {row["model"]: row for row in rows}
    mlp, lenet = by_name["mlp"], by_name["lenet"]
    holds = (
        lenet["test_accuracy_mean"] > mlp["test_accuracy_mean"]
        and lenet["parameters"] < mlp["parameters"]
    )
    return {
        "holds": bool(holds),
        "criterion": "LeNet's mean test accuracy > the MLP's, and LeNet has fewer parameters",
        "lenet_minus_mlp_test_accuracy": lenet["test_accuracy_mean"] - mlp["test_accuracy_mean"],
        "models": rows,
    }


def report(results: dict, config: Config, out: str) -> None:
    rows = results["models"]
    titles = ("Digits: accuracy against size", "Digits: validation accuracy during training")
    plot_seed_summaries(rows, os.path.join(out, "digits.png"), titles)
    table = [
        {
            "model": r["model"],
            "parameters": r["parameters"],
            "test accuracy": f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f}",
            "wall s/run": r["wall_time_s"],
            "compile s": r["compile_time_s"],
            "examples/s": round(r["examples_per_second"]),
        }
        for r in rows
    ]
    print(format_table(table))


EXPERIMENT = Experiment("digits", CLAIM, Config, study, report)
main = EXPERIMENT.main_of(__name__)
