"""Time and memory of the two scans of a diagonal linear recurrence, h_t = a_t * h_{t-1} + b_t.

Claim: on a 2-core CPU the sequential scan (`jax.lax.scan`) is about 2x faster
than the parallel one (`jax.lax.associative_scan`, log t levels of t-wide work) at 1K-16K steps
forward + backward; on a GPU the parallel scan is expected to win. "About 2x" is read as: the
parallel scan takes at least 1.5x the sequential scan's time at every t >= 1024 (on a GPU: less
than 1x).

Command: python -m experiments.linear_scan_speed      (--smoke: t = 1024 and 16, width 8)
         python -m experiments.linear_scan_speed --lengths 1024 4096 --complex-lengths

Workload: `arch.linear_scan.linear_scan` on a, b [b, t, n] (b8, n256; a real with
0.9 <= |a| <= 1 and random signs, b standard normal), float32, at t = 256 / 1K / 4K / 16K, and
complex64 (a of random phase) at the `complex_lengths`. Implementations: method "sequential"
with unroll 1 (the reference) and 8, method "parallel". Passes: "forward" (the states h) and
"forward+backward" (h and the vector-Jacobian products of a fixed random cotangent c with
respect to a and b: the gradients of sum(h * c)). Every implementation and pass at one length
runs round-robin (train/measure/bench.py: median, min-max of `repeats` samples after a warm-up);
compile time is reported apart; memory is the compiled executable's own plan (arguments +
outputs + temporaries, bench.memory). Outputs (and gradients) are compared with the reference's.
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from arch.linear_scan import linear_scan
from experiments.common.scaffold import Experiment, ExperimentConfig, measured_on, runtime_text
from train.measure import bench
from train.report import figure, format_table, save_figure

REFERENCE = "sequential"  # unroll 1
PASSES = ("forward", "forward+backward")
CPU_SLOWDOWN = 1.5  # "about 2x": parallel / sequential time at least this on a CPU


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    lengths: tuple[int, ...] = (256, 1024, 4096, 16384)
    complex_lengths: tuple[int, ...] = (1024,)
    """Lengths also measured with complex64 a and b (none: --complex-lengths with no value)."""
    batch: int = 8
    width: int = 256
    unrolls: tuple[int, ...] = (1, 8)
    """Unroll factors of the sequential scan; 1 is the reference."""
    repeats: int = 5
    """Timed round-robin passes after the warm-up."""
    min_sample_seconds: float = 0.2
    """Each timed sample repeats the call until it lasts about this long."""
    seed: int = 0

    def smoke_settings(self) -> dict:
        return dict(lengths=(1024,), complex_lengths=(16,), batch=2, width=8, unrolls=(1, 4),
                    repeats=2, min_sample_seconds=0.0)  # fmt: skip


def random_arrays(config: Config, length: int, complex_: bool) -> tuple[np.ndarray, ...]:
    """a, b and the cotangent c, each [b, t, n], float32 or complex64."""
    rng = np.random.default_rng(config.seed + length)
    shape = (config.batch, length, config.width)
    magnitude = rng.uniform(0.9, 1.0, shape)
    if complex_:
        a = magnitude * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
        b, c = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape) for _ in range(2))
    else:
        a = magnitude * rng.choice([-1.0, 1.0], shape)
        b, c = (rng.standard_normal(shape) for _ in range(2))
    dtype = np.complex64 if complex_ else np.float32
    return tuple(x.astype(dtype) for x in (a, b, c))


def implementations(config: Config) -> dict[str, dict[str, Any]]:
    """name -> linear_scan's keyword arguments."""
    named = {REFERENCE if u == 1 else f"sequential unroll {u}": u for u in config.unrolls}
    scans = {name: {"method": "sequential", "unroll": u} for name, u in named.items()}
    return {**scans, "parallel": {"method": "parallel"}}


def step_function(options: dict[str, Any], pass_: str) -> Callable:
    def forward(a, b, c):
        return (linear_scan(a, b, **options),)

    def forward_backward(a, b, c):
        h, vjp = jax.vjp(lambda a, b: linear_scan(a, b, **options), a, b)
        return (h, *vjp(c))

    return forward if pass_ == "forward" else forward_backward


def measure(config: Config, length: int, complex_: bool) -> list[dict]:
    """Compile, cross-check and time every implementation and pass at one length and dtype."""
    arrays = [jnp.asarray(x) for x in random_arrays(config, length, complex_)]
    prepared, outputs = {}, {}
    for name, options in implementations(config).items():
        for pass_ in PASSES:
            compiled, compile_seconds = bench.compile_timed(step_function(options, pass_), *arrays)
            call = lambda compiled=compiled: jax.block_until_ready(compiled(*arrays))
            outputs[name, pass_] = [np.asarray(x) for x in call()]
            prepared[name, pass_] = (call, compile_seconds, bench.memory(compiled))
    differences = {}
    for (name, pass_), results in outputs.items():
        reference = outputs[REFERENCE, pass_]
        pairs = list(zip(results, reference, strict=True))
        differences[name, pass_] = (
            max(float(np.max(np.abs(x - y))) for x, y in pairs),
            max(float(np.max(np.abs(x - y)) / np.max(np.abs(y))) for x, y in pairs),
        )
    outputs.clear()  # free the copies before timing
    calls = {f"{name} | {pass_}": p[0] for (name, pass_), p in prepared.items()}
    timings = bench.time_round_robin(calls, config.repeats, config.min_sample_seconds)
    load = os.getloadavg()[0]
    rows = []
    for (name, pass_), (_, compile_seconds, memory) in prepared.items():
        timing = timings[f"{name} | {pass_}"]
        rows.append(
            {
                "length": length,
                "dtype": "complex64" if complex_ else "float32",
                "implementation": name,
                "pass": pass_,
                "seconds": {"median": timing.median, "min": timing.min, "max": timing.max},
                "samples": list(timing.samples),
                "calls_per_sample": timing.calls_per_sample,
                "compile_seconds": compile_seconds,
                "peak_bytes": memory.get("peak_estimate"),
                "memory": memory,
                "max_abs_difference": differences[name, pass_][0],
                "max_relative_difference": differences[name, pass_][1],  # over max |reference|
                "load_average": load,  # 1 minute, when these samples ended
            }
        )
    for row in rows:
        reference = next(
            r for r in rows if (r["implementation"], r["pass"]) == (REFERENCE, row["pass"])
        )
        row["time_vs_sequential"] = row["seconds"]["median"] / reference["seconds"]["median"]
        row["memory_vs_sequential"] = row["peak_bytes"] / reference["peak_bytes"]
    return rows


def verdict(rows: list[dict], platform: str) -> tuple[bool | None, dict[int, float]]:
    """Parallel over sequential time, float32 forward + backward, per length; and whether the
    claim holds at every t >= 1024 (None if none was measured)."""
    ratios = {
        r["length"]: r["time_vs_sequential"]
        for r in rows
        if (r["implementation"], r["pass"], r["dtype"]) == ("parallel", PASSES[1], "float32")
    }
    long = [ratio for length, ratio in ratios.items() if length >= 1024]
    if not long:
        return None, ratios
    holds = all(r >= CPU_SLOWDOWN for r in long) if platform == "cpu" else all(r < 1 for r in long)
    return holds, ratios


def plot(rows: list[dict], config: Config, path: str) -> str:
    fig, axes = figure(1, 2, figsize=(12, 4.5))
    colors = matplotlib.colormaps["tab10"]
    names = list(implementations(config))
    for ax, pass_ in zip(axes, PASSES, strict=True):
        for k, name in enumerate(names):
            series = sorted(
                (r for r in rows if (r["implementation"], r["pass"], r["dtype"]) ==
                 (name, pass_, "float32")),
                key=lambda r: r["length"],
            )  # fmt: skip
            seconds = [r["seconds"] for r in series]
            median = np.array([s["median"] for s in seconds]) * 1e3
            spread = [
                median - [s["min"] * 1e3 for s in seconds],
                [s["max"] * 1e3 for s in seconds] - median,
            ]
            lengths = [r["length"] for r in series]
            ax.errorbar(lengths, median, yerr=spread, capsize=2, marker="o", markersize=3,
                        label=name, color=colors(k))  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(config.lengths), [str(t) for t in config.lengths])
        ax.set_xlabel("sequence length t")
        ax.set_title(
            f"ms per {pass_} (median, min-max)\nb{config.batch} n{config.width} float32",
            fontsize=9,
        )
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def pivot(rows: list[dict], lengths: list[int]) -> str:
    """One line per dtype, implementation and pass: ms and ratio to the reference per length,
    peak MiB at the longest length, compile seconds there."""
    table = {}
    for row in rows:
        key = (row["dtype"], row["implementation"], row["pass"])
        line = table.setdefault(key, {"dtype": key[0], "implementation": key[1], "pass": key[2]})
        line[f"ms {row['length']}"] = row["seconds"]["median"] * 1e3
        line[f"x {row['length']}"] = row["time_vs_sequential"]
        line["MiB"] = row["peak_bytes"] / 2**20
        line["compile s"] = row["compile_seconds"]
        line["t"] = row["length"]
    columns = ["dtype", "implementation", "pass", *(f"ms {t}" for t in lengths)]
    columns += [*(f"x {t}" for t in lengths), "t", "MiB", "compile s"]
    return format_table(list(table.values()), columns)


CLAIM = (
    "on a 2-core CPU the sequential scan (lax.scan) is about 2x (>= 1.5x) faster than "
    "the associative scan at 1K-16K steps, forward+backward; on a GPU the parallel wins"
)


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    lengths, rows = results["lengths"], results["measurements"]
    per_length = "/".join(map(str, lengths))
    series = lambda name, pass_, key: "/".join(
        f"{r[key]:.2f}"
        for t in lengths
        for r in rows
        if (r["implementation"], r["pass"], r["length"], r["dtype"]) == (name, pass_, t, "float32")
    )
    reference_ms = "/".join(
        f"{r['seconds']['median'] * 1e3:.3g}"
        for t in lengths
        for r in rows
        if (r["implementation"], r["pass"], r["length"], r["dtype"])
        == (REFERENCE, PASSES[1], t, "float32")
    )
    others = [n for n in dict.fromkeys(r["implementation"] for r in rows) if n != REFERENCE]
    parts = [f"{n} {series(n, PASSES[1], 'time_vs_sequential')}" for n in others]
    forward = [f"{n} {series(n, PASSES[0], 'time_vs_sequential')}" for n in others]
    memory = series("parallel", PASSES[1], "memory_vs_sequential")
    runtime = runtime_text(results)
    holds = {True: "holds", False: "fails", None: "untested (no t >= 1024)"}[results["holds"]]
    return (
        f"| `python -m experiments.linear_scan_speed` (~{runtime}) | {results['claim']} | "
        f"**{holds}.** Time over `lax.scan` (unroll 1, {reference_ms} ms) forward+backward at "
        f"t={per_length}: {'; '.join(parts)}; forward only: {'; '.join(forward)}. Parallel "
        f"memory over sequential (fwd+bwd): {memory}. b{results['batch']} n{results['width']} "
        f"float32, {results['device']}; outputs and gradients agree to "
        f"{results['max_relative_difference']:.1g} of their largest magnitude. |"
    )


def study(config: Config, out: str) -> dict:
    rows = []
    measured = [(t, False) for t in config.lengths] + [(t, True) for t in config.complex_lengths]
    for length, complex_ in measured:
        rows += measure(config, length, complex_)
        kind = "complex64" if complex_ else "float32"
        print(f"measured t={length} {kind} (load average {os.getloadavg()[0]:.1f})", flush=True)
    platform = jax.devices()[0].platform
    holds, ratios = verdict(rows, platform)
    busiest = max(r["load_average"] for r in rows)
    results = {
        "holds": holds,
        "platform": platform,
        "parallel_over_sequential": ratios,  # float32 forward+backward, by length
        **measured_on("linear_scan_speed", busiest),
        "batch": config.batch,
        "width": config.width,
        "lengths": list(config.lengths),
        "complex_lengths": list(config.complex_lengths),
        "memory_method": "compiled memory_analysis: argument + output + temp bytes",
        "measurements": rows,
        "max_abs_difference": max(r["max_abs_difference"] for r in rows),
        "max_relative_difference": max(r["max_relative_difference"] for r in rows),
    }
    plot(rows, config, os.path.join(out, "linear_scan_speed.png"))
    print(f"\nlinear scan h_t = a_t h_(t-1) + b_t, b{config.batch} n{config.width}, "
          f"{results['device']}, jax {jax.__version__}")  # fmt: skip
    print("ms: median per call; x: time over the sequential scan (unroll 1); MiB at t:")
    all_lengths = sorted(set(config.lengths) | set(config.complex_lengths))
    print(pivot(rows, all_lengths))
    print(f"\nmax |implementation - sequential| over outputs and gradients: "
          f"{results['max_abs_difference']:.2g} "
          f"({results['max_relative_difference']:.2g} of the largest magnitude)")  # fmt: skip
    print(f"load average up to {busiest:.1f} while running")
    return results


EXPERIMENT = Experiment("linear_scan_speed", CLAIM, Config, study, summary_line=summary_line)
main = EXPERIMENT.main_of(__name__)
