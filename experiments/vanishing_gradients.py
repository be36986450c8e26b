"""Vanishing and exploding gradients through time: Elman against LSTM and GRU, and clipping.

Claim: the gradient of an Elman RNN's final hidden state with respect to an input decays
exponentially with the distance between them, while LSTM and GRU keep it far larger at long
distances; and where an Elman RNN's gradients explode, clipping their norm keeps SGD training
where, unclipped, it diverges.

Three parts (legend: b batch, t time, f input features, n hidden units; distance k = T - t):

1. Scalar recurrence h_t = w h_{t-1} + x_t over T = 100 steps: d h_T / d x_t = w^k, by
   jax.grad through a lax.scan in float64, checked against w**k; the same with
   h_t = tanh(w h_{t-1} + x_t), x_t ~ U(0, 1); and where float32 overflows or underflows.
2. Elman (tanh), LSTM and GRU RNNClassifiers (hidden 64) on adding-problem inputs of length
   100: the Frobenius norm of the Jacobian block d h_T / d x_t [n, f] of the recurrent layer's
   final hidden state, per distance, as a geometric mean over 32 validation sequences and the
   seeds, at initialisation and after training on the adding problem (Adam lr 1e-3,
   clip_norm 1, 1500 steps of batch 32, the same for every model). Per model: the ratio
   norm(k = T-1) / norm(k = 0), and the decay per step 10^slope of a least-squares line
   through log10 norm against k. A norm below float32's smallest normal number (1.2e-38; XLA
   on CPU flushes smaller ones to zero) counts as 1.2e-38, which makes such a ratio an upper
   bound; the line is fitted only up to the first distance where a norm underflowed.
3. An Elman RNN made to explode: the orthogonal recurrent kernel scaled by 1.5 after
   initialisation (passed to fit through init_params), trained with plain SGD (lr 0.05, 1000
   steps) with and without clip_norm 1, and a control at the default scale without clipping.
   A run that produces a NaN or infinity stops with train.guards.NonFiniteError; its step is
   recorded, its loss curve read from metrics.jsonl. Also reported: the norm of the loss
   gradient at initialisation on the first training batch.

"holds" = after training, Elman's ratio is below 1e-3 and LSTM's and GRU's ratios are each at
least 100x Elman's, and every unclipped exploding run diverged while every clipped run and
every control run finished finite. The same gradient criterion at initialisation is reported
as "holds_at_init" (not part of "holds").

Command: python -m experiments.vanishing_gradients
         (--smoke: one seed, 30 Adam steps per model, 50 SGD steps per clipping run)
The result is in README.md's table of experiments.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arch import MODELS
from experiments.common.scaffold import Experiment, TrainingConfig
from train.guards import NonFiniteError
from train.loop import RunConfig, fit
from train.optim import OptimConfig, make_optimizer
from train.report import figure, format_table, save_figure
from train.step import init_state, merge_params
from train.tasks import Adding
from train.validate import adapt_model

CLAIM = (
    "The gradient of an Elman RNN's final hidden state with respect to an input decays "
    "exponentially with their distance in time, while LSTM and GRU keep it far larger at long "
    "distances; where an Elman RNN's gradients explode, clipping their norm keeps SGD training "
    "where, unclipped, it diverges."
)
CELLS = ("elman", "lstm", "gru")
VANISHED = 1e-3  # Elman's far-to-near ratio must fall below this
FAR_LARGER = 100.0  # LSTM's and GRU's far-to-near ratios must be at least this times Elman's
LOSS_AXIS_TOP = 1e4  # the clipping panel's y axis ends here (a diverging loss reaches 1e30)
FLOOR = float(np.finfo(np.float32).tiny)  # norms below float32's smallest normal number


@dataclasses.dataclass(frozen=True)
class Config(TrainingConfig):
    length: int = 100
    """Sequence length T of the adding problem (and of the scalar recurrence)."""
    hidden_size: int = 64
    steps: int = 1500
    """Adam steps of each gated and Elman model on the adding problem."""
    lr: float = 1e-3
    warmup_steps: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the parameter initialisation (part 2) and of the clipping runs (part 3)."""
    num_examples: int = 32
    """Validation sequences whose Jacobians are averaged."""
    scalar_weights: tuple[float, ...] = (4.0, 0.2)
    explode_scale: float = 1.5
    """Factor on the orthogonal recurrent kernel of the exploding Elman RNN."""
    explode_lr: float = 0.05
    """Plain SGD learning rate of the clipping comparison."""
    explode_clip_norm: float = 1.0
    explode_steps: int = 1000

    def smoke_settings(self) -> dict:
        return dict(steps=30, explode_steps=50, seeds=self.seeds[:1])


def scalar_gradients(w: float, length: int, activation: str, dtype: str) -> np.ndarray:
    """|d h_T / d x_t| of h_t = act(w h_{t-1} + x_t), h_0 = 0, by distance k = T - t."""
    with jax.enable_x64(dtype == "float64"):
        xs = jnp.asarray(np.random.default_rng(0).uniform(0.0, 1.0, length), dtype)  # [t]

        def final_state(xs: jax.Array) -> jax.Array:
            def step(h, x):
                pre = w * h + x  # w h_{t-1} + x_t
                return (jnp.tanh(pre) if activation == "tanh" else pre), None

            return jax.lax.scan(step, jnp.zeros((), dtype), xs)[0]  # h_T

        return np.abs(np.asarray(jax.grad(final_state)(xs)))[::-1]  # [k]


def first_distance(values: np.ndarray, bad) -> int | None:
    hits = np.flatnonzero(bad(values))
    return int(hits[0]) if len(hits) else None


def make_jacobian_norms(model):
    """The jitted `(params, inputs [b, t, f]) -> [b, t]`: ||d h_T / d x_t||_F of layer_0."""
    layer = model.layer()

    def final_hidden(layer_params, x: jax.Array) -> jax.Array:  # x [t, f] -> h_T [n]
        _, final = layer.apply({"params": layer_params}, x[None])
        return model.final_output(final)[0]

    jacobian = jax.vmap(jax.jacrev(final_hidden, argnums=1), in_axes=(None, 0))

    def norms(params, inputs: jax.Array) -> jax.Array:
        blocks = jacobian(params["layer_0"], inputs)  # [b, n, t, f]
        return jnp.sqrt(jnp.sum(blocks**2, axis=(1, 3)))  # [b, t]

    return jax.jit(norms)


def decay_summary(norms: np.ndarray) -> dict:
    """From Jacobian norms [seed, b, t]: the geometric-mean profile by distance [k], the
    far-to-near ratio, and the decay per step of a line fitted to log10 norm against k.

    A norm below FLOOR (XLA on CPU flushes float32's subnormal numbers to zero) counts as
    FLOOR, so a ratio whose far end underflowed is an upper bound; the line is fitted only up to
    the first distance where any norm underflowed.
    """
    by_distance = norms[..., ::-1]  # [seed, b, k]
    log_norms = np.mean(np.log10(np.maximum(by_distance, FLOOR)), axis=(0, 1))  # [k]
    underflow_from = first_distance(np.min(by_distance, axis=(0, 1)), lambda g: g < FLOOR)
    fitted = log_norms if underflow_from is None else log_norms[: max(underflow_from, 2)]
    slope = np.polyfit(np.arange(len(fitted)), fitted, 1)[0]
    return {
        "ratio": float(10 ** (log_norms[-1] - log_norms[0])),
        "ratio_is_upper_bound": underflow_from is not None,
        "decay_per_step": float(10**slope),
        "log10_slope": float(slope),
        "underflow_from": underflow_from,
        "underflowed_fraction": float(np.mean(by_distance < FLOOR)),
        "log10_norm_by_distance": log_norms.tolist(),
    }


def clipping_run(
    config: Config, task: Adding, init_params, clip_norm: float | None, seed: int, run_dir: str
) -> dict:
    """Train an Elman RNN from `init_params` with SGD; its loss curve and its fate."""
    model = adapt_model(MODELS["rnn"](cell="elman", hidden_size=config.hidden_size), task)
    optim = OptimConfig(name="sgd", lr=config.explode_lr, clip_norm=clip_norm)
    run = RunConfig.quiet(config.explode_steps, log_every=10, seed=seed, run_dir=run_dir)
    diverged_at, test_mse = None, None
    try:
        result = fit(model, task, optim, run, init_params=init_params)
        test_mse = result.summary["final"]["test"]["mse"]
    except NonFiniteError as error:
        diverged_at = error.step
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        train = [r for r in map(json.loads, f) if r["split"] == "train"]
    return {
        "diverged_at": diverged_at,
        "steps": [r["step"] for r in train],
        "loss": [r["loss"] for r in train],
        "max_loss": max((r["loss"] for r in train), default=None),
        "max_grad_norm": max((r["grad_norm"] for r in train), default=None),
        "final_test_mse": test_mse,
    }


def clipping_comparison(config: Config, task: Adding, out_dir: str) -> dict[str, dict]:
    """Per condition: its label and one run per seed, each with the loss gradient's norm at
    initialisation on the first training batch."""
    conditions = {
        "exploding": ("exploding, no clipping", config.explode_scale, None),
        "clipped": (
            f"exploding, clip_norm {config.explode_clip_norm:g}",
            config.explode_scale,
            config.explode_clip_norm,
        ),
        "control": ("default scale, no clipping", 1.0, None),
    }
    model = adapt_model(MODELS["rnn"](cell="elman", hidden_size=config.hidden_size), task)
    batch = task.example_batch()
    loss_fn = lambda params: task.loss(model.apply({"params": params}, batch["inputs"]), batch)[0]
    loss_gradient_norm = jax.jit(lambda params: optax.tree.norm(jax.grad(loss_fn)(params)))
    tx = make_optimizer(OptimConfig(name="sgd", lr=config.explode_lr), config.explode_steps)
    results = {key: {"label": label, "runs": []} for key, (label, _, _) in conditions.items()}
    for seed in config.seeds:
        fresh = init_state(model, tx, batch["inputs"], seed).params  # what fit() starts from
        kernel = fresh["layer_0"]["cell"]["recurrent_kernel"]
        for key, (_, scale, clip_norm) in conditions.items():
            scaled = {"layer_0": {"cell": {"recurrent_kernel": scale * kernel}}}
            run_dir = os.path.join(out_dir, "clipping", f"{key}-{seed}")
            run = clipping_run(config, task, scaled, clip_norm, seed, run_dir)
            run["initial_grad_norm"] = float(loss_gradient_norm(merge_params(fresh, scaled)))
            results[key]["runs"].append(run)
    return results


def study(config: Config, out_dir: str) -> dict:
    distances = np.arange(config.length)

    scalar = {}
    for w in config.scalar_weights:
        linear = scalar_gradients(w, config.length, "linear", "float64")
        linear32 = scalar_gradients(w, config.length, "linear", "float32")
        scalar[str(w)] = {
            "linear": linear.tolist(),
            "tanh": scalar_gradients(w, config.length, "tanh", "float64").tolist(),
            "max_relative_error": float(np.max(np.abs(linear - w**distances) / w**distances)),
            "float32_inf_from": first_distance(linear32, lambda g: ~np.isfinite(g)),
            "float32_zero_from": first_distance(linear32, lambda g: g == 0),
        }

    task = Adding(length=config.length, batch_size=config.batch_size)
    inputs = task.data["validation"][0][: config.num_examples]  # [b, t, f]
    optim = config.optim(config.steps, "constant")
    run = RunConfig.quiet(config.steps)
    norms = {cell: {"init": [], "trained": []} for cell in CELLS}  # [seed][b, t]
    test_mse = {cell: [] for cell in CELLS}
    for cell in CELLS:
        model = adapt_model(MODELS["rnn"](cell=cell, hidden_size=config.hidden_size), task)
        jacobian_norms = make_jacobian_norms(model)
        for seed in config.seeds:
            # the state fit() starts from: the same function, seed and first batch
            tx = make_optimizer(optim, run.steps)
            initial = init_state(model, tx, task.example_batch()["inputs"], seed)
            norms[cell]["init"].append(np.asarray(jacobian_norms(initial.params, inputs)))
            result = fit(model, task, optim, dataclasses.replace(run, seed=seed))
            norms[cell]["trained"].append(np.asarray(jacobian_norms(result.state.params, inputs)))
            test_mse[cell].append(result.summary["final"]["test"]["mse"])
    # geometric mean over seeds and sequences: the norms span many orders of magnitude
    decay = {c: {w: decay_summary(np.stack(v)) for w, v in n.items()} for c, n in norms.items()}

    def gradient_claim(when: str) -> bool:
        elman = decay["elman"][when]["ratio"]
        gated = [decay[c][when]["ratio"] >= FAR_LARGER * elman for c in ("lstm", "gru")]
        return bool(elman < VANISHED and all(gated))

    clipping = clipping_comparison(config, task, out_dir)
    exploding, clipped, control = (clipping[k]["runs"] for k in ("exploding", "clipped", "control"))
    clipping_holds = (
        all(r["diverged_at"] is not None for r in exploding)
        and all(r["diverged_at"] is None and np.all(np.isfinite(r["loss"])) for r in clipped)
        and all(r["diverged_at"] is None and np.all(np.isfinite(r["loss"])) for r in control)
    )
    holds = gradient_claim("trained") and clipping_holds

    results = {
        "holds": bool(holds),
        "criterion": f"after training, elman's ratio ||dh_T/dx_t|| at distance "
        f"{config.length - 1} over distance 0 < {VANISHED:g}, and lstm's and gru's ratios each "
        f">= {FAR_LARGER:g} x elman's; and every unclipped exploding run diverged "
        "(NonFiniteError) while every clipped run and every control run finished with finite "
        "losses",
        "holds_trained": gradient_claim("trained"),
        "holds_at_init": gradient_claim("init"),
        "clipping_holds": bool(clipping_holds),
        "gradient_measure": "Frobenius norm of the Jacobian block d h_T / d x_t [hidden, 2] of "
        "layer_0's final hidden state; geometric mean over sequences and seeds; a norm below "
        f"{FLOOR:.3g} (float32 underflow) counts as {FLOOR:.3g}",
        "decay": decay,
        "test_mse": test_mse,
        "scalar": scalar,
        "clipping": clipping,
    }

    fig, (ax_scalar, ax_models, ax_clip) = figure(1, 3, figsize=(17, 4.8))
    for (w, values), color in zip(scalar.items(), ("C3", "C0", "C1", "C4"), strict=False):
        ax_scalar.plot(distances, values["linear"], color=color, label=f"w = {w}, linear")
        tanh = np.asarray(values["tanh"])
        ax_scalar.plot(
            distances, np.where(tanh > 0, tanh, np.nan), "--", color=color, label=f"w = {w}, tanh"
        )
    ax_scalar.set(
        yscale="log",
        xlabel="distance T - t",
        ylabel="|d h_T / d x_t|",
        title=f"scalar h_t = w h_(t-1) + x_t (or tanh), T = {config.length}, float64",
    )
    ax_scalar.legend(fontsize=8)
    for cell, color in zip(CELLS, ("C3", "C0", "C2"), strict=True):
        for when, style in (("init", "-"), ("trained", "--")):
            summary = decay[cell][when]
            profile = 10 ** np.asarray(summary["log10_norm_by_distance"])
            if summary["underflow_from"] is not None:
                profile[summary["underflow_from"] :] = np.nan
            ax_models.plot(distances, profile, style, color=color, label=f"{cell}, {when}")
    ax_models.set(
        yscale="log",
        xlabel="distance T - t",
        ylabel="||d h_T / d x_t||_F (geometric mean)",
        title=f"adding inputs, T = {config.length}, hidden {config.hidden_size}, "
        f"{config.steps} Adam steps\n(a line ends where a norm underflows float32)",
    )
    ax_models.legend(fontsize=8)
    for condition, color in zip(clipping.values(), ("C3", "C0", "C7"), strict=True):
        for i, r in enumerate(condition["runs"]):
            label = condition["label"] if i == 0 else None
            ax_clip.plot(r["steps"], r["loss"], color=color, alpha=0.8, label=label)
            if r["diverged_at"] is not None:
                last = min(r["loss"][-1], LOSS_AXIS_TOP) if r["loss"] else LOSS_AXIS_TOP
                ax_clip.plot(r["diverged_at"], last, "x", color=color, markersize=9)
    ax_clip.set(
        yscale="log",
        xlabel="step",
        ylabel="train loss (mse, mean over 10 steps)",
        title=f"Elman, recurrent kernel x{config.explode_scale:g}, SGD lr "
        f"{config.explode_lr:g}\n(x: NaN/inf at that step)",
    )
    ax_clip.set_ylim(top=LOSS_AXIS_TOP)
    ax_clip.legend(fontsize=8)
    save_figure(fig, os.path.join(out_dir, "vanishing_gradients.png"), dpi=100)

    for w, values in scalar.items():
        print(
            f"scalar w = {w}: |dh_T/dx| at distance {config.length - 1} = "
            f"{values['linear'][-1]:.3g} (w**k to rel. error {values['max_relative_error']:.1e}; "
            f"float32 inf from k = {values['float32_inf_from']}, 0 from k = "
            f"{values['float32_zero_from']}), tanh {values['tanh'][-1]:.3g}"
        )
    model_rows = [
        {
            "model": c,
            "ratio init": decay[c]["init"]["ratio"],
            "ratio trained": decay[c]["trained"]["ratio"],
            "decay/step init": decay[c]["init"]["decay_per_step"],
            "decay/step trained": decay[c]["trained"]["decay_per_step"],
            "underflow from k": decay[c]["trained"]["underflow_from"] or "-",
            "test mse": float(np.mean(test_mse[c])),
        }
        for c in CELLS
    ]
    clipping_rows = [
        {
            "condition": condition["label"],
            "seed": seed,
            "grad norm at init": r["initial_grad_norm"],
            "diverged at": r["diverged_at"] or "-",
            "max logged loss": r["max_loss"],
            "max grad norm": r["max_grad_norm"],
            "test mse": r["final_test_mse"] if r["final_test_mse"] is not None else "-",
        }
        for condition in clipping.values()
        for seed, r in zip(config.seeds, condition["runs"], strict=True)
    ]
    print(format_table(model_rows))
    print(format_table(clipping_rows))
    return results


EXPERIMENT = Experiment("vanishing_gradients", CLAIM, Config, study)
main = EXPERIMENT.main_of(__name__)
