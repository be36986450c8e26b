"""Vision Transformer against a CNN on digits: the locality prior at equal size.

Claim: on scikit-learn's 8x8 digits, LeNet reaches a higher mean test accuracy than a ViT with
about as many parameters (within 10%), trained with the same optimizer, schedule and steps.
Several ViT shapes of LeNet's size are tried (one wide layer, two narrower layers, 4x4 patches),
and the default ViT, far larger, for reference. "holds" = LeNet's mean test accuracy is above
every matched ViT's.

Command: python -m experiments.vit_vs_cnn   (--smoke: 20 steps, one seed; --vits selects
sizes). The result is in README.md's table of experiments.
"""

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from arch import MODELS
from arch.errors import ConfigError
from experiments.common.scaffold import Experiment, TrainingConfig, runtime_text
from train.report import fit_seeds, format_table, plot_seed_summaries, seed_summary
from train.state import parameter_count
from train.tasks import TASKS

CLAIM = (
    "On scikit-learn's digits, LeNet reaches a higher mean test accuracy than a ViT with about "
    "as many parameters, for the same optimizer and steps (locality beats attention on 1.3k "
    "small training images)."
)
MATCH_TOLERANCE = 0.1
"""A ViT whose parameter count is within 10% of LeNet's is "matched" and enters the claim."""
PATCH_TOKENS = 17  # 16 patches of 2x2 pixels and the [CLS] token

VITS: dict[str, dict[str, Any]] = {
    "vit_wide": dict(features=32, num_layers=1, num_heads=4, ffn_hidden=128, max_len=PATCH_TOKENS),
    "vit_deep": dict(features=24, num_layers=2, num_heads=4, ffn_hidden=72, max_len=PATCH_TOKENS),
    "vit_p4": dict(features=24, num_layers=2, num_heads=4, ffn_hidden=72, patch_size=4, max_len=5),
    "vit_default": {},
}


@dataclasses.dataclass(frozen=True)
class Config(TrainingConfig):
    steps: int = 1000
    """Train steps of every model (batch 64: 1000 steps are about 50 epochs)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    vits: tuple[str, ...] = ("vit_wide", "vit_deep", "vit_p4", "vit_default")
    """ViT sizes to train (keys of VITS); at least one must match LeNet's parameter count."""
    batch_size: int = 64
    lr: float = 3e-3
    """Peak learning rate of Adam, cosine decay to 0 after a linear warm-up, for every model
    (the ViTs' best of 3e-4, 1e-3, 3e-3, 6e-3 in probes; LeNet scored 0.979-0.986 at all)."""
    warmup_steps: int = 50
    clip_norm: float | None = None
    evaluations: int = 10
    """Validation evaluations per run (the curves of the plot)."""

    def smoke_settings(self) -> dict:
        return dict(steps=20, seeds=self.seeds[:1], evaluations=2)

    def check(self) -> None:
        unknown = [name for name in self.vits if name not in VITS]
        if unknown:
            raise ConfigError(f"unknown ViT sizes {unknown}; choose from {sorted(VITS)}")


def size_of(model: Any, inputs: np.ndarray) -> int:
    """The model's parameter count, from shapes alone (nothing is computed)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), inputs))
    return parameter_count(shapes["params"])


def is_matched(parameters: int, lenet_parameters: int) -> bool:
    return abs(parameters / lenet_parameters - 1) <= MATCH_TOLERANCE


def train_model(name: str, model: Any, task: Any, config: Config, out: str) -> dict:
    """Train `model` once per seed; its test accuracies, size, times and validation curves."""
    runs = fit_seeds(
        model,
        task,
        config.optim(config.steps),
        config.steps,
        config.seeds,
        os.path.join(out, name),
        config.evaluations,
    )
    train = [r.summary["final"]["train"]["accuracy"] for r in runs]
    return {
        "model": name,
        "fields": dict(VITS.get(name, {})),
        **seed_summary(runs),
        "train_accuracy_mean": float(np.mean(train)),
    }


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    rows = results["models"]
    parts = "; ".join(
        f"{r['model']} {r['parameters']:,} params {r['test_accuracy_mean']:.3f} "
        f"± {r['test_accuracy_std']:.3f} ({r['train_time_s']:.1f} s/run)"
        for r in rows
    )
    runtime = runtime_text(results)
    return (
        f"| `python -m experiments.vit_vs_cnn` (~{runtime}) | on digits a CNN beats a ViT "
        f"of equal parameter count (locality prior) | **{'holds' if results['holds'] else 'fails'}"
        f".** {len(results['config']['seeds'])} seeds, {results['config']['steps']} Adam steps, "
        f"test accuracy mean ± std: {parts}. LeNet minus the best matched ViT: "
        f"{results['lenet_minus_best_matched_vit']:+.3f}. |"
    )


def study(config: Config, out: str) -> dict:
    models = {"lenet": MODELS["lenet"]()}
    models.update({name: MODELS["vit"](**VITS[name]) for name in config.vits})
    task = TASKS["digits"](batch_size=config.batch_size)
    images = task.data["train"][0][:1]  # [1, 8, 8, 1]
    sizes = {name: size_of(model, images) for name, model in models.items()}
    if not any(is_matched(sizes[name], sizes["lenet"]) for name in config.vits):
        raise ConfigError(
            f"no ViT among {config.vits} is within {MATCH_TOLERANCE:.0%} of LeNet's "
            f"{sizes['lenet']:,} parameters; the claim needs one"
        )
    rows = [train_model(name, model, task, config, out) for name, model in models.items()]
    lenet = rows[0]
    for row in rows[1:]:
        row["matched"] = is_matched(row["parameters"], lenet["parameters"])
    matched = [row for row in rows[1:] if row["matched"]]
    best = max(matched, key=lambda row: row["test_accuracy_mean"])
    margin = lenet["test_accuracy_mean"] - best["test_accuracy_mean"]
    return {
        "holds": bool(margin > 0),
        "criterion": f"LeNet's mean test accuracy > every ViT's within {MATCH_TOLERANCE:.0%} "
        "of its parameter count",
        "training_examples": len(task.data["train"][1]),
        "best_matched_vit": best["model"],
        "lenet_minus_best_matched_vit": margin,
        "models": rows,
    }


def report(results: dict, config: Config, out: str) -> None:
    rows = results["models"]
    titles = ("Digits: CNN and ViTs, accuracy against size", "Validation accuracy during training")
    plot_seed_summaries(rows, os.path.join(out, "vit_vs_cnn.png"), titles)
    table = [
        {
            "model": r["model"],
            "parameters": r["parameters"],
            "matched": r.get("matched", "-"),
            "test accuracy": f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f}",
            "train accuracy": r["train_accuracy_mean"],
            "train s/run": r["train_time_s"],
            "compile s": r["compile_time_s"],
            "examples/s": round(r["examples_per_second"]),
        }
        for r in rows
    ]
    print(format_table(table))
    print(
        f"LeNet minus the best matched ViT ({results['best_matched_vit']}): "
        f"{results['lenet_minus_best_matched_vit']:+.4f}"
    )


EXPERIMENT = Experiment("vit_vs_cnn", CLAIM, Config, study, report, summary_line)
main = EXPERIMENT.main_of(__name__)
