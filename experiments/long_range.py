"""Long-range memory: the Elman RNN fails the adding problem and the copy task; LSTM and GRU pass.

Claim: on the adding problem (sum the two marked values of a sequence) and the copy task
(recall a string of symbols after a delay), as the range grows the Elman RNN stays at the
baseline of a model without memory (adding: test MSE ~1/6 = 0.167, the cost of predicting the
mean; copy: accuracy ~1/num_symbols) while the gated cells (LSTM, GRU) learn the task.
"holds" = at adding length 200 (`--bar-length`) the LSTM and the GRU reach test MSE < 0.01 and
the Elman RNN stays above 0.1. The copy task and GRU against LSTM (parameters, step time,
error reached) are reported beside it, not part of "holds".

Setup: every cell has the same hidden size (64) and one layer; adding uses "rnn" (the last state
-> one value), copy uses "rnn_tagger" (an output per step, token inputs embedded in 64
dimensions). Copy strings are 5 symbols out of 8 (with 10, in probes of 1500 steps at delay 50,
no cell left chance). Adam (lr 3e-3, 100 warm-up steps, then constant), gradients clipped to
global norm 1, batch 32, 3000 steps, one seed; every batch is freshly generated, the 512 test
sequences are fixed.

Command: `python -m experiments.long_range` (`--adding-lengths 50 200 500` adds length 500,
about 6 more minutes; `--schedule cosine`; `--smoke` finishes in seconds). Expected runtime on
a 2-core CPU: 5-6 minutes with a warm compilation cache while other jobs loaded the cores
(load ~3-4), 10 minutes at load ~7.5 with a cold cache; smoke 3 s warm, 13 s cold.

Result (jax 0.10.2, 2 shared CPU cores, arch/ at commit f64c721; 326 s in all; 3000 steps per
run, seed 0). Test metrics over 512 fixed sequences; "best val" is the best of the 10
validation evaluations during the run:

    adding  length  cell   test mse   best val mse  params  step ms
            50      elman  0.092      0.078         4353     1.2
            50      lstm   0.0026     0.00035       17217    3.3
            50      gru    0.00024    0.00013       12929    2.2
            200     elman  0.178      0.158         4353     3.6
            200     lstm   0.00063    0.00064       17217   11.7
            200     gru    0.00013    0.00012       12929    7.9
    copy    delay   cell   test acc   test seq acc  params  step ms   (chance 0.125)
            10      elman  1.000      1.000         9546     0.9
            10      lstm   0.998      0.990         34314    2.1
            10      gru    1.000      1.000         26058    2.0
            25      elman  0.970      0.867         9546     1.5
            25      lstm   0.990      0.953         34314    3.9
            25      gru    1.000      1.000         26058    2.9
            50      elman  0.147      0             9546     2.8
            50      lstm   0.125      0             34314    6.1
            50      gru    0.990      0.951         26058    4.6
            200     elman  0.127      0             9546     8.2
            200     lstm   0.125      0             34314   20.2
            200     gru    0.670      0.082         26058   15.7

The claim as judged held (holds = true): at adding length 200 the LSTM (6.3e-4) and the GRU
(1.3e-4) solve the problem and the Elman RNN never leaves the mean predictor (0.178; its
validation MSE stayed in 0.158-0.182). The GRU left the plateau within 300 steps, the LSTM
after about 1000 (validation MSE 0.154 at step 900, 0.054 at 1200). At length 50 the Elman
RNN half learns (validation MSE oscillating 0.08-0.17). Length 500 (run separately with
`--adding-lengths 500 --bar-length 500 --copy-delays`, 6 min): Elman 0.172, LSTM 0.0031 (it
left the plateau only between steps 2100 and 2400, so 3000 steps barely suffice), GRU 1.2e-4
(by step 600); step time 11 / 60 / 44 ms for Elman / LSTM / GRU at load ~5.

The copy task only partly agrees. The Elman RNN copies perfectly at delay 10 and nearly so at
25 (0.97), and is at chance from 50 on, as claimed. The GRU copies to delay 50 (0.99) and is
well above chance at 200 (0.67, still rising at step 3000). The LSTM copies to delay 25 but is
at chance at 50 and 200: within 3000 steps it never leaves the plateau (probes with lr 1e-3 for
3000 steps, batch 128, or hidden size 128 at delay 50 did not leave it either; the copy task's
plateau for LSTMs is well known, Arjovsky et al. 2016). So "LSTM and GRU succeed at long range"
holds for the adding problem, and for the copy task only for the GRU and only to delay 50.

GRU against LSTM: the GRU has 0.75x the parameters (12929 vs 17217 on adding, 26058 vs 34314
on copy), takes 0.76x the step time (geometric mean over the 6 settings; 0.67-0.93x), and was
at least as accurate at every setting, by far on copy at delays 50 and 200.

Caveats. One seed, and the outcome of the slow settings is sensitive to the initialisation:
with the recurrent init before commit f64c721 (one orthogonal matrix split across the gates)
the same command gave the same adding verdict (LSTM 5.8e-4, GRU 1.5e-3, Elman 0.177) but a
different copy picture (Elman at chance already at delay 25; LSTM 0.987 at 25 and 0.277 at 50;
GRU 0.859 at 50 and chance at 200). `--schedule cosine` (decay to 0 after the warm-up): adding
verdict unchanged (LSTM 1.1e-3, GRU 2.3e-4, Elman 0.163; Elman at 50: 0.057), but the gated
cells copy worse at long delays because the learning rate has decayed before they leave the
plateau (delay 25: LSTM 0.891; delay 50: GRU 0.763, LSTM 0.224; delay 200: GRU 0.394), hence
the constant default.
"""

import dataclasses
import os
import time

import numpy as np
import tyro

from arch import MODELS
from arch.errors import ConfigError
from arch.rnn_cells import CellName
from train.loop import FitResult, RunConfig, fit
from train.optim import OptimConfig, ScheduleName
from train.report import experiment_dir, figure, format_table, save_figure, write_results
from train.tasks import TASKS

CLAIM = (
    "On the adding problem and the copy task, the Elman RNN stays at the no-memory baseline "
    "at long range (adding MSE ~0.167, copy accuracy ~1/num_symbols) while LSTM and GRU learn "
    "the task; at adding length 200, LSTM and GRU reach test MSE < 0.01 and Elman stays > 0.1."
)
SOLVED_MSE = 0.01  # "the LSTM and GRU reach MSE below this"
FAILED_MSE = 0.1  # "the Elman RNN stays above this" (the mean predictor scores 1/6)
MEAN_PREDICTOR_MSE = 1.0 / 6.0


@dataclasses.dataclass(frozen=True)
class Config:
    cells: tuple[CellName, ...] = ("elman", "lstm", "gru")
    hidden_size: int = 64
    """The same for every cell (so the LSTM has the most parameters: 4 gates to Elman's 1)."""
    adding_lengths: tuple[int, ...] = (50, 200)
    adding_steps: int = 3000
    copy_delays: tuple[int, ...] = (10, 25, 50, 200)
    copy_length: int = 5
    num_symbols: int = 8
    copy_steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 100
    schedule: ScheduleName = "constant"
    """After the warm-up. Constant: the gated cells leave the copy task's plateau sooner than
    with cosine decay (see Result), at the risk of a late Adam spike (seen once, with the
    earlier init: the Elman RNN copying at delay 10 fell from 1.0 to 0.84 in its last 300
    steps; "best val" in the table shows such a fall)."""
    clip_norm: float = 1.0
    bar_length: int = 200
    """The adding length at which "holds" is judged (must be one of adding_lengths)."""
    seed: int = 0
    evaluations: int = 10
    """Validation evaluations per run (the learning curves in results.json)."""
    smoke: bool = False
    """Finish in seconds: short sequences, few steps (the numbers mean nothing)."""
    run_dir: str | None = None
    """Where results.json, the plot and a sub-directory per run go (runs/experiments/long_range)."""


def train(model_name: str, cell: str, task, steps: int, config: Config, run_dir: str) -> dict:
    """One run of `cell` on `task`: its test metrics, size, speed and validation curve."""
    every = max(steps // config.evaluations, 1)
    result: FitResult = fit(
        MODELS[model_name](cell=cell, hidden_size=config.hidden_size),
        task,
        OptimConfig(
            lr=config.lr,
            schedule=config.schedule,
            warmup_steps=min(config.warmup_steps, steps),
            clip_norm=config.clip_norm,
        ),
        RunConfig.quiet(
            steps, eval_every=every, log_every=every, seed=config.seed, run_dir=run_dir
        ),
    )
    summary = result.summary
    metric = "mse" if "mse" in summary["final"]["test"] else "accuracy"
    validation = [h for h in result.history if h["split"] == "validation"]
    return {
        "cell": cell,
        "parameters": summary["parameters"],
        "test": summary["final"]["test"],
        "step_time_ms": 1000.0 * summary["train_time"] / steps,
        "examples_per_second": summary["examples_per_second"],
        "compile_time_s": summary["compile_time"],
        "wall_time_s": summary["wall_time"],
        "validation_steps": [h["step"] for h in validation],
        f"validation_{metric}": [h[metric] for h in validation],
        # the best the run ever did, beside where it ended (a late spike lowers the final one)
        f"best_validation_{metric}": (min if metric == "mse" else max)(
            h[metric] for h in validation
        ),
    }


def gru_vs_lstm(adding: list[dict], copy: list[dict]) -> dict:
    """GRU against LSTM at every setting: parameter ratio, step-time ratio, error reached."""
    pairs = []
    for task, rows, key, metric in (
        ("adding", adding, "length", "mse"),
        ("copy", copy, "delay", "accuracy"),
    ):
        cells = {(r[key], r["cell"]): r for r in rows}
        for value in sorted({r[key] for r in rows}):
            gru, lstm = cells.get((value, "gru")), cells.get((value, "lstm"))
            if gru is None or lstm is None:
                continue
            pairs.append(
                {
                    "task": task,
                    "range": value,  # the adding length or the copy delay
                    "metric": f"test {metric}",
                    "gru": gru["test"][metric],
                    "lstm": lstm["test"][metric],
                    "parameters_gru": gru["parameters"],
                    "parameters_lstm": lstm["parameters"],
                    "step_ms_gru": gru["step_time_ms"],
                    "step_ms_lstm": lstm["step_time_ms"],
                    "step_time_ratio": gru["step_time_ms"] / lstm["step_time_ms"],
                }
            )
    ratios = [p["step_time_ratio"] for p in pairs]
    return {
        "settings": pairs,
        # geometric mean: ratios multiply
        "step_time_ratio_geomean": float(np.exp(np.mean(np.log(ratios)))) if ratios else None,
    }


def plot(adding: list[dict], copy: list[dict], config: Config, path: str) -> None:
    fig, (left, right) = figure(1, 2, figsize=(11, 4))
    for cell in config.cells:
        rows = [r for r in adding if r["cell"] == cell]
        left.plot([r["length"] for r in rows], [r["test"]["mse"] for r in rows], "o-", label=cell)
        rows = [r for r in copy if r["cell"] == cell]
        right.plot(
            [r["delay"] for r in rows], [r["test"]["accuracy"] for r in rows], "o-", label=cell
        )
    left.axhline(MEAN_PREDICTOR_MSE, color="gray", ls="--", label="predict the mean (1/6)")
    left.axhline(SOLVED_MSE, color="gray", ls=":", label=f"solved (MSE {SOLVED_MSE})")
    left.set(xlabel="sequence length", ylabel="test MSE", yscale="log")
    left.set_title(f"Adding problem ({config.adding_steps} steps)")
    right.axhline(1.0 / config.num_symbols, color="gray", ls="--", label="chance (1/symbols)")
    right.set(xlabel="delay (blank steps)", ylabel="test accuracy per symbol", ylim=(0, 1.02))
    right.set_title(f"Copy task, {config.copy_length} symbols ({config.copy_steps} steps)")
    for axes, values in ((left, config.adding_lengths), (right, config.copy_delays)):
        if not values:  # e.g. --copy-delays with no values: that task was not run
            axes.set_axis_off()
            continue
        axes.set_xscale("log")
        axes.set_xticks(values, [str(v) for v in values])  # the settings run, not powers of 10
        axes.set_xticks([], minor=True)
        axes.legend(fontsize="small")
    save_figure(fig, path)


def print_tables(adding: list[dict], copy: list[dict], gru_lstm: dict) -> None:
    speed = lambda r: {
        "params": r["parameters"],
        "step ms": r["step_time_ms"],
        "compile s": r["compile_time_s"],
    }
    print("Adding problem (mean predictor: MSE 0.1667)")
    print(
        format_table(
            [
                {
                    "length": r["length"],
                    "cell": r["cell"],
                    "test mse": r["test"]["mse"],
                    "best val mse": r["best_validation_mse"],
                    **speed(r),
                }
                for r in adding
            ]
        )
    )
    print("\nCopy task (chance: accuracy 1/num_symbols)")
    print(
        format_table(
            [
                {
                    "delay": r["delay"],
                    "length": r["sequence_length"],
                    "cell": r["cell"],
                    "test acc": r["test"]["accuracy"],
                    "test seq acc": r["test"]["sequence_accuracy"],
                    "best val acc": r["best_validation_accuracy"],
                    **speed(r),
                }
                for r in copy
            ]
        )
    )
    print("\nGRU against LSTM")
    print(format_table(gru_lstm["settings"]))
    print(
        "GRU / LSTM step time, geometric mean over settings: "
        f"{gru_lstm['step_time_ratio_geomean']:.3f}"
    )


def main(argv: list[str] | None = None) -> dict:
    config = tyro.cli(Config, args=argv)
    if config.smoke:
        config = dataclasses.replace(
            config,
            adding_lengths=(8,),
            bar_length=8,
            copy_delays=(2,),
            copy_length=3,
            adding_steps=30,
            copy_steps=30,
            evaluations=2,
        )
    if config.bar_length not in config.adding_lengths:
        raise ConfigError(
            f"bar_length {config.bar_length} must be one of adding_lengths {config.adding_lengths}"
        )
    out = experiment_dir("long_range", config.run_dir)
    start = time.perf_counter()
    adding, copy = [], []
    for length in config.adding_lengths:
        task = TASKS["adding"](batch_size=config.batch_size, length=length)
        for cell in config.cells:
            run_dir = os.path.join(out, f"adding{length}-{cell}")
            row = train("rnn", cell, task, config.adding_steps, config, run_dir)
            adding.append({"length": length, **row})
    for delay in config.copy_delays:
        task = TASKS["copy"](
            batch_size=config.batch_size,
            num_symbols=config.num_symbols,
            copy_length=config.copy_length,
            delay=delay,
        )
        for cell in config.cells:
            run_dir = os.path.join(out, f"copy{delay}-{cell}")
            row = train("rnn_tagger", cell, task, config.copy_steps, config, run_dir)
            copy.append({"delay": delay, "sequence_length": task.sequence_length, **row})

    at_bar = {r["cell"]: r["test"]["mse"] for r in adding if r["length"] == config.bar_length}
    holds = (
        {"elman", "lstm", "gru"} <= set(at_bar)
        and max(at_bar["lstm"], at_bar["gru"]) < SOLVED_MSE
        and at_bar["elman"] > FAILED_MSE
    )
    results = {
        "claim": CLAIM,
        "holds": bool(holds),
        "criterion": f"adding at length {config.bar_length}: LSTM and GRU test MSE < {SOLVED_MSE} "
        f"and Elman test MSE > {FAILED_MSE}",
        "config": dataclasses.asdict(config),
        "baselines": {
            "adding_mean_predictor_mse": MEAN_PREDICTOR_MSE,
            "copy_chance_accuracy": 1.0 / config.num_symbols,
        },
        "adding_test_mse_at_bar_length": at_bar,
        "adding": adding,
        "copy": copy,
        "gru_vs_lstm": gru_vs_lstm(adding, copy),
        "total_wall_time_s": time.perf_counter() - start,
    }
    write_results(out, results)
    plot(adding, copy, config, os.path.join(out, "long_range.png"))
    print_tables(adding, copy, results["gru_vs_lstm"])
    print(f"claim holds: {holds} ({results['total_wall_time_s']:.1f} s in all); results in {out}")
    return results


if __name__ == "__main__":
    main()
