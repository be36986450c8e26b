"""In a deep MLP, sigmoid gradients vanish toward the input; ReLU keeps them; tanh in between.

Claim: in a 10-layer MLP (width 64, Flax's default LeCun-normal initialisation, zero biases) on
scikit-learn's digits, the gradient of the loss with respect to each layer's kernel shrinks by
orders of magnitude from the head down to the first hidden layer with sigmoid, and stays about
level with ReLU; tanh lies in between. The gradients are taken on one fixed batch (the whole
training split) at initialisation and again after training. "holds" = the first-to-last ratio
||dL/dW hidden_0|| / ||dL/dW head|| at initialisation is below 1e-3 times ReLU's for sigmoid
(geometric mean over seeds), and ReLU's mean final test accuracy is >= sigmoid's.

Optimizer: SGD with momentum 0.9 (lr 0.01), the same for every activation. A layer's update is
then proportional to its gradient, so vanishing gradients show up as layers that do not learn.
Adam divides each parameter's gradient by its own running scale, which partly undoes the
vanishing and so would blur the comparison (try --optimizer adam --lr 1e-3); a much larger
learning rate makes ReLU diverge.

Command: python -m experiments.activations        (--smoke: one seed, 100 steps)
The result is in README.md's table of experiments.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from arch import MODELS
from experiments.common.scaffold import Experiment, ExperimentConfig
from train.loop import RunConfig, fit
from train.optim import OptimConfig, OptimizerName, make_optimizer
from train.report import figure, format_table, save_figure
from train.step import apply_model, init_state
from train.tasks import Digits
from train.validate import adapt_model

CLAIM = (
    "In a deep (10-layer) MLP, sigmoid gradients vanish toward the input layers while ReLU "
    "keeps them; tanh is in between."
)
ACTIVATIONS = ("sigmoid", "tanh", "relu")
RATIO_FACTOR = 1e-3  # "far smaller": sigmoid's first-to-last ratio below this times ReLU's


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    depth: int = 10
    """Number of hidden layers."""
    width: int = 64
    steps: int = 2000
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the parameter initialisation (the digits split is fixed)."""
    optimizer: OptimizerName = "momentum"
    lr: float = 0.01

    def smoke_settings(self) -> dict:
        return dict(steps=100, seeds=self.seeds[:1])


def make_gradient_norms(model, task, layers: list[str]):
    """The jitted `(state, batch) -> [len(layers)]`: ||d loss / d kernel|| of each layer."""

    def gradient_norms(state, batch):
        loss_fn = lambda params: task.loss(
            apply_model(model, state, params, batch["inputs"], train=False)[0], batch
        )[0]
        grads = jax.grad(loss_fn)(state.params)
        return jnp.stack([jnp.linalg.norm(grads[name]["kernel"]) for name in layers])

    return jax.jit(gradient_norms)


def study(config: Config, out_dir: str) -> dict:
    task = Digits()
    inputs, targets = task.data["train"]
    batch = {"inputs": inputs, "targets": targets, "mask": np.ones(len(targets), np.float32)}
    layers = [f"hidden_{i}" for i in range(config.depth)] + ["head"]
    optim = OptimConfig(name=config.optimizer, lr=config.lr)
    run = RunConfig.quiet(config.steps)

    norms = {a: {"init": [], "final": []} for a in ACTIVATIONS}  # [seed][layer]
    accuracy = {a: [] for a in ACTIVATIONS}
    for activation in ACTIVATIONS:
        model = MODELS["mlp"](hidden_sizes=(config.width,) * config.depth, activation=activation)
        model = adapt_model(model, task)
        gradient_norms = make_gradient_norms(model, task, layers)
        for seed in config.seeds:
            # the state fit() starts from: the same function, seed and first batch (the
            # same shapes, so fit() finds the initialisation already compiled)
            tx = make_optimizer(optim, run.steps)
            initial = init_state(model, tx, task.example_batch()["inputs"], seed)
            norms[activation]["init"].append(np.asarray(gradient_norms(initial, batch)))
            result = fit(model, task, optim, dataclasses.replace(run, seed=seed))
            norms[activation]["final"].append(np.asarray(gradient_norms(result.state, batch)))
            accuracy[activation].append(result.summary["final"]["test"]["accuracy"])

    # geometric mean over seeds: the norms span orders of magnitude
    mean_norms = {
        a: {when: np.exp(np.mean(np.log(v), axis=0)) for when, v in n.items()}
        for a, n in norms.items()
    }
    ratio = {a: {when: float(v[0] / v[-1]) for when, v in n.items()} for a, n in mean_norms.items()}
    vanishes = ratio["sigmoid"]["init"] < RATIO_FACTOR * ratio["relu"]["init"]
    holds = vanishes and np.mean(accuracy["relu"]) >= np.mean(accuracy["sigmoid"])
    rows = [
        {
            "activation": a,
            "first/last init": ratio[a]["init"],
            "first/last trained": ratio[a]["final"],
            "hidden_0 init": float(mean_norms[a]["init"][0]),
            "head init": float(mean_norms[a]["init"][-1]),
            "test acc mean": float(np.mean(accuracy[a])),
            "test acc min": float(np.min(accuracy[a])),
        }
        for a in ACTIVATIONS
    ]
    results = {
        "holds": bool(holds),
        "tanh_in_between": ratio["sigmoid"]["init"] < ratio["tanh"]["init"] < ratio["relu"]["init"],
        "criterion": f"sigmoid's init ratio ||dL/dW hidden_0|| / ||dL/dW head|| < {RATIO_FACTOR} "
        "x relu's, and relu's mean test accuracy >= sigmoid's",
        "layers": layers,
        "first_to_last_ratio": ratio,
        "gradient_norms": {
            a: {when: np.asarray(v).tolist() for when, v in n.items()} for a, n in norms.items()
        },
        "test_accuracy": accuracy,
    }

    fig, ax = figure(figsize=(8, 5))
    for activation, color in zip(ACTIVATIONS, ("C0", "C1", "C2"), strict=True):
        for when, style in (("init", "-"), ("final", "--")):
            label = f"{activation}, {'initialisation' if when == 'init' else 'trained'}"
            ax.plot(mean_norms[activation][when], style, color=color, marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), [name.replace("hidden_", "") for name in layers])
    ax.set_xlabel("layer (hidden index, then head)")
    ax.set_ylabel("||d loss / d kernel|| on the training split")
    ax.set_title(
        f"{config.depth}x{config.width} MLP on digits, {config.optimizer} lr {config.lr}, "
        f"{config.steps} steps"
    )
    ax.legend(fontsize=8)
    save_figure(fig, f"{out_dir}/gradient_norms.png", dpi=100)

    print(format_table(rows))
    return results


EXPERIMENT = Experiment("activations", CLAIM, Config, study)
main = EXPERIMENT.main_of(__name__)
