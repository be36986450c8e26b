"""Speed of our recurrent layer against Flax's nn.RNN and PyTorch's nn.LSTM / nn.GRU.

Claim: our RNN layer (arch.rnn_layer.RNN, default formulation: input product fused into the
scanned step, unroll 2) trains and infers at least as fast as Flax's built-in nn.RNN computing
the same function, within the ~15% noise of a shared machine, at every length measured.

Command: python -m experiments.recurrent_speed      (--smoke: width 32, length 16)
         python -m experiments.recurrent_speed --cells lstm --lengths 256 --no-torch

One layer over inputs [b, t, d] (d input features = d hidden units), float32. "train" is one
jitted value_and_grad of mean(outputs**2) with respect to the parameters and the inputs;
"infer" is the jitted forward pass. Tokens/s = b * t / step time. For each (cell, length) every
implementation is compiled (ahead of time, timed apart), warmed up, then timed round-robin for
`repeats` passes, each sample repeating the step for about `min_sample_seconds`; median, min and
max are reported. All implementations get the same weights (ours mapped into Flax's and
PyTorch's layouts) and the same inputs, and the outputs and input gradients of those that
compute the same function are compared.

Implementations: ours in the variants fused / hoisted input product x unroll; Flax nn.RNN over
OptimizedLSTMCell, LSTMCell and GRUCell; PyTorch nn.LSTM / nn.GRU if torch imports (2 threads,
inference under torch.inference_mode). GRU: ours with reset_after=True is the function Flax's
GRUCell and PyTorch's nn.GRU compute (their update gate is the negation of ours); ours with
reset_after=False (the default, the paper's form) is timed beside them.

Ours runs with backward="auto" (arch/rnn_layer.py: the LSTM takes the hand-written
backward pass, the GRU autodiff); "ours fused u2 autodiff" / "ours fused u2 custom" time the
other backward pass beside it. "proto ..." rows are benchmark-only formulations that arch/ does
not have: `concatenated_lstm` / `concatenated_gru` (one [x_t, h_{t-1}] @ W product per step).
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from arch.rnn_cells import Cell, GRUCell, LSTMCell
from arch.rnn_layer import RNN, Backward
from experiments.common.scaffold import Experiment, ExperimentConfig, measured_on, runtime_text
from train.measure import bench
from train.measure.recurrent_layers import (
    MODES,
    Implementation,
    concatenated_gru,
    concatenated_lstm,
    difference,
    flax_gru_params,
    flax_layer,
    flax_lstm_params,
    prepare_jax,
    prepare_torch,
    random_weights,
    torch_layer,
)
from train.report import figure, format_table, save_figure

DEFAULT = "ours fused u2"  # the formulation arch/ uses by default (GRU: with reset_after=True)
CLAIM = "our RNN layer (fused, unroll 2) is at least as fast as Flax's nn.RNN"


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    cells: tuple[Literal["lstm", "gru"], ...] = ("lstm", "gru")
    lengths: tuple[int, ...] = (64, 256, 1024)
    batch: int = 32
    width: int = 256
    """Input features = hidden units."""
    repeats: int = 5
    """Timed round-robin passes after the warm-up."""
    unrolls: tuple[int, ...] = (1, 2, 4)
    """Unroll factors of our layer with the input product fused into the step."""
    hoisted_unrolls: tuple[int, ...] = (1,)
    """Unroll factors of our layer with the input product hoisted out of the scan (measured
    slower than fused at every unroll; more of them only lengthen the run)."""
    min_sample_seconds: float = 0.2
    """Each timed sample repeats the step until it lasts about this long."""
    prototypes: bool = True
    """Also time the benchmark-only formulations (`proto ...`)."""
    torch: bool = True
    """Time PyTorch too when it imports (--no-torch: JAX only)."""
    seed: int = 0

    def smoke_settings(self) -> dict:
        return dict(
            width=32,
            lengths=(16,),
            repeats=2,
            unrolls=(2,),
            hoisted_unrolls=(),  # tests/test_recurrent.py proves hoisted == fused
            min_sample_seconds=0.0,
        )


def our_layer(cell: Cell, hoist: bool, unroll: int, backward: Backward = "auto") -> Callable:
    layer = RNN(cell, hoist_inputs=hoist, unroll=unroll, backward=backward)
    return lambda params, inputs: layer.apply({"params": params}, inputs)[0]


def implementations(cell_name: str, config: Config, torch: Any) -> list[Implementation]:
    """Every implementation timed for one cell, all with the same weights (ours, mapped)."""
    width, rng = config.width, np.random.default_rng(config.seed)
    impls = []
    on_device = lambda tree: jax.tree.map(jnp.asarray, tree)

    def ours_variants(cell: Cell, function: str, label: str, hoists: tuple[bool, ...]) -> Any:
        weights = random_weights(cell, width, rng)
        params = on_device(weights)
        for hoist in hoists:
            unrolls = config.hoisted_unrolls if hoist else config.unrolls
            for unroll in unrolls if label == "" else (2,):  # the default unroll
                name = f"ours{label} {'hoisted' if hoist else 'fused'} u{unroll}"
                impls.append(
                    Implementation(name, "ours", function, params, our_layer(cell, hoist, unroll))
                )
                if cell.separable and not hoist and unroll == 2:  # both backward passes
                    other = "autodiff" if cell.custom_backward_is_faster else "custom"
                    layer = our_layer(cell, hoist, unroll, backward=other)
                    impls.append(Implementation(f"{name} {other}", "ours", function, params, layer))
        return weights

    if cell_name == "lstm":
        cell = LSTMCell(width, parent=None)
        weights = ours_variants(cell, "lstm", "", (False, True))
        flax_params = on_device(flax_lstm_params(weights))
        for flax_cell in (nn.OptimizedLSTMCell(width), nn.LSTMCell(width)):
            name = f"flax {type(flax_cell).__name__}"
            impls.append(Implementation(name, "flax", "lstm", flax_params, flax_layer(flax_cell)))
        concatenated = concatenated_lstm(1)
    else:
        cell = GRUCell(width, reset_after=True, parent=None)
        weights = ours_variants(cell, "gru", "", (False, True))
        flax_params = on_device(flax_gru_params(weights))
        impls.append(
            Implementation(
                "flax GRUCell", "flax", "gru", flax_params, flax_layer(nn.GRUCell(width))
            )
        )
        reset_before = GRUCell(width, reset_after=False, parent=None)
        ours_variants(reset_before, "gru reset_after=False", " reset_after=False", (False,))
        concatenated = concatenated_gru(1)
    if torch is not None:
        layer = torch_layer(torch, cell_name, weights)
        impls.append(
            Implementation(
                f"torch nn.{cell_name.upper()}", "torch", cell_name, layer, lambda m, x: m(x)[0]
            )
        )
    if config.prototypes:
        params = on_device(weights)
        impls.append(Implementation("proto concat u1", "proto", cell_name, params, concatenated))
    return impls


def measure(config: Config, cell_name: str, length: int, impls: list, torch: Any) -> tuple:
    """Time every implementation and mode at one length, round-robin; cross-check the numbers.
    Returns (rows, differences {impl: {"outputs": d, "input_gradient": d}})."""
    rng = np.random.default_rng(config.seed + length)
    inputs = rng.standard_normal((config.batch, length, config.width)).astype(np.float32)
    steps, references, differences = {}, {}, {}
    for impl in impls:
        for mode in MODES:
            if impl.family == "torch":
                step = prepare_torch(torch, impl, mode, inputs)
            else:
                step = prepare_jax(impl, mode, inputs)
            kind = next(iter(step.check))
            reference = references.setdefault((impl.function, kind), step.check)
            differences.setdefault(impl.name, {})[kind] = difference(step.check, reference)
            step.check = {}
            steps[impl.name, mode] = step
    calls = {key: step.call for key, step in steps.items()}
    timings = bench.time_round_robin(calls, config.repeats, config.min_sample_seconds)
    rows = []
    tokens, load = config.batch * length, os.getloadavg()[0]
    for impl in impls:
        for mode in MODES:
            step, timing = steps[impl.name, mode], timings[impl.name, mode]
            rows.append(
                {
                    "cell": cell_name,
                    "length": length,
                    "mode": mode,
                    "implementation": impl.name,
                    "family": impl.family,
                    "function": impl.function,
                    "tokens_per_second": timing.rate(tokens),
                    "seconds": list(timing.samples),
                    "calls_per_sample": timing.calls_per_sample,
                    "compile_seconds": step.compile_seconds,
                    "first_call_seconds": step.first_call_seconds,
                    "load_average": load,  # 1 minute, when these samples ended
                }
            )
    return rows, differences


def compare(rows: list[dict]) -> list[dict]:
    """Per (cell, length, mode): ours (default and fastest variant) over Flax's fastest built-in
    and PyTorch, counting only implementations of the same function (tokens/s ratio > 1: ours
    is faster)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["cell"], row["length"], row["mode"]), []).append(row)
    ratios = []
    speed = lambda row: row["tokens_per_second"]["median"]
    for (cell_name, length, mode), group in groups.items():
        same = [r for r in group if r["function"] == cell_name]  # GRU: reset_after=True only
        fastest = lambda family, same=same: max(
            (r for r in same if r["family"] == family), key=speed, default=None
        )
        default = next(r for r in group if r["implementation"] == DEFAULT)
        best, flax_best, torch_row, proto = (fastest(f) for f in ("ours", "flax", "torch", "proto"))
        entry = {
            "cell": cell_name,
            "length": length,
            "mode": mode,
            "ours": speed(default),
            "fastest_ours": best["implementation"],
            "fastest_ours_tokens_per_second": speed(best),
            "flax": flax_best["implementation"],
            "flax_tokens_per_second": speed(flax_best),
            "ours_vs_flax": speed(default) / speed(flax_best),
            "fastest_ours_vs_flax": speed(best) / speed(flax_best),
            "torch_tokens_per_second": speed(torch_row) if torch_row else None,
            "ours_vs_torch": speed(default) / speed(torch_row) if torch_row else None,
            "fastest_ours_vs_torch": speed(best) / speed(torch_row) if torch_row else None,
        }
        if proto is not None:
            entry["fastest_proto"] = proto["implementation"]
            entry["fastest_proto_vs_ours"] = speed(proto) / speed(default)
            entry["protos_vs_ours"] = {
                r["implementation"]: speed(r) / speed(default)
                for r in same
                if r["family"] == "proto"
            }
        ratios.append(entry)
    return ratios


def plot(rows: list[dict], config: Config, path: str) -> str:
    cells, lengths = config.cells, config.lengths
    fig, axes = figure(len(cells), len(MODES), figsize=(6 * len(MODES), 4.5 * len(cells)))
    axes = np.asarray(axes).reshape(len(cells), len(MODES))
    styles = {"ours": "-", "flax": "--", "torch": ":", "proto": "-."}
    colors = matplotlib.colormaps["tab20"]
    for i, cell_name in enumerate(cells):
        for j, mode in enumerate(MODES):
            ax = axes[i, j]
            selected = [r for r in rows if r["cell"] == cell_name and r["mode"] == mode]
            names = list(dict.fromkeys(r["implementation"] for r in selected))
            for k, name in enumerate(names):
                series = [r for r in selected if r["implementation"] == name]
                series.sort(key=lambda r: r["length"])
                tps = [r["tokens_per_second"] for r in series]
                median = np.array([t["median"] for t in tps])
                spread = [median - [t["min"] for t in tps], [t["max"] for t in tps] - median]
                ax.errorbar(
                    [r["length"] for r in series],
                    median,
                    yerr=spread,
                    linestyle=styles[series[0]["family"]],
                    marker="o",
                    markersize=3,
                    capsize=2,
                    label=name,
                    color="black" if series[0]["family"] == "torch" else colors(k % colors.N),
                )
            ax.set_xscale("log")
            ax.set_xticks(list(lengths), [str(t) for t in lengths])
            ax.set_xlabel("sequence length t")
            ax.set_ylabel("tokens / s (median, min-max)")
            ax.set_title(f"{cell_name} {mode}, b{config.batch} d{config.width}", fontsize=9)
            ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def pivot(rows: list[dict], cell_name: str, lengths: tuple[int, ...]) -> str:
    """One line per implementation: median k tokens/s per (mode, length), and compile time."""
    table = {}
    for row in rows:
        if row["cell"] != cell_name:
            continue
        line = table.setdefault(row["implementation"], {"implementation": row["implementation"]})
        line[f"{row['mode']} {row['length']}"] = row["tokens_per_second"]["median"] / 1e3
        if row["mode"] == "train" and row["length"] == lengths[0]:
            compile_s = row["compile_seconds"]
            line["compile s"] = compile_s if compile_s is not None else "-"
    columns = ["implementation", *(f"{m} {t}" for m in MODES for t in lengths), "compile s"]
    return format_table(list(table.values()), columns)


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    ratios, per_length = results["ratios"], "/".join(map(str, results["lengths"]))
    series = lambda cell, mode, key: "/".join(
        f"{r[key]:.2f}" for r in ratios if (r["cell"], r["mode"]) == (cell, mode)
    )
    parts = []
    for cell_name in dict.fromkeys(r["cell"] for r in ratios):
        for mode in MODES:
            text = f"{cell_name.upper()} {mode} {series(cell_name, mode, 'ours_vs_flax')}"
            if results["torch"]["available"]:
                text += f" (PyTorch {series(cell_name, mode, 'ours_vs_torch')})"
            parts.append(text)
    protos = []
    for name in dict.fromkeys(n for r in ratios for n in r.get("protos_vs_ours", {})):
        for cell_name in dict.fromkeys(r["cell"] for r in ratios):
            train = [r for r in ratios if (r["cell"], r["mode"]) == (cell_name, "train")]
            gains = "/".join(f"{r['protos_vs_ours'][name]:.2f}" for r in train)
            protos.append(f"{name} {cell_name.upper()} {gains}")
    gains = "; ".join(protos)
    runtime = runtime_text(results)
    over_torch = " (over PyTorch)" if results["torch"]["available"] else ""
    return (
        f"| `python -m experiments.recurrent_speed` (~{runtime}) | {results['claim']} | "
        f"**{'holds' if results['holds'] else 'fails'}.** Tokens/s of ours (fused, unroll 2) over "
        f"Flax's fastest built-in{over_torch} at T={per_length}, b{results['batch']} "
        f"d{results['width']} float32: {'; '.join(parts)}."
        + (f" Benchmark-only formulations over ours, training: {gains}." if gains else "")
        + " |"
    )


def study(config: Config, out: str) -> dict:
    torch, torch_missing = bench.load_torch(config.torch)
    if torch is None:
        print(f"PyTorch: {torch_missing}; comparing JAX implementations only")
    rows, differences = [], {}
    for cell_name in config.cells:
        impls = implementations(cell_name, config, torch)
        for length in config.lengths:
            measured, found = measure(config, cell_name, length, impls, torch)
            rows += measured
            for name, kinds in found.items():
                for kind, value in kinds.items():
                    per_impl = differences.setdefault(kind, {}).setdefault(cell_name, {})
                    per_impl[name] = max(value, per_impl.get(name, 0.0))
            print(f"measured {cell_name} t={length}", flush=True)
    ratios = compare(rows)
    busiest = max(r["load_average"] for r in rows)
    max_abs_difference = max(v for d in differences["outputs"].values() for v in d.values())
    fastest = {}
    for r in ratios:
        fastest.setdefault(r["cell"], {}).setdefault(r["mode"], {})[r["length"]] = r["fastest_ours"]
    results = {
        "holds": all(r["ours_vs_flax"] >= bench.TIE for r in ratios),
        **measured_on("recurrent_speed", busiest, (torch, torch_missing)),
        "batch": config.batch,
        "width": config.width,
        "lengths": list(config.lengths),
        "measurements": rows,
        "ratios": ratios,
        "fastest_ours": fastest,
        "max_abs_difference": max_abs_difference,
        "max_abs_difference_outputs": differences["outputs"],
        "max_relative_difference_input_gradient": differences["input_gradient"],
    }
    plot(rows, config, os.path.join(out, "recurrent_speed.png"))
    for cell_name in config.cells:
        print(f"\n{cell_name}: median k tokens/s (b{config.batch} d{config.width} float32)")
        print(pivot(rows, cell_name, config.lengths))
    columns = ["cell", "length", "mode", "ours_vs_flax", "fastest_ours", "fastest_ours_vs_flax"]
    if torch is not None:
        columns += ["ours_vs_torch", "fastest_ours_vs_torch"]
    if config.prototypes:
        columns += ["fastest_proto", "fastest_proto_vs_ours"]
    print("\nratios of tokens/s (> 1: ours faster)")
    print(format_table(ratios, columns))
    print(f"\nmax |ours - reference| over outputs: {max_abs_difference:.2g}")
    if busiest > (os.cpu_count() or 2):
        print(
            f"warning: load average up to {busiest:.1f} on {os.cpu_count()} cores: the numbers "
            "are noisy (PyTorch's OpenMP threads stall worst when the cores are oversubscribed)"
        )
    return results


EXPERIMENT = Experiment("recurrent_speed", CLAIM, Config, study, summary_line=summary_line)
main = EXPERIMENT.main_of(__name__)
