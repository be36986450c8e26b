"""Recurrence against attention for speed: training, prefill and generation, swept over length.

Claim: for training, attention is faster than recurrence at short lengths and recurrence
(linear in t) overtakes attention (quadratic in t) past a crossover length; for generation, a
recurrent state's per-token cost and memory stay constant while a key/value cache's grow with
the context.

Command: python -m experiments.recurrence_vs_attention      (quick: ~160 s on a quiet 2-core CPU)
         python -m experiments.recurrence_vs_attention --no-quick --preset 10m --precision bfloat16

Setup. Every family is a byte-level language model (vocabulary 256, tokens [b, t] -> logits
[b, t, v]) at a matched parameter count: the same depth for every family (1 layer in the smoke
preset, 2 in "1m", 4 in "10m") and the width that brings the count (from jax.eval_shape, no
init) nearest the target (widths in steps of 4, of 8 for attention). Recurrent: "elman",
"lstm", "gru" (rnn_lm, embedding width = hidden width), "mingru", "lru" (linear_rnn_lm, state
width = model width), "mamba" (16 states per channel, expand 2). Attention: "gpt-<kernel>"
(decoder-only Transformer, rotary positions, heads of the width nearest 64 that divides d;
kernel einsum / xla / blockwise; cudnn on a GPU in bfloat16 only). Quick: preset 1m, float32,
batch 4, N = 64 new tokens, 3 samples of >= 0.05 s each. Every measurement is train/measure/bench.py's
`profile` (compile apart; warm-up, then median / min / max; FLOPs counted from the jaxpr with
scan bodies times their length; XLA's memory analysis; utilisation = counted FLOP/s over the
measured matmul peak in the compute dtype):
  train     the ONE shared train step (train/step.py, AdamW, state donated), random tokens [b, t];
  prefill   the parallel forward pass over a prompt [b, L] (jit(model.apply));
  generate  the shared `generate` (arch/decoding.py) continuing a cache filled (untimed, by
            decode_step in a scan) with L - 1 prompt tokens: it feeds the last prompt token and
            produces N greedy tokens (N + 1 decode steps); ms/token = median / N. "cache MiB" is
            the filled cache's bytes: keys/values [b, L + N, h, e] per layer for the Transformer,
            the state for a recurrence. Every gpt kernel decodes with one program
            (arch/attention.py decodes with einsum): it is measured once and shared.
Crossover: where log(t_rec / t_att), interpolated linearly in log(length), last changes sign.
Training holds if every recurrence is slower than the fastest attention kernel (per length) at
the shortest length and faster at the longest. Generation holds if every recurrent state has
the same bytes and decode FLOPs at every L (one program: its ms/token differ by noise only)
while every cache grows with L and its ms/token at the longest L is >= 1.5x the shortest's.

Result (quick, 2 cores of an AMD EPYC, quiet machine; jax 0.10.2, float32, batch 4, N 64;
measured float32 matmul peak used for utilisation; wall 158 s):

    family         params     train ms (128/512/2048)  prefill ms (2048)  gen ms/token (128/2048)
    elman          1,000,816  16.4/73.4/265            84                 0.047/0.056
    lstm           1,014,112  30.7/102/422             75                 0.067/0.045
    gru            1,000,968  38.4/161/634             130                0.116/0.126
    mingru           989,816  19.7/69.1/308            86                 0.067/0.083
    lru            1,013,192  22.3/87.9/344            112                0.070/0.087
    mamba            984,256  59.1/200/1092            201                0.153/0.164
    gpt-einsum     1,016,800  17.2/144/1723            591                0.258/3.75
    gpt-xla        1,016,800  20.5/162/4326            783                (same program)
    gpt-blockwise  1,016,800  17.9/120/679             229                (same program)

Training: FAILS as stated. Against the fastest attention kernel at each length the LSTM crosses
at ~380 tokens, minGRU ~170, the LRU ~240, the GRU ~1580, but Elman is faster already at 128
and Mamba (a sequential scan over e x n = 2d x 16 states) does not overtake blockwise attention
by 2048. Against the quadratic kernels alone it holds for every recurrence (vs einsum: LSTM
~310, GRU ~590, Mamba ~910). Close curves' crossovers move by hundreds of tokens between runs
(cells vary 1.15-1.2x from run to run on this VM: README). Generation: HOLDS. Every recurrent
state is one size at every L (0.007-0.19 MiB) with the same decode FLOPs; the KV cache grows
2.3 -> 25.8 MiB (11x, as L + N) and the Transformer's ms/token 14.5x from L = 128 to 2048
(1.7-5.5x the recurrences' at 128, 23-83x at 2048). Attention kernels are credited with the
einsum program's FLOPs (the blockwise kernel's causal loops have data-dependent trip counts).
"""

import csv
import dataclasses
import math
import os
import time
from functools import cache
from itertools import pairwise
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from arch import MODELS
from arch.decoding import generate
from arch.errors import ConfigError
from experiments._rva_report import KINDS, plot, series, table_rows
from train.measure import bench
from train.measure import flops as flop_count
from train.optim import OptimConfig, make_optimizer
from train.report import experiment_dir, format_table, write_results
from train.state import parameter_count
from train.step import init_state, make_train_step
from train.tasks.language import LanguageModelLoss

CLAIM = (
    "For training, attention is faster than recurrence at short lengths and recurrence (linear "
    "in t) overtakes attention (quadratic in t) past a crossover length; for generation, a "
    "recurrent state's per-token cost and memory stay constant while a key/value cache's grow "
    "with the context."
)
RNN_CELLS, LINEAR = ("elman", "lstm", "gru"), ("mingru", "lru", "mamba")
SCAN_LSTM = "lstm-scan"  # cuDNN's fast path off ("lstm" takes it on a GPU): our scan vs cuDNN
RECURRENT = RNN_CELLS + LINEAR + (SCAN_LSTM,)
ATTENTION = ("gpt-einsum", "gpt-xla", "gpt-blockwise", "gpt-cudnn")
DEFAULT_FAMILIES = RNN_CELLS + LINEAR + ATTENTION[:3]
SMOKE_FAMILIES = ("lstm", "mingru", "gpt-einsum")
PRESETS = {"smoke": (1, 21_000), "1m": (2, 1_000_000), "10m": (4, 10_000_000)}  # (layers, target)
OPTIMIZER = OptimConfig(name="adamw", lr=3e-4, weight_decay=0.01)
VOCAB = 256
GROWTH_RATIO = 1.5  # generation: a cache's ms/token "grows" if longest / shortest >= this
GROWTH_OF = ("cache_bytes", "flops", "ms_per_token")


Family = Literal[
    "elman", "lstm", "gru", "mingru", "lru", "mamba", "lstm-scan", "gpt-einsum", "gpt-xla",
    "gpt-blockwise", "gpt-cudnn",
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config:
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
    smoke: bool = False
    """Seconds: 1-layer ~21k-parameter models, lengths 16 and 32, batch 8, N 4."""
    run_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class RandomTokens(LanguageModelLoss):
    """The language-model loss alone (the benchmark feeds its own random batches)."""

    vocab_size: int = VOCAB


def heads_for(width: int) -> int:
    """Heads whose width divides the model width, is a multiple of 8 and is nearest 64."""
    head_widths = [e for e in range(8, min(width, 128) + 1, 8) if width % e == 0] or [width]
    return width // min(head_widths, key=lambda e: (abs(e - 64), -e))


def build(family: str, width: int, layers: int, dtype: str = "float32", max_len: int = 512):
    """The family's language model at this width and depth."""
    common = {"num_layers": layers, "vocab_size": VOCAB, "num_outputs": VOCAB, "dtype": dtype}
    if family in RNN_CELLS or family == SCAN_LSTM:
        fast = {"fast_path": "scan"} if family == SCAN_LSTM else {}
        cell = family.removesuffix("-scan")
        return MODELS["rnn_lm"](cell=cell, hidden_size=width, embed_size=width, **common, **fast)
    if family in LINEAR:
        state = 16 if family == "mamba" else width
        return MODELS["linear_rnn_lm"](mixer=family, features=width, state_size=state, **common)
    if family in ATTENTION:
        kernel = family.removeprefix("gpt-")
        return MODELS["gpt"](
            features=width, num_heads=heads_for(width), max_len=max_len, kernel=kernel,
            positional="rotary", **common,
        )  # fmt: skip
    raise ConfigError(f"unknown family {family!r}; choose from {RECURRENT + ATTENTION}")


def count_parameters(model: Any) -> int:
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    return parameter_count(jax.eval_shape(model.init, jax.random.key(0), tokens)["params"])


@cache
def solve_width(family: str, preset: str) -> tuple[int, int]:
    """(width, parameters): the width (a multiple of 8 for attention, 4 otherwise) whose count
    is nearest the preset's target; bisection, as the count grows with the width."""
    layers, target = PRESETS[preset]
    step = 8 if family in ATTENTION else 4
    count = cache(lambda k: count_parameters(build(family, k * step, layers)))
    low, high = 1, 4096 // step
    while low < high:  # the smallest k with count(k) >= target
        middle = (low + high) // 2
        low, high = (middle + 1, high) if count(middle) < target else (low, middle)
    best = min({max(low - 1, 1), low}, key=lambda k: abs(math.log(count(k) / target)))
    return best * step, count(best)


def crossover(lengths: list[int], recurrent: list, attention: list) -> dict[str, Any]:
    """Where the recurrence's time t_r drops below attention's t_a for good: d = log(t_r / t_a)
    linear in log(length) between the two swept lengths of its LAST change of sign (None: not
    measured). status "always" / "never in range" (faster / slower at every length), "crosses"
    (faster at the longest length, from `length` on) or "attention overtakes" (slower at the
    longest, from `length` on); `changes` > 1 means a ragged (noisy) curve."""
    points = [
        (math.log(n), math.log(r / a))
        for n, r, a in zip(lengths, recurrent, attention, strict=True)
        if r and a
    ]
    changes = [(x0, d0, x1, d1) for (x0, d0), (x1, d1) in pairwise(points) if (d0 < 0) != (d1 < 0)]
    found = {"status": "no data", "length": None, "changes": len(changes)}
    if changes:
        x0, d0, x1, d1 = changes[-1]
        status = "crosses" if d1 < 0 else "attention overtakes"
        found |= {"status": status, "length": math.exp(x0 + d0 / (d0 - d1) * (x1 - x0))}
    elif points:
        found["status"] = "always" if points[0][1] < 0 else "never in range"
    faster = None if not points else "recurrence" if points[0][1] < 0 else "attention"
    return found | {"faster_at_shortest": faster}


def describe(found: dict) -> str:
    ragged = f" ({found['changes']} sign changes)" if found["changes"] > 1 else ""
    return found["status"] + (f" at {found['length']:.0f}" if found["length"] else "") + ragged


def program_of(kind: str, model, state, tokens, length: int, b: int) -> tuple[Any, tuple, int]:
    """(jitted function, its arguments, tokens per call) of the train step or the prefill."""
    if kind == "train":
        step = make_train_step(model, RandomTokens(), make_optimizer(OPTIMIZER, 1000))
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
        variables = {"params": state.params}

        @jax.jit
        def fill(variables: dict, prompt: jax.Array) -> Any:  # prompt [b, L - 1]
            def feed(cache: Any, column: jax.Array) -> tuple[Any, None]:  # column [b]
                return model.apply(variables, cache, column, method=model.decode_step)[1], None

            return jax.lax.scan(feed, model.init_cache(b, length + n), prompt.T)[0]

        prompt, last = jnp.asarray(tokens[:, : length - 1]), jnp.asarray(tokens[:, length - 1])
        decode = lambda variables, last, cache: generate(
            model, variables, last[:, None], n, cache=cache
        )  # [b, 1 + N]
        if family in ATTENTION:  # the kernels' decoding programs may be one and the same
            shapes = jax.eval_shape(fill, variables, prompt)
            program = (length, str(jax.make_jaxpr(decode)(variables, last, shapes)))
        else:
            program = (length, family)
        if program in done:
            return done[program]
        filled = jax.block_until_ready(fill(variables, prompt))
        result = bench.profile(decode, variables, last, filled, amount=b * n, **options)
        cache_bytes = int(sum(leaf.nbytes for leaf in jax.tree.leaves(filled)))
        extra = {"ms_per_token": 1e3 * result["seconds"]["median"] / n, "cache_bytes": cache_bytes}
        extra["program_of"] = family  # whose measurement this is
    memory = result["memory"]
    measured = {
        **{f"seconds_{k}": v for k, v in result["seconds"].items()},
        "tokens_per_second": result["per_second"]["median"], **extra, "flops": result["flops"],
        "xla_flops_loop_body_once": result["xla_cost"]["flops"],  # a record only: loops once
        "uncounted": ";".join(result["uncounted"]), "utilisation": result["utilisation"],
        "compile_s": result["compile_s"], "peak_estimate_bytes": memory.get("peak_estimate"),
        "temp_bytes": memory.get("temp"),
        "device_peak_bytes": result["device_memory"].get("peak_bytes_in_use"),
    }  # fmt: skip
    if kind == "generate":
        done[program] = measured
    return measured


def judge(rows: list[dict], config: Config) -> dict[str, Any]:
    """Crossovers of every recurrence against every attention kernel and against the fastest
    one at each length, and the verdict on the claim's two parts."""
    lengths = list(config.lengths)
    measured = {r["family"] for r in rows}
    recurrent = [f for f in config.families if f in RECURRENT and f in measured]
    attention = [f for f in config.families if f in ATTENTION and f in measured]
    crossovers: dict[str, Any] = {}
    for part, field in (("train", "seconds_median"), ("generate", "ms_per_token")):
        times = {f: series(rows, f, part, field, lengths) for f in recurrent + attention}
        columns = [times[a] for a in attention] or [[None] * len(lengths)]
        fastest = [min(filter(None, ts), default=None) for ts in zip(*columns, strict=True)]
        crossovers[part] = {
            r: {
                "best attention": crossover(lengths, times[r], fastest),
                **{a: crossover(lengths, times[r], times[a]) for a in attention},
            }
            for r in recurrent
        }
    generation: dict[str, dict[str, Any]] = {}
    for family in recurrent + attention:
        found = {k: series(rows, family, "generate", k, lengths) for k in GROWTH_OF}
        if any(None in values for values in found.values()):
            generation[family] = {"ok": False, "why": "a generation measurement failed"}
            continue
        growth = {f"{k} longest / shortest": v[-1] / v[0] for k, v in found.items()}
        if family in RECURRENT:  # one program at every length: time differences are noise
            ok = len(set(found["cache_bytes"])) == len(set(found["flops"])) == 1
        else:
            ok = all(a < b for a, b in pairwise(found["cache_bytes"]))
            ok = ok and found["ms_per_token"][-1] / found["ms_per_token"][0] >= GROWTH_RATIO
        generation[family] = {"ok": ok, **growth}
    crossing = {  # attention faster at the shortest length, recurrence at the longest
        r: (c["best attention"]["status"], c["best attention"]["faster_at_shortest"])
        == ("crosses", "attention")
        for r, c in crossovers["train"].items()
    }
    holds = {
        "train": bool(crossing) and bool(attention) and all(crossing.values()),
        "generate": bool(generation) and all(g["ok"] for g in generation.values()),
    }
    return {"crossovers": crossovers, "crosses": crossing, "generation": generation, "holds": holds}


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    config, verdict, seconds = results["config"], results["verdict"], results["total_wall_time_s"]
    runtime = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    word = lambda ok: "holds" if ok else "fails"
    crossings = verdict["crossovers"]["train"].items()
    train = ", ".join(f"{r} {describe(c['best attention'])}" for r, c in crossings)
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
        f"attention kernel: {train}. Generation ms/token at L = {shortest} -> {longest}: {gen}. |"
    )


def resolve(config: Config) -> Config:
    """The mode's defaults (smoke, quick, full) where the flags left them open."""
    if config.smoke:
        families = SMOKE_FAMILIES if config.families == DEFAULT_FAMILIES else config.families
        config = dataclasses.replace(
            config, families=families, lengths=config.lengths or (16, 32), batch_size=8,
            new_tokens=4, repeats=config.repeats or 1, min_sample_seconds=0.0,
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
    return dataclasses.replace(
        config,
        lengths=tuple(sorted(config.lengths)),
        repeats=config.repeats or (3 if config.quick else 5),
        min_sample_seconds=(0.05 if config.quick else 0.5) if sample is None else sample,
    )


def main(argv: list[str] | None = None) -> dict:
    config = resolve(tyro.cli(Config, args=argv))
    started = time.perf_counter()
    out = experiment_dir("recurrence_vs_attention", config.run_dir)
    preset = "smoke" if config.smoke else config.preset
    if config.smoke:  # a small product: seconds matter more than the peak's precision here
        measured = bench.matmul_peak(256, config.precision, repeats=2)["median"]
        peak = {"flops_per_second": measured, "source": f"measured {config.precision} 256^3 matmul"}
    else:
        peak = bench.peak_flops(config.precision)
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
        built[family] = (model, init_state(model, tx, jnp.asarray(tokens[:1, :8]), config.seed))
    # length by length, every family within minutes of the others: the machine's speed drifts
    # (1.2x between two whole runs on a quiet CPU), and this shifts a length's families together
    # instead of one family against another, which would move the crossovers
    for length in config.lengths:
        for family, (model, state) in built.items():
            for kind in KINDS:
                row, began = {"family": family, "kind": kind, "length": length}, time.perf_counter()
                row |= models[family]
                try:
                    row |= measure(kind, family, model, state, tokens, length, config, peak, done)
                    row["error"] = None
                except Exception as error:  # noqa: BLE001 (out of memory and the like: go on)
                    row["error"] = f"{type(error).__name__}: {str(error)[:400]}"
                rows.append(row)
                shown = row["error"] or f"{1e3 * row['seconds_median']:.3g} ms"
                took = time.perf_counter() - began
                print(f"{family} {kind} L={length}: {shown} ({took:.1f} s)", flush=True)
    verdict = judge(rows, config)
    table = table_rows(rows, config.families, config.lengths)
    results = {
        "claim": CLAIM,
 "holds": verdict["holds"], "config": dataclasses.asdict(config),
        "preset": preset, "versions": bench.versions(), "peak": peak, "models": models,
        "skipped": skipped, "verdict": verdict, "table": table, "rows": rows,
        "total_wall_time_s": time.perf_counter() - started,
    }  # fmt: skip
    results["summary"] = summary_line(results)
    write_results(out, results)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    plot(
        rows, config.families, list(config.lengths), ATTENTION, config.new_tokens,
        verdict["crossovers"], os.path.join(out, "recurrence_vs_attention.png"),
    )  # fmt: skip
    print(format_table(results["table"]))
    print("compile s, peak MiB (XLA's estimate) and util % are the train step's")
    for part, found in verdict["crossovers"].items():
        for family, pairs in found.items():
            text = ", ".join(f"{a} {describe(c)}" for a, c in pairs.items())
            print(f"crossover ({part}) {family}: {text}")
    print(f"skipped: {skipped or 'none'}; generation: {verdict['generation']}")
    print(f"claim: training {verdict['holds']['train']}, generation {verdict['holds']['generate']}")
    print(f"wall {results['total_wall_time_s']:.0f} s; results in {out}\n{results['summary']}")
    return results


if __name__ == "__main__":
    main()
