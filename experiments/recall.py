"""What each sequence family can recall for the state it keeps: multi-query associative recall,
selective copying and induction heads, every family trained by the one shared train step.

Claims (the papers' findings, each judged here):
1. MQAR (Arora et al. 2023, "Zoology"): attention solves multi-query associative recall at
   every model width; a recurrence needs a state that grows with the number of key-value pairs
   (at a fixed width its recall falls as the pairs grow). Judged: the gpt's accuracy >= SOLVED
   in every MQAR run; every recurrence's recall above chance, (acc - 1/N) / (1 - 1/N), falls by
   >= DROP from the fewest to the most pairs at the fixed width.
2. Selective copying (Gu & Dao 2023, "Mamba", Table 1): a time-invariant recurrence fails (S4
   without gating 18.3%), the selective one solves it (Mamba 99.8%). Our time-invariant family
   is the LRU (its recurrence does not depend on the input); selective are the Mamba-style model,
   minGRU (input-dependent gate) and the LSTM / GRU (gates). Judged: mamba >= SOLVED, lru <= FAILED.
3. Induction heads (Olsson et al. 2022; Mamba, Table 2), trained at one length, tested at longer
   ones: Mamba extrapolates far beyond its training length, attention with rotary positions fails
   beyond about twice it. Judged: both solve the training length (>= SOLVED), mamba stays >= SOLVED
   at every test length, the gpt falls <= FAILED at every test length beyond twice it.

Every family is families.build's byte-level LM at the same width and depth (2 layers), so the
state differs by family: a recurrence's is init_cache's leaves, the gpt's the key/value cache for
the sequence (2 x layers x length x width x 4 bytes). One optimizer for all (Adam, linear warm-up,
cosine decay, clipping at 1); the LRU's recurrence at `lru_recurrence_lr_scale` x lr as its
reference trains it (experiments/linear_recurrences.py). One gpt kernel: all compute one function.

Budget (--quick, the default): attention does not form MQAR's content-based induction circuit
on a 2-core CPU budget. Measured with 2 pairs (chance 1/2): our 2-layer d-64 gpt stays at 0.47-0.55
for 1000-4000 steps of batch 32-128 (lr 1e-3 / 3e-3, 1-8 heads, rotary or learned positions, 2 or
4 layers, vocabulary 12-256, with or without the random filler), an independent minimal
transformer likewise; only batch 256 broke the plateau (attention-only: 1.0 by step 400; with
MLPs 0.70 at 800; ours 0.58 at 600). So --quick runs the smallest instances (2 and 4 pairs) and
reports what attention reaches there; --full runs the sweep.

Command: python -m experiments.recall            (quick, ~10 min on a 2-core CPU; --smoke: seconds)
         python -m experiments.recall --full     (widths 32-256, up to 64 pairs, lengths to 64x
                                                  the training length: sized for one GPU)
"""

import dataclasses
import os
from typing import Any, Literal

import jax
import numpy as np

from arch.errors import ConfigError
from arch.linear_mixers import LRU_RECURRENCE_LR_FACTOR
from experiments.common.families import ATTENTION, build, lr_scale
from experiments.common.scaffold import Experiment, ExperimentConfig, runtime_text, verdict_text
from train.loop import RunConfig, evaluate, fit
from train.optim import OptimConfig
from train.report import figure, format_table, save_figure
from train.step import make_eval_step
from train.tasks import TASKS

CLAIM = (
    "Attention solves MQAR at every width while a recurrence needs a state that grows with the "
    "pairs (Zoology); a time-invariant recurrence fails selective copying and a selective one "
    "solves it (Mamba Table 1); Mamba extrapolates induction heads far beyond its training "
    "length, rotary attention not beyond about twice it (Mamba Table 2)."
)
Family = Literal["gpt-einsum", "gpt-xla", "gpt-blockwise", "elman", "lstm", "gru", "mingru",
                 "lru", "mamba"]  # fmt: skip
FAMILIES: tuple[Family, ...] = ("gpt-einsum", "elman", "lstm", "gru", "mingru", "lru", "mamba")
KIND = {"elman": "ungated nonlinear", "lru": "time-invariant", "mamba": "selective"}
KIND.update({f: "selective (gated)" for f in ("lstm", "gru", "mingru")})
SOLVED, FAILED, DROP = 0.9, 0.5, 0.1
PARTS = ("attention solves MQAR", "recurrent MQAR recall falls with the pairs",
         "selective copying", "induction extrapolation")  # fmt: skip


def kind(family: str) -> str:
    return "attention" if family in ATTENTION else KIND[family]


@dataclasses.dataclass(frozen=True)
class Training:
    """One task's training: train steps, batch and peak learning rate of every family."""

    steps: int
    batch_size: int
    lr: float


@dataclasses.dataclass(frozen=True)
class MQAR(Training):
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    vocab_size: int = 64
    """Keys 1 .. v/2 - 1, values v/2 .. v - 1 (Zoology: 8192)."""
    length: int = 16
    pairs: int = 2
    """N of the width sweep."""
    widths: tuple[int, ...] = (32, 64)
    pair_sweep: tuple[int, ...] = (2, 4)
    """N of the pairs sweep, at Config.width."""
    random_fill: bool = True


@dataclasses.dataclass(frozen=True)
class Copying(Training):
    steps: int = 500
    batch_size: int = 32
    lr: float = 3e-3
    region: int = 32
    """R, the region the tokens are scattered in (Mamba: 4096)."""
    copy_length: int = 8
    """N, the tokens to copy (Mamba: 16)."""
    num_symbols: int = 16


@dataclasses.dataclass(frozen=True)
class Induction(Training):
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    length: int = 16
    """The training length (Mamba: 256)."""
    test_factors: tuple[int, ...] = (1, 2, 4)
    """Test lengths as multiples of the training length."""
    num_symbols: int = 16


FULL = {
    "width": 128,
    "num_eval": 1024,
    "mqar": MQAR(steps=20_000, batch_size=128, lr=1e-3, vocab_size=8192, length=256, pairs=16,
                 widths=(32, 64, 128, 256), pair_sweep=(4, 8, 16, 32, 64)),
    "copying": Copying(steps=20_000, batch_size=64, lr=1e-3, region=1024, copy_length=16),
    "induction": Induction(steps=20_000, batch_size=64, lr=1e-3, length=256,
                           test_factors=(1, 2, 4, 8, 16, 64)),
}  # fmt: skip
"""--full: the fields it sets where the command line left their defaults."""


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    families: tuple[Family, ...] = FAMILIES
    full: bool = False
    """The GPU preset (FULL) in place of the quick CPU settings, for fields left at default."""
    width: int = 64
    """Every family's width for selective copying, induction and the MQAR pairs sweep."""
    layers: int = 2
    head_width: int = 16
    """The gpt's heads: max(1, width // head_width). families.build's heads of about 64 give one
    head at width 64; measured here, four heads of 16 formed the induction circuit by step 200,
    one head of 64 only at ~800 (induction, length 16, lr 3e-3)."""
    seed: int = 0
    num_eval: int = 256
    """Sequences per evaluation split (and per induction test length)."""
    warmup_steps: int = 100
    clip_norm: float | None = 1.0
    lru_recurrence_lr_scale: float = LRU_RECURRENCE_LR_FACTOR
    eval_tokens: int = 2**17
    """Tokens per evaluation batch at long induction lengths (the gpt's scores grow as L^2)."""
    mqar: MQAR = MQAR()
    copying: Copying = Copying()
    induction: Induction = Induction()

    def smoke_settings(self) -> dict:
        """Two families, tiny runs; every task at vocabulary 16, length 16 and batch 8, so that
        a family's three train steps are one program (compiled once, then cached)."""
        return dict(
            families=("gpt-einsum", "lstm"), width=8, num_eval=16, warmup_steps=1,
            mqar=dataclasses.replace(self.mqar, steps=2, batch_size=8, vocab_size=16, length=16,
                                     widths=(8,), pairs=2, pair_sweep=(2, 4)),
            copying=dataclasses.replace(self.copying, steps=2, batch_size=8, region=12,
                                        copy_length=4, num_symbols=14),
            induction=dataclasses.replace(self.induction, steps=2, batch_size=8, length=16,
                                          test_factors=(1, 2), num_symbols=15),
        )  # fmt: skip

    def resolved(self) -> "Config":
        config = super().resolved()
        if not config.full or config.smoke:
            return config
        default = Config()
        changes = {}
        for name, value in FULL.items():
            if not isinstance(value, Training):
                changes[name] = value if getattr(config, name) == getattr(default, name) else None
                continue
            given, base = getattr(config, name), getattr(default, name)
            kept = {f.name: getattr(given, f.name) for f in dataclasses.fields(given)
                    if getattr(given, f.name) != getattr(base, f.name)}  # fmt: skip
            changes[name] = dataclasses.replace(value, **kept)
        if config.families == FAMILIES:  # a kernel whose memory the long test lengths allow
            changes["families"] = ("gpt-xla",) + FAMILIES[1:]
        return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})

    def check(self) -> None:
        m = self.mqar
        if 4 * max((m.pairs, *m.pair_sweep)) > m.length:
            raise ConfigError(f"--mqar.length {m.length} must be >= 4 x the most pairs")
        if not m.widths or not m.pair_sweep or not self.induction.test_factors:
            raise ConfigError("--mqar.widths, --mqar.pair-sweep, --induction.test-factors: >= 1")
        if len(set(self.families)) != len(self.families):
            raise ConfigError(f"--families names a family twice: {list(self.families)}")


def state_bytes(model: Any, length: int) -> int:
    """Bytes of one sequence's decoding state after `length` tokens: the leaves of
    `model.init_cache(1, length)` (shapes only, nothing computed) but the gpt's position counter:
    a recurrence's state (constant in length), or the gpt's keys and values for every position."""
    cache = jax.eval_shape(lambda: model.init_cache(1, length))
    return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(cache) if leaf.ndim))


def recall_above_chance(accuracy: float, pairs: int) -> float:
    """MQAR accuracy rescaled so that guessing among the context's N values is 0, all right 1."""
    return (accuracy - 1 / pairs) / (1 - 1 / pairs)


def optimizer(family: str, training: Training, config: Config) -> OptimConfig:
    return OptimConfig(
        lr=training.lr, schedule="cosine", clip_norm=config.clip_norm,
        lr_scale=lr_scale(family, config.lru_recurrence_lr_scale),
        warmup_steps=min(config.warmup_steps, training.steps // 2),
    )  # fmt: skip


def train(family: str, width: int, task: Any, training: Training, config: Config, out: str,
          max_len: int) -> tuple[Any, dict]:  # fmt: skip
    """One family trained on `task`: (the fit's result, its row: test metrics, size, times)."""
    run = RunConfig.quiet(training.steps, 1, seed=config.seed, run_dir=out,
                          eval_batch_size=min(config.num_eval, 256))  # fmt: skip
    model = build(family, width, config.layers, max_len=max_len)
    if family in ATTENTION:
        model = model.clone(num_heads=max(1, width // config.head_width))
    result = fit(model, task, optimizer(family, training, config), run)
    test = result.summary["final"]["test"]
    return result, {
        "family": family, "kind": kind(family), "width": width,
        "parameters": result.summary["parameters"], "accuracy": test["accuracy"],
        "sequence_accuracy": test["sequence_accuracy"],
        "train_s": result.summary["train_time"], "compile_s": result.summary["compile_time"],
    }  # fmt: skip


def run_mqar(config: Config, out: str) -> list[dict]:
    """The width sweep at mqar.pairs and the pairs sweep at config.width, each (width, pairs)
    trained once; rows with the state's bytes beside the accuracy."""
    m, rows, done = config.mqar, [], {}
    points = [(w, m.pairs, "width") for w in m.widths]
    points += [(config.width, n, "pairs") for n in m.pair_sweep]
    for family in config.families:
        for width, pairs, sweep in points:
            if (family, width, pairs) in done:
                rows.append({**done[family, width, pairs], "sweep": sweep})
                continue
            task = TASKS["mqar"](
                batch_size=m.batch_size, seed=config.seed, vocab_size=m.vocab_size,
                num_pairs=pairs, length=m.length, random_fill=m.random_fill,
                num_eval=config.num_eval,
            )  # fmt: skip
            where = os.path.join(out, "mqar", f"{family}-d{width}-n{pairs}")
            result, row = train(family, width, task, m, config, where, m.length)
            row.update(pairs=pairs, state_bytes=state_bytes(result.model, m.length),
                       recall=recall_above_chance(row["accuracy"], pairs))  # fmt: skip
            done[family, width, pairs] = row
            rows.append({**row, "sweep": sweep})
    return rows


def run_copying(config: Config, out: str) -> list[dict]:
    c, rows = config.copying, []
    task = TASKS["selective_copy"](
        batch_size=c.batch_size, seed=config.seed, num_symbols=c.num_symbols,
        copy_length=c.copy_length, length=c.region, num_eval=config.num_eval,
    )  # fmt: skip
    for family in config.families:
        where = os.path.join(out, "selective_copy", family)
        rows.append(
            train(family, config.width, task, c, config, where, c.region + c.copy_length)[1]
        )
    return rows


def induction_task(config: Config, length: int) -> Any:
    i = config.induction
    return TASKS["induction"](batch_size=i.batch_size, seed=config.seed, length=length,
                              num_symbols=i.num_symbols, num_eval=config.num_eval)  # fmt: skip


def run_induction(config: Config, out: str) -> list[dict]:
    """Train at induction.length; evaluate the trained state on the test split of the task
    instance of each test length (a gpt is built with max_len the longest)."""
    i, rows = config.induction, []
    lengths = [i.length * f for f in i.test_factors]
    for family in config.families:
        where = os.path.join(out, "induction", family)
        result, row = train(family, config.width, induction_task(config, i.length), i, config,
                            where, max(lengths + [i.length]))  # fmt: skip
        accuracy = []
        for length in lengths:
            task = induction_task(config, length)
            batch = max(1, min(config.num_eval, config.eval_tokens // length))
            metrics = evaluate(make_eval_step(result.model, task), result.state, task, "test",
                               batch)  # fmt: skip
            accuracy.append(metrics["accuracy"])
        rows.append({**row, "train_length": i.length, "lengths": lengths, "accuracies": accuracy})
    return rows


def verdicts(mqar: list[dict], copying: list[dict], induction: list[dict],
             train_length: int) -> tuple[dict, dict]:  # fmt: skip
    """(holds per part of the claim, the reason for each); a part whose families were not run
    does not hold."""
    holds, reasons = {}, {}
    gpt = [r for r in mqar if r["kind"] == "attention"]
    worst = min(gpt, key=lambda r: r["accuracy"]) if gpt else None
    holds[PARTS[0]] = bool(gpt) and worst["accuracy"] >= SOLVED
    reasons[PARTS[0]] = "no attention family run" if not gpt else (
        f"the gpt's worst MQAR accuracy {worst['accuracy']:.3f} (width {worst['width']}, "
        f"{worst['pairs']} pairs; chance 1/{worst['pairs']})"
        + ("" if holds[PARTS[0]] else f" < {SOLVED}: the content-based induction circuit did "
           "not form in the step budget (Zoology trains ~100k steps)")
    )  # fmt: skip
    sweep = [r for r in mqar if r["sweep"] == "pairs" and r["kind"] != "attention"]
    falls = {}
    for family in dict.fromkeys(r["family"] for r in sweep):
        ordered = sorted((r for r in sweep if r["family"] == family), key=lambda r: r["pairs"])
        falls[family] = ordered[0]["recall"] - ordered[-1]["recall"]
    holds[PARTS[1]] = bool(falls) and min(falls.values()) >= DROP
    reasons[PARTS[1]] = "no recurrence run" if not falls else (
        "recall above chance, fewest minus most pairs: "
        + ", ".join(f"{f} {d:+.2f}" for f, d in falls.items())
        + ("" if holds[PARTS[1]] else f" (needs >= {DROP} each: a recurrence that does not "
           "learn even the fewest pairs in the budget shows no fall)")
    )  # fmt: skip
    acc = {r["family"]: r["accuracy"] for r in copying}
    holds[PARTS[2]] = acc.get("mamba", 0.0) >= SOLVED and acc.get("lru", 1.0) <= FAILED
    reasons[PARTS[2]] = (
        f"mamba {acc.get('mamba', float('nan')):.3f} (needs >= {SOLVED}), lru "
        f"{acc.get('lru', float('nan')):.3f} (needs <= {FAILED})"
    )
    if not holds[PARTS[2]] and acc.get("mamba", 0.0) < SOLVED:
        reasons[PARTS[2]] += ": the selective model did not learn in the step budget"
    elif not holds[PARTS[2]] and "lru" in acc:
        reasons[PARTS[2]] += ": the short region lets a time-invariant state hold it all"
    curve = {r["family"]: dict(zip(r["lengths"], r["accuracies"], strict=True)) for r in induction}
    mamba = curve.get("mamba", {})
    gpt_curve = next((c for f, c in curve.items() if f in ATTENTION), {})
    beyond = [a for n, a in gpt_curve.items() if n > 2 * train_length]
    learned = min(mamba.get(train_length, 0.0), gpt_curve.get(train_length, 0.0)) >= SOLVED
    holds[PARTS[3]] = (
        learned and bool(beyond) and min(mamba.values()) >= SOLVED and max(beyond) <= FAILED
    )  # fmt: skip
    text = lambda c: ", ".join(f"{n}: {a:.2f}" for n, a in c.items()) or "not run"
    reasons[PARTS[3]] = f"mamba {text(mamba)}; gpt {text(gpt_curve)}"
    if not learned:
        reasons[PARTS[3]] += f" (one did not reach {SOLVED} at the training length: budget)"
    return holds, reasons


def study(config: Config, out: str) -> dict:
    mqar, copying = run_mqar(config, out), run_copying(config, out)
    induction = run_induction(config, out)
    holds, reasons = verdicts(mqar, copying, induction, config.induction.length)
    mode = "smoke" if config.smoke else "full" if config.full else "quick"
    return {"holds": holds, "reasons": reasons, "mode": mode, "mqar": mqar,
            "selective_copying": copying, "induction": induction,
            "criteria": {"solved": SOLVED, "failed": FAILED, "drop": DROP}}  # fmt: skip


def plot(results: dict, path: str) -> str:
    fig, (left, middle, right) = figure(1, 3, figsize=(15, 4.5))
    colors = {}
    for family in dict.fromkeys(r["family"] for r in results["mqar"]):
        for sweep, style in (("width", "o-"), ("pairs", "s--")):
            rows = [r for r in results["mqar"] if r["family"] == family and r["sweep"] == sweep]
            x, y = [r["state_bytes"] for r in rows], [r["accuracy"] for r in rows]
            line = left.plot(
                x,
                y,
                style,
                color=colors.get(family),
                mfc="none" if sweep == "pairs" else None,
                label=family if sweep == "width" else None,
            )
            colors[family] = line[0].get_color()
            for r in rows if sweep == "pairs" else ():
                left.annotate(f"N={r['pairs']}", (r["state_bytes"], r["accuracy"]), fontsize=7)
    left.set(xscale="log", xlabel="state / KV-cache bytes per sequence", ylabel="test accuracy",
             title="MQAR (solid: widths; dashed: pairs)", ylim=(0, 1.05))  # fmt: skip
    left.legend(fontsize=7)
    copying = results["selective_copying"]
    middle.bar([r["family"] for r in copying], [r["accuracy"] for r in copying],
               color=[colors.get(r["family"], "gray") for r in copying])  # fmt: skip
    middle.set(ylabel="test accuracy", title="Selective copying", ylim=(0, 1.05))
    middle.tick_params(axis="x", rotation=45)
    for r in results["induction"]:
        right.plot(r["lengths"], r["accuracies"], "o-", color=colors.get(r["family"]),
                   label=r["family"])  # fmt: skip
    if results["induction"]:
        right.axvline(results["induction"][0]["train_length"], color="gray", ls=":")
    right.set_xscale("log", base=2)
    right.set(xlabel="test length (dotted: training length)", ylabel="test accuracy",
              title="Induction heads", ylim=(0, 1.05))  # fmt: skip
    right.legend(fontsize=7)
    return save_figure(fig, path)


def tables(results: dict) -> list[str]:
    mqar = [{"family": r["family"], "sweep": r["sweep"], "width": r["width"],
             "pairs": r["pairs"], "state bytes": r["state_bytes"], "accuracy": r["accuracy"],
             "recall above chance": r["recall"], "train s": r["train_s"]}
            for r in results["mqar"]]  # fmt: skip
    copying = [{"family": r["family"], "kind": r["kind"], "accuracy": r["accuracy"],
                "sequence accuracy": r["sequence_accuracy"], "train s": r["train_s"]}
               for r in results["selective_copying"]]  # fmt: skip
    induction = [{"family": r["family"], **{f"L={n}": a for n, a in
                  zip(r["lengths"], r["accuracies"], strict=True)}, "train s": r["train_s"]}
                 for r in results["induction"]]  # fmt: skip
    return [format_table(t) for t in (mqar, copying, induction)]


def report(results: dict, config: Config, out: str) -> None:
    plot(results, os.path.join(out, "recall.png"))
    names = ("MQAR", "Selective copying", "Induction heads (trained at "
             f"{config.induction.length})")  # fmt: skip
    for name, table in zip(names, tables(results), strict=True):
        print(f"{name}:\n{table}\n")
    for part, held in results["holds"].items():
        print(f"{part}: {verdict_text(held)} ({results['reasons'][part]})")


def summary_line(results: dict) -> str:
    """A row for README.md's table of experiments: command, claim, result."""
    holds, c = results["holds"], results["config"]
    best = lambda rows, f: max((r["accuracy"] for r in rows if r["family"] == f), default=np.nan)
    gpt = next((f for f in c["families"] if f in ATTENTION), "gpt")
    others = [best(results["mqar"], f) for f in c["families"] if f != gpt]
    copy = ", ".join(f"{r['family']} {r['accuracy']:.2f}" for r in results["selective_copying"])
    ind = "; ".join(f"{r['family']} " + "/".join(f"{a:.2f}" for a in r["accuracies"])
                    for r in results["induction"])  # fmt: skip
    return (
        f"| `python -m experiments.recall{' --full' if c['full'] else ''}` "
        f"(~{runtime_text(results)}) | {CLAIM} | **{verdict_text(holds)}.** MQAR "
        f"({c['mqar']['steps']} steps): gpt best {best(results['mqar'], gpt):.2f}, best "
        f"recurrence {max(others or [np.nan]):.2f}; "
        f"selective copying: {copy}; induction at "
        f"{'/'.join(str(n) for n in results['induction'][0]['lengths'])}: {ind}. |"
    )


EXPERIMENT = Experiment("recall", CLAIM, Config, study, report, summary_line)
main = EXPERIMENT.main_of(__name__)
