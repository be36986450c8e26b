"""Fashion-MNIST (Xiao et al. 2017): our MLP, LeNet, ResNet and ViT against the benchmark's
published accuracies, on real data installed by name.

Claim: trained by the one shared train step at a CPU budget, each model reaches the test
accuracy published for its kind on Fashion-MNIST (the Fashion-MNIST authors' benchmark and
README: multilayer perceptrons 0.87-0.88, small CNNs about 0.91, ResNets 0.93-0.94); "holds" =
every model with a published figure has a mean test accuracy at least its range's low end
minus 0.01. The ViT has no figure in that benchmark and is reported only.

Data: Debian's package dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`: the
four IDX files under /usr/share/datasets/fashion-mnist; `--data-dir` another place). The last
5,000 training images are the validation split, the 10,000 test images the test split.

Command: python -m experiments.fashion_mnist   (--smoke: 5 steps, one seed; --models selects)
"""

import dataclasses
import os
from typing import Any

import numpy as np

from arch import MODELS
from arch.errors import ConfigError
from experiments.common.scaffold import Experiment, TrainingConfig, runtime_text
from train.report import fit_seeds, format_table, plot_seed_summaries, seed_summary
from train.tasks import TASKS

CLAIM = (
    "Trained by the one shared train step at a CPU budget, each model reaches the test accuracy "
    "published for its kind on Fashion-MNIST (MLPs 0.87-0.88, small CNNs ~0.91, ResNets "
    "0.93-0.94)."
)
MODELS_USED: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("mlp", dict(hidden_sizes=(256, 128))),
    "lenet": ("lenet", {}),
    "resnet": ("resnet", {}),
    "vit": ("vit", dict(patch_size=7, max_len=17)),  # 16 patches of 7x7 and [CLS]
}
PUBLISHED: dict[str, tuple[float, float] | None] = {
    "mlp": (0.87, 0.88),  # the benchmark's MLPClassifier rows (sklearn)
    "lenet": (0.90, 0.92),  # the README's 2-layer CNNs
    "resnet": (0.93, 0.94),  # the README's ResNet18 / WRN rows
    "vit": None,
}
SLACK = 0.01


@dataclasses.dataclass(frozen=True)
class Config(TrainingConfig):
    steps: int = 1500
    """Train steps of every model (batch 128: about 3.5 epochs)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    models: tuple[str, ...] = tuple(MODELS_USED)
    data_dir: str = "/usr/share/datasets/fashion-mnist"
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    evaluations: int = 5

    def smoke_settings(self) -> dict:
        return dict(steps=5, seeds=self.seeds[:1], evaluations=1)

    def check(self) -> None:
        unknown = [name for name in self.models if name not in MODELS_USED]
        if unknown:
            raise ConfigError(f"unknown models {unknown}; choose from {sorted(MODELS_USED)}")


def verdict(row: dict) -> bool | None:
    """Whether the model's mean test accuracy reaches its published range (None: none)."""
    published = PUBLISHED[row["model"]]
    return None if published is None else bool(row["test_accuracy_mean"] >= published[0] - SLACK)


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    config = results["config"]
    parts = "; ".join(
        f"{r['model']} {r['test_accuracy_mean']:.3f} ± {r['test_accuracy_std']:.3f} "
        f"(published {'-' if r['published'] is None else '-'.join(map(str, r['published']))}, "
        f"{r['train_time_s']:.0f} s/run)"
        for r in results["models"]
    )
    return (
        f"| `python -m experiments.fashion_mnist` (~{runtime_text(results)}) | {CLAIM} | "
        f"**{'holds' if results['holds'] else 'fails'}.** {len(config['seeds'])} seeds, "
        f"{config['steps']} Adam steps of batch {config['batch_size']}, test accuracy mean ± "
        f"std: {parts}. |"
    )


def study(config: Config, out: str) -> dict:
    task = TASKS["fashion_mnist"](data_dir=config.data_dir, batch_size=config.batch_size)
    rows = []
    for name in config.models:
        registered, fields = MODELS_USED[name]
        runs = fit_seeds(
            MODELS[registered](**fields), task, config.optim(config.steps), config.steps,
            config.seeds, os.path.join(out, name), config.evaluations,
        )  # fmt: skip
        row = {"model": name, "fields": fields, **seed_summary(runs)}
        row["train_accuracy_mean"] = float(
            np.mean([r.summary["final"]["train"]["accuracy"] for r in runs])
        )
        row["published"] = PUBLISHED[name]
        row["reaches_published"] = verdict(row)
        rows.append(row)
    judged = [r["reaches_published"] for r in rows if r["reaches_published"] is not None]
    return {
        "holds": bool(judged) and all(judged),
        "criterion": f"mean test accuracy >= the published range's low end - {SLACK}",
        "training_examples": task.num_examples("train"),
        "models": rows,
    }


def report(results: dict, config: Config, out: str) -> None:
    rows = results["models"]
    titles = ("Fashion-MNIST: accuracy against size", "Validation accuracy during training")
    plot_seed_summaries(rows, os.path.join(out, "fashion_mnist.png"), titles)
    table = [
        {
            "model": r["model"],
            "parameters": r["parameters"],
            "test accuracy": f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f}",
            "published": "-" if r["published"] is None else "-".join(map(str, r["published"])),
            "reaches": "-" if r["reaches_published"] is None else r["reaches_published"],
            "train accuracy": r["train_accuracy_mean"],
            "train s/run": r["train_time_s"],
        }
        for r in rows
    ]
    print(format_table(table))


EXPERIMENT = Experiment("fashion_mnist", CLAIM, Config, study, report, summary_line)
main = EXPERIMENT.main_of(__name__)
