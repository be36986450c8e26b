"""A perceptron solves only linearly separable problems; one hidden layer solves XOR.

Claim: a single-layer perceptron (one linear map) reaches ~1.0 test accuracy on two separable
blobs but at most 3/4 on XOR (the test split holds the four corners equally often, and no line
puts more than three on the right side) and about chance on concentric circles; an MLP with one
hidden layer of 8 tanh units reaches 1.0 on XOR and ~1.0 on blobs and circles.
"holds" = the perceptron's XOR test accuracy is <= 0.75 for every seed and the MLP's is 1.0 for
every seed. Each seed sets the initialisation and the task's data.

Command: python -m experiments.perceptron_vs_mlp        (--smoke: one seed, 200 steps)
The result is in README.md's table of experiments.
"""

import dataclasses

import jax
import numpy as np

from arch import MODELS
from arch.layers import Activation
from experiments.common.scaffold import Experiment, ExperimentConfig
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.report import figure, format_table, save_figure
from train.step import apply_model
from train.tasks import TASKS

CLAIM = (
    "A single-layer perceptron solves only linearly separable problems (blobs, not XOR or "
    "circles); an MLP with a hidden layer and a non-linearity solves XOR."
)
TASK_NAMES = ("xor", "blobs", "circles")
MODEL_NAMES = ("perceptron", "mlp")


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    steps: int = 500
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Each seed sets both the parameter initialisation and the task's data."""
    hidden_size: int = 8
    activation: Activation = "tanh"
    lr: float = 1e-2
    grid_points: int = 120
    """Mesh resolution (per axis) of the decision-boundary plot."""

    def smoke_settings(self) -> dict:
        return dict(steps=200, seeds=self.seeds[:1], grid_points=40)


def decision_surface(model, state, inputs: np.ndarray, points: int):
    """P(class 1) on a mesh covering `inputs` [n, 2]: (x [p, p], y [p, p], probability [p, p])."""
    low, high = inputs.min(axis=0) - 0.5, inputs.max(axis=0) + 0.5
    xs, ys = np.meshgrid(np.linspace(low[0], high[0], points), np.linspace(low[1], high[1], points))
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)  # [p * p, 2]
    logits, _ = apply_model(model, state, state.params, grid, train=False)  # [p * p, 1]
    return xs, ys, np.asarray(jax.nn.sigmoid(logits[:, 0])).reshape(xs.shape)


def study(config: Config, out_dir: str) -> dict:
    models = {
        "perceptron": MODELS["perceptron"](),
        "mlp": MODELS["mlp"](hidden_sizes=(config.hidden_size,), activation=config.activation),
    }
    optim = OptimConfig(name="adam", lr=config.lr)
    run = RunConfig.quiet(config.steps)

    accuracy = {m: {t: [] for t in TASK_NAMES} for m in MODEL_NAMES}  # test accuracy per seed
    surfaces = {}  # (model, task) -> the first seed's decision surface and test split
    for task_name in TASK_NAMES:
        for seed in config.seeds:
            task = TASKS[task_name](seed=seed)
            for model_name, model in models.items():
                result = fit(model, task, optim, dataclasses.replace(run, seed=seed))
                accuracy[model_name][task_name].append(result.summary["final"]["test"]["accuracy"])
                if seed == config.seeds[0]:
                    inputs, targets = task.data["test"]
                    surface = decision_surface(
                        result.model, result.state, inputs, config.grid_points
                    )
                    surfaces[model_name, task_name] = (surface, inputs, targets)

    perceptron_xor, mlp_xor = accuracy["perceptron"]["xor"], accuracy["mlp"]["xor"]
    holds = max(perceptron_xor) <= 0.75 and min(mlp_xor) == 1.0
    results = {
        "holds": bool(holds),
        "criterion": "max over seeds of perceptron XOR test accuracy <= 0.75 and "
        "min over seeds of MLP XOR test accuracy == 1.0",
        "test_accuracy": accuracy,
        "seeds": list(config.seeds),
    }

    plot(surfaces, accuracy, config.seeds[0], f"{out_dir}/decision_boundaries.png")

    return results


def plot(surfaces: dict, accuracy: dict, seed: int, path: str) -> None:
    """The first seed's decision boundary of each model on each task."""
    fig, axes = figure(len(MODEL_NAMES), len(TASK_NAMES), figsize=(10, 6.5))
    for (model_name, task_name), ((xs, ys, prob), inputs, targets) in surfaces.items():
        ax = axes[MODEL_NAMES.index(model_name), TASK_NAMES.index(task_name)]
        ax.contourf(xs, ys, prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
        ax.contour(xs, ys, prob, levels=[0.5], colors="k", linewidths=1)
        ax.scatter(
            inputs[:, 0],
            inputs[:, 1],
            c=targets,
            cmap="RdBu_r",
            s=18,
            edgecolors="k",
            linewidths=0.3,
        )
        ax.set_title(f"{model_name} on {task_name}: {accuracy[model_name][task_name][0]:.3f}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Decision boundaries (seed {seed}); title: test accuracy")
    save_figure(fig, path, dpi=100)


def report(results: dict, config: Config, out_dir: str) -> None:
    accuracy = results["test_accuracy"]
    rows = [
        {
            "model": m,
            **{f"{t} mean": float(np.mean(accuracy[m][t])) for t in TASK_NAMES},
            **{f"{t} min": float(np.min(accuracy[m][t])) for t in TASK_NAMES},
        }
        for m in MODEL_NAMES
    ]
    print(format_table(rows))


EXPERIMENT = Experiment("perceptron_vs_mlp", CLAIM, Config, study, report)
main = EXPERIMENT.main_of(__name__)
