"""Scaling laws on the known-entropy language: attention, an LSTM and a linear recurrence.

Claim: on the known-entropy Markov language, test loss falls as a power law in parameters and
in training compute toward an irreducible term near the source's entropy rate, for attention
("gpt"), an LSTM and a linear recurrence (minGRU) alike. Judged per family on the fits
L = E + A N^-alpha (N parameters) and L = E + B C^-beta (C training FLOPs): "holds" = for every
family both fits have exponent > 0, R^2 >= 0.95, no ill-conditioning note (E or the exponent
at a bound, too few points, standard error above the exponent) and |E - entropy| <= 0.1 bits.

Setup. MarkovLanguage's default (16 symbols, order 2, Dirichlet(0.5), entropy rate 3.043
bits/char): 4,096 random transition probabilities, which the ladders (3-100k parameters)
straddle. Harder chains are beyond the CPU budget: in 600-step probes an 85k LSTM sat on the
uniform plateau (3.94 of 4 bits at order 3, 4.70 of 5 with 32 symbols). Ladders: "gpt" =
TransformerLM, 2 layers, rotary, head width 8; "lstm" = rnn_lm, embedding min(32, width);
"mingru" = linear_rnn_lm, 2 minGRU blocks, state = width (the cheapest linear recurrence on a
CPU; `--families gpt lstm lru` runs the LRU). Every run: Adam, one peak rate for all sizes,
warm-up then cosine decay to 0, 800 steps of 32 x 64 fresh tokens, through train.loop.fit.
Data sizes: 16 validation points along every run, and the middle width again with 1/4 and 1/2
of the steps (own schedules). Training FLOPs = steps x the train step's FLOPs counted from its
jaxpr (train/measure/flops.py: scan bodies x their length); XLA's cost analysis, which counts a scan
body once, is recorded too (LSTM: 0.06-0.15x our count). L(C) is fitted on the compute frontier
(points no cheaper point beats) of the curves from 1/8 of each run on and the shorter runs'
ends. scipy curve_fit in nats, E in [0, max loss]; also with E = entropy and E = 0.

Command: `python -m experiments.scaling` (`--steps 1600`, `--full`, `--smoke`). `--full` is
sized for one GPU (an order-3 chain, 10,000 steps of 64 x 256 tokens, 4-layer GPTs and 4-block
minGRUs up to a few million parameters) and has not been run yet.
The result is in README.md's table of experiments.
"""

import dataclasses
import math
import os
import warnings
from typing import Any, Literal

import jax
import numpy as np
from matplotlib.ticker import FormatStrFormatter
from scipy.optimize import OptimizeWarning, curve_fit

from arch import MODELS
from experiments.common.scaffold import Experiment, TrainingConfig
from train.loop import RunConfig, fit
from train.measure.flops import count
from train.optim import OptimConfig, make_optimizer
from train.report import figure, format_table, save_figure
from train.step import init_state, make_train_step
from train.tasks import MarkovLanguage
from train.tasks.base import DataPosition
from train.validate import adapt_model

Family = Literal["gpt", "lstm", "mingru", "lru"]
CLAIM = (
    "On the known-entropy language, test loss falls as a power law in parameters and in "
    "compute toward an irreducible term near the source's entropy rate, for attention, an "
    "LSTM and a linear recurrence alike."
)
MAX_FLOOR_GAP_BITS = 0.1
MIN_R2 = 0.95
MAX_EXPONENT = 5.0
LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class Config(TrainingConfig):
    families: tuple[Family, ...] = ("gpt", "lstm", "mingru")
    gpt_widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    lstm_widths: tuple[int, ...] = (16, 32, 48, 80, 128)
    linear_widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    """Widths of the minGRU / LRU models (features = state size)."""
    layers: int = 2
    """Blocks of the GPT and the linear recurrences (the LSTM has one); GPT heads = width //
    head_width."""
    head_width: int = 8
    vocab_size: int = 16
    order: int = 2
    concentration: float = 0.5
    steps: int = 800
    budget_fractions: tuple[float, ...] = (0.25, 0.5)
    """The middle width of each family is trained again for these fractions of `steps`."""
    length: int = 64
    lr: float = 5e-3
    warmup_steps: int = 50
    evaluations: int = 16
    frontier_start: float = 0.125
    """Curve points before this fraction of a run's steps stay off the compute frontier."""
    num_eval: int = 256
    seed: int = 0
    full: bool = False
    """The sweep sized for one GPU (FULL; not run on the CPU). The default is the quick one."""

    def resolved(self) -> "Config":
        config = dataclasses.replace(self, **FULL) if self.full else self
        return dataclasses.replace(config, **SMOKE) if config.smoke else config


FULL = dict(gpt_widths=(32, 64, 128, 192, 256, 384), lstm_widths=(64, 128, 256, 384, 512, 768),
            linear_widths=(32, 64, 128, 192, 256, 384), layers=4, head_width=32, order=3,
            steps=10_000, batch_size=64, length=256, lr=2e-3, warmup_steps=300, evaluations=20,
            num_eval=1024)  # fmt: skip
SMOKE = dict(gpt_widths=(8, 16), lstm_widths=(8, 16), linear_widths=(8, 16), layers=1, steps=8,
             budget_fractions=(0.5,), length=16, evaluations=2, num_eval=16)  # fmt: skip


def build(family: Family, width: int, config: Config) -> Any:
    """The model of `family` at `width` (the task sets the vocabulary through fit)."""
    if family == "gpt":
        heads = max(width // config.head_width, 1)
        return MODELS["gpt"](features=width, num_layers=config.layers, num_heads=heads,
                             positional="rotary", max_len=config.length)  # fmt: skip
    if family == "lstm":
        return MODELS["rnn_lm"](cell="lstm", hidden_size=width, embed_size=min(32, width))
    return MODELS["linear_rnn_lm"](
        mixer=family, features=width, state_size=width, num_layers=config.layers
    )


def step_flops(model: Any, task: MarkovLanguage, optim: OptimConfig, steps: int) -> dict:
    """FLOPs of one call of the shared train step, counted from its jaxpr (scan bodies x their
    length), and XLA's cost analysis of the lowered step (scan bodies once). Nothing runs."""
    model = adapt_model(model, task)
    if hasattr(model, "fast_path"):  # the same function, counted as the scan (on a GPU
        model = dataclasses.replace(model, fast_path="scan")  # cuDNN's LSTM is one opaque call)
    tx = make_optimizer(optim, steps)
    batch = task.train_batch(DataPosition())
    state = jax.eval_shape(lambda: init_state(model, tx, batch["inputs"], 0))
    train_step = make_train_step(model, task, tx)
    counted = count(train_step, state, batch)
    xla = train_step.lower(state, batch).cost_analysis() or {}
    return {"flops_per_step": counted.flops, "uncounted": dict(counted.uncounted),
            "xla_flops_per_step": float(xla.get("flops", math.nan))}  # fmt: skip


def train_run(
    family: Family, width: int, steps: int, task: MarkovLanguage, config: Config, out: str
) -> dict:
    model = build(family, width, config)
    optim = config.optim(steps, most_warmup=0.25)
    flops = step_flops(model, task, optim, steps)
    run_dir = os.path.join(out, f"{family}-{width}-{steps}")
    result = fit(model, task, optim, RunConfig.quiet(steps, config.evaluations, run_dir=run_dir,
                                                     seed=config.seed))  # fmt: skip
    summary, final = result.summary, result.summary["final"]
    steps_seen, losses = zip(*result.curve("loss"), strict=True)
    return {
        "family": family, "width": width, "parameters": summary["parameters"], "steps": steps,
        "tokens": steps * config.batch_size * config.length, **flops,
        "train_flops": steps * flops["flops_per_step"],
        "test_loss_nats": final["test"]["loss"],
        "test_bits_per_char": final["test"]["bits_per_char"],
        "gap_bits": final["test"]["bits_per_char"] - task.entropy_rate_bits,
        "validation_loss_nats": final["validation"]["loss"],
        "train_time_s": summary["train_time"], "compile_time_s": summary["compile_time"],
        "curve_steps": list(steps_seen), "curve_loss_nats": list(losses),
    }  # fmt: skip


def fit_power_law(x: Any, loss: Any, floor: float | None = None) -> dict:
    """Least-squares loss = E + A (x / x0)^-alpha, x0 = the geometric mean of x; E fitted in
    [0, max(loss)], or fixed at `floor` (0: a pure power law). `notes` say why a fit is
    `ill_conditioned`: no fit or an exact one (too few points), a bound hit, s.e. > alpha."""
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    free = 3 if floor is None else 2
    out = {"points": len(x), "E": math.nan, "A": math.nan, "alpha": math.nan, "x0": math.nan,
           "r2": math.nan, "E_stderr": math.nan, "alpha_stderr": math.nan, "notes": [],
           "ill_conditioned": True}  # fmt: skip
    if len(x) < free:
        out["notes"].append(f"{len(x)} points for {free} parameters: no fit")
        return out
    x0, top = float(np.exp(np.mean(np.log(x)))), float(np.max(loss))
    law = lambda x, e, a, alpha: e + a * (x / x0) ** -alpha
    model = law if floor is None else (lambda x, a, alpha: law(x, floor, a, alpha))
    bounds = ([0.0, 0.0, 0.0][-free:], [top, np.inf, MAX_EXPONENT][-free:])
    starts = [(e0, alpha0) for e0 in (0.0, 0.5, 0.95) for alpha0 in (0.1, 0.5, 1.5)]
    best = None
    for e0, alpha0 in starts if floor is None else [(floor, a) for a in (0.1, 0.5, 1.5)]:
        e0 = e0 * float(np.min(loss)) if floor is None else floor
        start = [e0, max(top - e0, 1e-3), alpha0][-free:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            try:
                p, cov = curve_fit(model, x, loss, p0=start, bounds=bounds)
            except (RuntimeError, ValueError):
                continue
        sse = float(np.sum((model(x, *p) - loss) ** 2))
        if best is None or sse < best[0]:
            best = (sse, p, cov)
    if best is None:
        out["notes"].append("curve_fit did not converge")
        return out
    sse, p, cov = best
    e, a, alpha = [float(v) for v in (p if floor is None else [floor, *p])]
    errors = np.sqrt(np.abs(np.diag(cov))) if np.all(np.isfinite(cov)) else [math.inf] * free
    sst = float(np.sum((loss - loss.mean()) ** 2))
    out |= {"E": e, "A": a, "alpha": alpha, "x0": x0, "r2": 1 - sse / sst if sst else math.nan,
            "rmse": math.sqrt(sse / len(x)), "alpha_stderr": float(errors[-1]),
            "E_stderr": float(errors[0]) if floor is None else math.nan}  # fmt: skip
    checks = {
        f"{len(x)} points for {free} parameters: an exact fit": len(x) == free,
        "E at its bound": floor is None and not 1e-6 * top < e < top * (1 - 1e-6),
        "alpha at its bound": not 1e-6 < alpha < MAX_EXPONENT - 1e-6,
        "alpha's standard error exceeds alpha": not errors[-1] < alpha,
    }
    out["notes"] = [note for note, failed in checks.items() if failed]
    out["ill_conditioned"] = bool(out["notes"])
    return out


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The compute-efficient frontier: each (compute, loss) point that no cheaper point beats."""
    best, out = math.inf, []
    for compute, loss in sorted(points):
        if loss < best:
            out.append((compute, loss))
            best = loss
    return out


def family_fits(rows: list[dict], entropy_nats: float, config: Config) -> dict:
    """L(N) over the ladder's final test losses, L(C) over the compute frontier, the bias of
    mid-run curve points against shorter runs' ends (middle width)."""
    ladder = sorted((r for r in rows if r["steps"] == config.steps), key=lambda r: r["width"])
    points = [(r["train_flops"], r["validation_loss_nats"]) for r in rows]
    for r in rows:
        curve = zip(r["curve_steps"], r["curve_loss_nats"], strict=True)
        start = config.frontier_start * r["steps"]
        points += [(s * r["flops_per_step"], loss) for s, loss in curve if s >= start]
    edge = frontier(points)
    middle = sorted((r for r in rows if r["width"] == ladder[len(ladder) // 2]["width"]),
                    key=lambda r: r["steps"])  # fmt: skip
    longest = middle[-1]
    bias = [
        (r["steps"], (longest["curve_loss_nats"][longest["curve_steps"].index(r["steps"])]
                      - r["validation_loss_nats"]) / LN2)
        for r in middle[:-1] if r["steps"] in longest["curve_steps"]
    ]  # fmt: skip
    fits: dict[str, Any] = {"frontier": edge, "cosine_bias_bits": bias}
    n = ([r["parameters"] for r in ladder], [r["test_loss_nats"] for r in ladder])
    for axis, (x, y) in (("N", n), ("C", zip(*edge, strict=True))):
        fits[axis] = {"free": fit_power_law(x, y), "pure": fit_power_law(x, y, floor=0.0),
                      "entropy_floor": fit_power_law(x, y, floor=entropy_nats)}  # fmt: skip
        fits[axis]["free"]["E_bits"] = fits[axis]["free"]["E"] / LN2
    return fits


def judge(fits: dict, entropy_bits: float) -> dict[str, bool]:
    """axis -> whether its free-E fit passes (see the claim)."""
    passes = lambda f: (f["alpha"] > 0 and f["r2"] >= MIN_R2 and not f["ill_conditioned"]
                        and abs(f["E_bits"] - entropy_bits) <= MAX_FLOOR_GAP_BITS)  # fmt: skip
    return {axis: passes(fits[axis]["free"]) for axis in ("N", "C")}


def law_bits(fit: dict, x: Any) -> np.ndarray | None:
    if not all(math.isfinite(fit[k]) for k in ("E", "A", "alpha")):
        return None
    return (fit["E"] + fit["A"] * (np.asarray(x, float) / fit["x0"]) ** -fit["alpha"]) / LN2


def plain(axis: Any) -> None:
    """Loss ticks as plain numbers on a log axis (3.2, not 3.2 x 10^0)."""
    for formatter in (axis.yaxis.set_major_formatter, axis.yaxis.set_minor_formatter):
        formatter(FormatStrFormatter("%.1f"))


def plot_parameters(rows: list[dict], fits: dict, entropy: float, config: Config, path: str):
    """Loss, and loss above the entropy rate, against parameters, with the fits."""
    fig, (left, middle) = figure(1, 2, figsize=(12, 4.5))
    for i, family in enumerate(config.families):
        ladder = [r for r in rows if r["family"] == family and r["steps"] == config.steps]
        n = np.array([r["parameters"] for r in ladder])
        bits = np.array([r["test_bits_per_char"] for r in ladder])
        grid, free = np.geomspace(n.min() / 1.5, n.max() * 1.5), fits[family]["N"]["free"]
        left.loglog(n, bits, "o", color=f"C{i}", label=family)
        middle.loglog(n, bits - entropy, "o", color=f"C{i}", label=family)
        if (curve := law_bits(free, grid)) is not None:
            label = f"fit: alpha {free['alpha']:.2f}, E {free['E_bits']:.3f}"
            left.plot(grid, curve, "-", color=f"C{i}", label=label)
        floor = fits[family]["N"]["entropy_floor"]
        if (curve := law_bits(floor, grid)) is not None:
            label = f"E = entropy: alpha {floor['alpha']:.2f}"
            middle.plot(grid, curve - entropy, "-", color=f"C{i}", label=label)
    left.axhline(entropy, color="gray", ls="--", label=f"entropy rate {entropy:.3f}")
    left.set(xlabel="parameters", ylabel="test bits per char", title="Loss against size")
    middle.set(xlabel="parameters", ylabel="test bits per char - entropy rate")
    middle.set_title(f"Above the entropy rate ({config.steps} steps each)")
    for axis in (left, middle):
        axis.legend(fontsize=7)
    plain(left)
    save_figure(fig, path)


def plot_compute(rows: list[dict], fits: dict, entropy: float, config: Config, path: str):
    """Every run's validation curve against its training FLOPs, the frontier and its fit."""
    fig, axes = figure(1, len(config.families), figsize=(5 * len(config.families), 4.2))
    for axis, family in zip(np.atleast_1d(axes), config.families, strict=True):
        for r in (r for r in rows if r["family"] == family):
            compute = np.array(r["curve_steps"]) * r["flops_per_step"]
            bits = np.array(r["curve_loss_nats"]) / LN2
            if r["steps"] == config.steps:
                axis.loglog(compute, bits, "-", lw=1, alpha=0.7, label=f"{r['parameters']:,}")
            else:
                axis.loglog(r["train_flops"], r["validation_loss_nats"] / LN2, "ks", mfc="none")
        edge, free = np.array(fits[family]["frontier"]), fits[family]["C"]["free"]
        axis.loglog(edge[:, 0], edge[:, 1] / LN2, "k.", label="frontier")
        grid = np.geomspace(edge[:, 0].min(), edge[:, 0].max())
        if (curve := law_bits(free, grid)) is not None:
            label = f"fit: beta {free['alpha']:.2f}, E {free['E_bits']:.3f}"
            axis.plot(grid, curve, "k--", label=label)
        axis.axhline(entropy, color="gray", ls=":", label="entropy rate")
        axis.set(xlabel="training FLOPs (counted)", ylabel="validation bits per char")
        axis.set_title(f"{family} (squares: shorter runs' ends)")
        axis.legend(fontsize=7)
        plain(axis)
    save_figure(fig, path)


def exponent_rows(fits: dict, families: tuple[str, ...]) -> list[dict]:
    rows = []
    for family in families:
        n, c = fits[family]["N"], fits[family]["C"]
        notes = [f"{a}: {m}" for a in "NC" for m in fits[family][a]["free"]["notes"]]
        rows.append({
            "family": family, "alpha": n["free"]["alpha"], "+-": n["free"]["alpha_stderr"],
            "E_N bits": n["free"]["E_bits"], "R2_N": n["free"]["r2"],
            "alpha E=H": n["entropy_floor"]["alpha"], "alpha E=0": n["pure"]["alpha"],
            "beta": c["free"]["alpha"], "+- ": c["free"]["alpha_stderr"],
            "E_C bits": c["free"]["E_bits"], "R2_C": c["free"]["r2"],
            "beta E=H": c["entropy_floor"]["alpha"], "notes": "; ".join(notes) or "-",
        })  # fmt: skip
    return rows


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    config, seconds = results["config"], results["wall_seconds"]
    runtime = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    parts = []
    for row in results["exponents"]:
        ladder = [r for r in results["runs"]
                  if r["family"] == row["family"] and r["steps"] == config["steps"]]  # fmt: skip
        small, large = ladder[0], ladder[-1]
        parts.append(
            f"{row['family']} {small['parameters'] / 1e3:.1f}k-{large['parameters'] / 1e3:.0f}k "
            f"params {small['test_bits_per_char']:.3f} -> {large['test_bits_per_char']:.3f} bits, "
            f"alpha {row['alpha']:.2f} (E {row['E_N bits']:.3f}, R^2 {row['R2_N']:.3f}), beta "
            f"{row['beta']:.2f} (E {row['E_C bits']:.3f}, R^2 {row['R2_C']:.3f})"
        )
    return (
        f"| `python -m experiments.scaling` (~{runtime}) | on the known-entropy language test loss "
        "falls as a power law in parameters and in compute toward an irreducible term near the "
        f"entropy rate, for {' / '.join(config['families'])} alike | "
        f"**{'holds' if results['holds'] else 'fails'}.** {config['steps']} steps of "
        f"{config['batch_size']} x {config['length']} tokens (entropy rate "
        f"{results['entropy_rate_bits']:.3f} bits/char), fits L = E + A x^-a, E in bits/char: "
        + "; ".join(parts)
        + ". |"
    )


def study(config: Config, out: str) -> dict:
    task = MarkovLanguage(batch_size=config.batch_size, seed=config.seed,
                          vocab_size=config.vocab_size, order=config.order,
                          concentration=config.concentration, length=config.length,
                          num_eval=config.num_eval)  # fmt: skip
    entropy, rows = task.entropy_rate_bits, []
    for family in config.families:
        ladder = {"gpt": config.gpt_widths, "lstm": config.lstm_widths}.get(
            family, config.linear_widths
        )
        runs = [(width, config.steps) for width in ladder]
        runs += [(ladder[len(ladder) // 2], max(round(f * config.steps), 1))
                 for f in config.budget_fractions]  # fmt: skip
        for width, steps in runs:
            rows.append(r := train_run(family, width, steps, task, config, out))
            print(f"{family} {width} ({r['parameters']:,} params, {steps} steps): "
                  f"{r['test_bits_per_char']:.4f} bits/char, {r['train_time_s']:.1f} s",
                  flush=True)  # fmt: skip
    fits = {f: family_fits([r for r in rows if r["family"] == f], entropy * LN2, config)
            for f in config.families}  # fmt: skip
    verdicts = {f: judge(fits[f], entropy) for f in config.families}
    results = {
        "holds": all(all(v.values()) for v in verdicts.values()),
        "criterion": (
            f"per family, the L(N) and L(C) fits E + A x^-alpha: alpha > 0, R^2 >= {MIN_R2}, no "
            f"ill-conditioning note, |E - entropy rate| <= {MAX_FLOOR_GAP_BITS} bits/char"
        ),
        "verdicts": verdicts,
        "entropy_rate_bits": entropy,
        "entropy_rate_nats": entropy * LN2,
        "source_test_bits_per_char": task.source_bits_per_char("test"),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "runs": rows,
        "fits": fits,
        "exponents": exponent_rows(fits, config.families),
    }
    plot_parameters(rows, fits, entropy, config, os.path.join(out, "scaling_parameters.png"))
    plot_compute(rows, fits, entropy, config, os.path.join(out, "scaling_compute.png"))
    columns = {"family": "family", "width": "width", "params": "parameters", "steps": "steps",
               "bits": "test_bits_per_char", "gap": "gap_bits", "train s": "train_time_s",
               "compile s": "compile_time_s"}  # fmt: skip
    table = [{k: r[v] for k, v in columns.items()} | {
        "GFLOP/step": r["flops_per_step"] / 1e9, "train TFLOP": r["train_flops"] / 1e12,
        "xla/counted": r["xla_flops_per_step"] / r["flops_per_step"]} for r in rows]  # fmt: skip
    print(format_table(table))
    print(format_table(results["exponents"]))
    for family in config.families:
        bias = ", ".join(f"{s} steps {b:+.3f}" for s, b in fits[family]["cosine_bias_bits"])
        print(f"{family}: verdict {verdicts[family]}; mid-run minus shorter run bits: {bias}")
    print(f"entropy rate {entropy:.4f} bits/char")
    return results


EXPERIMENT = Experiment("scaling", CLAIM, Config, study, summary_line=summary_line)
main = EXPERIMENT.main_of(__name__)
