"""Time and memory of causal attention, forward + backward: our kernels against PyTorch's SDPA.

Claim: our blockwise attention (arch/blockwise_attention.py, at its default
block of 512) computes causal self-attention forward + backward at t = 4096 (b8, d256, 4 heads
of 64, float32) no slower than PyTorch's `scaled_dot_product_attention(is_causal=True)` (its
flash-attention CPU kernel) and in no more memory.

Command: python -m experiments.attention_speed      (--smoke: t = 64, width 32)
         python -m experiments.attention_speed --lengths 1024 --block-sizes 256 --no-torch

Workload: query, key, value [b, t, h, e] float32, random normal; one call is the output and
the gradients with respect to q, k and v of sum(output * c) for a fixed random cotangent c (a
VJP), at t = 512 / 2048 / 4096. Implementations: `arch.attention.dot_product_attention` with
kernel "einsum" (the reference, stores the [b, h, t, t] scores), "xla"
(`jax.nn.dot_product_attention`) and "blockwise" at each block size, and PyTorch's SDPA on
[b, h, t, e] tensors (threads = cores) when torch imports. All run round-robin
(train/measure/bench.py: median, min-max of `repeats` samples after a warm-up); JAX compile
time is reported apart. The outputs and gradients of every implementation are compared with
the einsum kernel's. "No slower" allows the machine's noise: a time ratio up to 1 / bench.TIE.

Peak memory, in bytes of arrays: JAX's is the compiled executable's own plan (memory_analysis:
arguments + outputs + temporaries, train/measure/bench.py `memory`); PyTorch's is the bytes of its
inputs (q, k, v, c) plus the highest net sum of the tensor allocations and frees that
`torch.profiler` (profile_memory) records during one call, which ends holding the output and
the three gradients, as JAX's outputs do. (tracemalloc sees no tensor memory.) Checked once
against the growth of the RSS high-water mark during one call in a fresh process (README.md).
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from arch.attention import dot_product_attention
from experiments.common.scaffold import Experiment, ExperimentConfig, measured_on, runtime_text
from train.measure import bench
from train.report import figure, format_table, save_figure

DEFAULT_BLOCK = 512  # dot_product_attention's default block_size


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    lengths: tuple[int, ...] = (512, 2048, 4096)
    batch: int = 8
    width: int = 256
    """d = heads * head width."""
    heads: int = 4
    kernels: tuple[str, ...] = ("einsum", "xla", "blockwise")
    """Our kernels (arch/attention.py); blockwise runs once per block size."""
    block_sizes: tuple[int, ...] = (128, 256, 512)
    repeats: int = 5
    """Timed round-robin passes after the warm-up."""
    min_sample_seconds: float = 0.5
    """Each timed sample repeats the call until it lasts about this long."""
    torch: bool = True
    """Time PyTorch's SDPA too when torch imports (--no-torch: JAX only)."""
    seed: int = 0

    def smoke_settings(self) -> dict:
        return dict(lengths=(64,), batch=2, width=32, block_sizes=(16, DEFAULT_BLOCK), repeats=2,
                    min_sample_seconds=0.0)  # fmt: skip


@dataclasses.dataclass
class Prepared:
    """An implementation ready to time: `call()` runs one forward + backward to completion."""

    name: str
    family: str
    block_size: int | None
    call: Callable[[], Any]
    results: tuple[np.ndarray, ...]
    """(output, dQ, dK, dV) [b, t, h, e] of its first call, for the cross-check."""
    peak_bytes: int | None
    memory: dict[str, int]
    compile_seconds: float | None


def random_arrays(config: Config, length: int) -> tuple[np.ndarray, ...]:
    """query, key, value and the cotangent c, each [b, t, h, e] float32."""
    rng = np.random.default_rng(config.seed + length)
    shape = (config.batch, length, config.heads, config.width // config.heads)
    return tuple(rng.standard_normal(shape).astype(np.float32) for _ in range(4))


def prepare_jax(kernel: str, block_size: int | None, arrays: tuple[np.ndarray, ...]) -> Prepared:
    def step(query, key, value, d_out):
        attention = lambda q, k, v: dot_product_attention(
            q, k, v, causal=True, kernel=kernel, block_size=block_size or DEFAULT_BLOCK
        )
        out, vjp = jax.vjp(attention, query, key, value)
        return (out, *vjp(d_out))

    inputs = [jnp.asarray(x) for x in arrays]
    compiled, compile_seconds = bench.compile_timed(step, *inputs)
    call = lambda: jax.block_until_ready(compiled(*inputs))
    results = tuple(np.asarray(x) for x in call())
    memory = bench.memory(compiled)
    name = kernel if block_size is None else f"{kernel} {block_size}"
    family = "ours" if kernel == "blockwise" else "jax"
    return Prepared(
        name, family, block_size, call, results, memory.get("peak_estimate"), memory,
        compile_seconds,
    )  # fmt: skip


def torch_peak_bytes(torch: Any, call: Callable[[], Any], inputs: list) -> int:
    """Bytes of the inputs plus the highest net sum of the allocations (and frees) that the
    profiler records during one call."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profile:
        call()
    events = [e for e in profile.profiler.kineto_results.events() if e.name() == "[memory]"]
    allocated = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        allocated += event.nbytes()  # negative for a free
        peak = max(peak, allocated)
    return sum(x.numel() * x.element_size() for x in inputs) + peak


def prepare_torch(torch: Any, arrays: tuple[np.ndarray, ...]) -> Prepared:
    # SDPA wants [b, h, t, e]; the copies make the transposes contiguous, as a model's would be
    query, key, value, d_out = (torch.from_numpy(x.transpose(0, 2, 1, 3).copy()) for x in arrays)
    for x in (query, key, value):
        x.requires_grad_()
    attention = torch.nn.functional.scaled_dot_product_attention

    def call() -> tuple:
        out = attention(query, key, value, is_causal=True)
        return (out, *torch.autograd.grad(out, (query, key, value), grad_outputs=d_out))

    to_numpy = lambda x: x.detach().numpy().transpose(0, 2, 1, 3).copy()  # [b, t, h, e]
    results = tuple(to_numpy(x) for x in call())
    peak = torch_peak_bytes(torch, call, [query, key, value, d_out])
    return Prepared("torch sdpa", "torch", None, call, results, peak, {}, None)


def measure(config: Config, length: int, torch: Any) -> list[dict]:
    """Prepare, cross-check and time every implementation at one length."""
    arrays = random_arrays(config, length)
    prepared = []
    for kernel in config.kernels:
        blocks = config.block_sizes if kernel == "blockwise" else (None,)
        prepared += [prepare_jax(kernel, block, arrays) for block in blocks]
    if torch is not None:
        prepared.append(prepare_torch(torch, arrays))
    reference = next(p for p in prepared if p.name == "einsum").results
    differences = {
        p.name: max(float(np.max(np.abs(a - b))) for a, b in zip(p.results, reference, strict=True))
        for p in prepared
    }
    for p in prepared:
        p.results = ()  # free the copies before timing
    calls = {p.name: p.call for p in prepared}
    timings = bench.time_round_robin(calls, config.repeats, config.min_sample_seconds)
    load = os.getloadavg()[0]
    rows = []
    for p in prepared:
        timing = timings[p.name]
        rows.append(
            {
                "length": length,
                "implementation": p.name,
                "family": p.family,
                "block_size": p.block_size,
                "seconds": {"median": timing.median, "min": timing.min, "max": timing.max},
                "samples": list(timing.samples),
                "calls_per_sample": timing.calls_per_sample,
                "compile_seconds": p.compile_seconds,
                "peak_bytes": p.peak_bytes,
                "memory": p.memory,
                "max_abs_difference": differences[p.name],
                "load_average": load,  # 1 minute, when these samples ended
            }
        )
    return rows


def compare(rows: list[dict]) -> None:
    """Add each row's time and peak memory over PyTorch's and over the einsum kernel's at its
    length (time ratio < 1: faster)."""
    for row in rows:
        same = {r["implementation"]: r for r in rows if r["length"] == row["length"]}
        for other, label in (("torch sdpa", "torch"), ("einsum", "einsum")):
            if other in same:
                reference = same[other]
                row[f"time_vs_{label}"] = row["seconds"]["median"] / reference["seconds"]["median"]
                row[f"memory_vs_{label}"] = row["peak_bytes"] / reference["peak_bytes"]


def plot(rows: list[dict], config: Config, path: str) -> str:
    fig, axes = figure(1, 2, figsize=(12, 4.5))
    colors = matplotlib.colormaps["tab10"]
    names = list(dict.fromkeys(r["implementation"] for r in rows))
    for k, name in enumerate(names):
        series = sorted((r for r in rows if r["implementation"] == name), key=lambda r: r["length"])
        lengths = [r["length"] for r in series]
        seconds = [r["seconds"] for r in series]
        median = np.array([s["median"] for s in seconds])
        spread = [median - [s["min"] for s in seconds], [s["max"] for s in seconds] - median]
        style = dict(
            marker="o", markersize=3, label=name,
            linestyle=":" if series[0]["family"] == "torch" else "-",
            color="black" if series[0]["family"] == "torch" else colors(k % colors.N),
        )  # fmt: skip
        axes[0].errorbar(lengths, median, yerr=spread, capsize=2, **style)
        axes[1].plot(lengths, [r["peak_bytes"] / 2**20 for r in series], **style)
    titles = ("seconds per forward + backward (median, min-max)", "peak memory, MiB")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(config.lengths), [str(t) for t in config.lengths])
        ax.set_xlabel("sequence length t")
        ax.set_title(
            f"{title}\ncausal, b{config.batch} d{config.width} h{config.heads} float32", fontsize=9
        )
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def pivot(rows: list[dict], lengths: tuple[int, ...]) -> str:
    """One line per implementation: median ms and peak MiB per length, and compile time."""
    table = {}
    for row in rows:
        line = table.setdefault(row["implementation"], {"implementation": row["implementation"]})
        line[f"ms {row['length']}"] = row["seconds"]["median"] * 1e3
        line[f"MiB {row['length']}"] = row["peak_bytes"] / 2**20
        if row["length"] == lengths[-1]:
            line["compile s"] = row["compile_seconds"] or "-"
    columns = ["implementation", *(f"ms {t}" for t in lengths), *(f"MiB {t}" for t in lengths)]
    return format_table(list(table.values()), [*columns, "compile s"])


def verdict(rows: list[dict], lengths: tuple[int, ...]) -> tuple[bool | None, dict]:
    """Whether the claim holds at the longest length: the blockwise kernel at its default block
    size is no slower than PyTorch (a time ratio within the noise, up to 1 / bench.TIE) and
    needs no more memory (None without PyTorch or without that block size); and the same test
    for each block size measured."""
    longest = [r for r in rows if r["length"] == lengths[-1] and r["family"] == "ours"]
    if not longest or "time_vs_torch" not in longest[0]:
        return None, {}
    by_block = {
        r["block_size"]: {
            "time_vs_torch": r["time_vs_torch"],
            "memory_vs_torch": r["memory_vs_torch"],
            "meets_goal": r["time_vs_torch"] <= 1 / bench.TIE and r["memory_vs_torch"] <= 1.0,
        }
        for r in longest
    }
    default = by_block.get(DEFAULT_BLOCK)
    return (default["meets_goal"] if default else None), by_block


def claim(config: Config) -> str:
    return (
        f"blockwise attention (block {DEFAULT_BLOCK}) is no slower than PyTorch's SDPA and "
        f"needs no more memory at t={config.lengths[-1]}"
    )


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    lengths, rows = results["lengths"], results["measurements"]
    per_length = "/".join(map(str, lengths))
    series = lambda name, key: "/".join(
        f"{r[key]:.2f}"
        for t in lengths
        for r in rows
        if (r["implementation"], r["length"]) == (name, t)
    )
    names = dict.fromkeys(r["implementation"] for r in rows if r["family"] != "torch")
    if results["torch"]["available"]:
        parts = [
            f"{n} {series(n, 'time_vs_torch')} (memory {series(n, 'memory_vs_torch')})"
            for n in names
        ]
        text = f"Time (peak memory) over PyTorch's SDPA at t={per_length}: {'; '.join(parts)}"
    else:
        parts = [f"{n} {series(n, 'time_vs_einsum')}" for n in names]
        text = f"Time over the einsum kernel at t={per_length}: {'; '.join(parts)}"
    runtime = runtime_text(results)
    holds = {True: "holds", False: "fails", None: "untested (no PyTorch)"}[results["holds"]]
    meeting = [str(b) for b, v in results["goal_by_block_size"].items() if v["meets_goal"]]
    if results["goal_by_block_size"]:
        holds += f" (block sizes meeting the goal: {', '.join(meeting) or 'none'})"
    return (
        f"| `python -m experiments.attention_speed` (~{runtime}) | {results['claim']} | "
        f"**{holds}.** {text}; causal fwd+bwd, b{results['batch']} d{results['width']} "
        f"h{results['heads']} float32. |"
    )


def study(config: Config, out: str) -> dict:
    torch, torch_missing = bench.load_torch(config.torch)
    if torch is None:
        print(f"PyTorch: {torch_missing}; comparing JAX kernels only")
    rows = []
    for length in config.lengths:
        rows += measure(config, length, torch)
        print(f"measured t={length} (load average {os.getloadavg()[0]:.1f})", flush=True)
    compare(rows)
    holds, by_block = verdict(rows, config.lengths)
    busiest = max(r["load_average"] for r in rows)
    results = {
        "holds": holds,
        "goal_by_block_size": by_block,
        **measured_on("attention_speed", busiest, (torch, torch_missing)),
        "batch": config.batch,
        "width": config.width,
        "heads": config.heads,
        "lengths": list(config.lengths),
        "memory_method": {
            "jax": "compiled memory_analysis: argument + output + temp bytes",
            "torch": "input bytes + peak net allocation recorded by torch.profiler(profile_memory)",
        },
        "measurements": rows,
        "max_abs_difference": max(r["max_abs_difference"] for r in rows),
    }
    plot(rows, config, os.path.join(out, "attention_speed.png"))
    print(f"\ncausal attention fwd+bwd, b{config.batch} d{config.width} h{config.heads} float32")
    print(pivot(rows, config.lengths))
    columns = ["length", "implementation", "max_abs_difference", "time_vs_einsum"]
    if torch is not None:
        columns += ["time_vs_torch", "memory_vs_torch"]
    print("\nratios of median time and of peak memory (< 1: ours smaller)")
    print(format_table(rows, columns))
    print(f"\nmax |implementation - einsum| over outputs and gradients: "
          f"{results['max_abs_difference']:.2g}")  # fmt: skip
    print(f"load average up to {busiest:.1f} while running")
    return results


EXPERIMENT = Experiment("attention_speed", claim, Config, study, summary_line=summary_line)
main = EXPERIMENT.main_of(__name__)
