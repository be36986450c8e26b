"""Quality per unit of compute for the flagship study (experiments/recurrence_vs_attention.py):
the loss each family reaches for a budget of counted training FLOPs and for a budget of
seconds, at each sequence length, beside how fast its train step is.

The speed half of the study measures each family's train step (batch b, length L): its FLOPs
counted from the jaxpr (train/measure/flops.py) and its median seconds, timed round-robin with
the others. Here every family trains, by the same shared train step and at the same batch and
length, on a language of known entropy (or real text), and its validation bits per character
is read off its learning curve where it has spent

- the FLOP budget F = `quality_steps` x the GPT's counted FLOPs per step, at step F / (its own
  FLOPs per step), and
- the time budget S = `quality_steps` x the fastest attention kernel's seconds per step, at
  step S / (its own seconds per step),

both linearly interpolated between its `EVALUATIONS` evaluations. Every GPT kernel computes the
same function, so one GPT (the einsum kernel) trains for quality and the fastest kernel's step
time prices it. A run is capped at `MOST_STEPS_FACTOR` x quality_steps steps; a budget beyond a
family's run is "not reached". Verdict per recurrence and length: "faster" or "slower" (its step
against the fastest attention kernel's), and "as good" when its bits at the FLOP budget are
within `AS_GOOD_BITS` of the GPT's (or better), "worse" otherwise.
"""

import dataclasses
import math
import os
from typing import Any

import numpy as np

from experiments.common.crossover import series
from experiments.common.families import ATTENTION, RECURRENT, VOCAB, build, lr_scale
from train.loop import RunConfig, fit
from train.optim import OptimConfig
from train.tasks import TASKS, MarkovLanguage

AS_GOOD_BITS = 0.02
"""Bits per character within which a recurrence is as good as attention at equal FLOPs."""
MOST_STEPS_FACTOR = 4
FIELDS = ("flops", "seconds_median")  # of a speed row: a train step's counted FLOPs, seconds
EVALUATIONS = 16
QUALITY_FAMILY = "gpt-einsum"  # every kernel computes the same function: one of them trains
MARKOV = {"vocab_size": 16, "order": 2, "concentration": 0.2}
"""The known-entropy language of the quality runs: 16 symbols, each next one drawn from one of
256 Dirichlet(0.2) distributions chosen by the two before it; entropy rate 2.34 bits per
character (a table a 1M-parameter model can learn within a few hundred steps, and a context of
two symbols to keep). Its sequences are read by the presets' byte-vocabulary models
(`ByteMarkov`), so they are the speed half's models, parameter for parameter."""


@dataclasses.dataclass(frozen=True)
class ByteMarkov(MarkovLanguage):
    """The Markov language read and predicted by a model of `model_vocab` tokens (its symbols
    are the first vocab_size of them): the flagship's byte-level models unchanged."""

    model_vocab: int = VOCAB

    @property
    def num_outputs(self) -> int:
        return self.model_vocab

    @property
    def model_fields(self) -> dict[str, int]:
        return {"num_outputs": self.model_vocab, "vocab_size": self.model_vocab}

    def output_shape(self, batch: dict) -> tuple[int, ...]:
        return (*batch["targets"].shape, self.model_vocab)


def optimizer(family: str, lr: float, warmup: int) -> OptimConfig:
    """AdamW at a constant lr after a linear warm-up, so that every point of a learning curve
    is a fair stopping point; the LRU's recurrence at its paper's 0.5 x lr."""
    return OptimConfig(
        name="adamw", lr=lr, warmup_steps=warmup, weight_decay=0.01, clip_norm=1.0,
        lr_scale=lr_scale(family),
    )  # fmt: skip


def quality_task(name: str, length: int, batch_size: int, seed: int, data_dir: str = ""):
    """The task the quality runs train on: the known-entropy Markov language, or Shakespeare's
    bytes (installed data)."""
    if name == "markov":
        return ByteMarkov(batch_size=batch_size, seed=seed, length=length, **MARKOV)
    fields = {"data_dir": data_dir} if data_dir else {}
    return TASKS[name](batch_size=batch_size, seed=seed, length=length, **fields)


def at_step(curve: list[tuple[int, float]], step: float) -> float | None:
    """The curve's value at `step`, linear between its points (None: outside them)."""
    steps, values = zip(*curve, strict=True)
    if not steps[0] <= step <= steps[-1]:
        return None
    return float(np.interp(step, steps, values))


def speed_of(rows: list[dict], family: str, length: int) -> tuple[float, float] | None:
    """(FLOPs, seconds) of one train step from the speed half's rows (None: not measured)."""
    flops, seconds = (series(rows, family, "train", f, [length])[0] for f in FIELDS)
    return None if flops is None or seconds is None else (flops, seconds)


def budgets(rows: list[dict], length: int, steps: int) -> dict[str, Any] | None:
    """The FLOP budget, the time budget and the fastest attention kernel at this length."""
    attention = {f: speed_of(rows, f, length) for f in ATTENTION}
    attention = {f: s for f, s in attention.items() if s is not None}
    if QUALITY_FAMILY not in attention:
        return None
    fastest = min(attention, key=lambda f: attention[f][1])
    return {
        "flops": steps * attention[QUALITY_FAMILY][0],
        "seconds": steps * attention[fastest][1],
        "fastest_attention": fastest,
        "attention_seconds_per_step": attention[fastest][1],
    }


def train_family(family: str, model_facts: dict, task, steps: int, config: Any, out: str):
    """One quality run: (its validation bits-per-character curve, test bits at the end)."""
    model = build(
        family, model_facts["width"], model_facts["layers"], config.precision, task.length
    )
    run = RunConfig.quiet(
        steps, min(steps, EVALUATIONS), seed=config.seed, run_dir=os.path.join(out, family)
    )
    warmup = min(config.quality_warmup, steps // 4)
    result = fit(model, task, optimizer(family, config.quality_lr, warmup), run)
    curve = result.curve("bits_per_char")
    return curve, result.summary["final"]["test"]["bits_per_char"]


def study_quality(
    rows: list[dict], models: dict, config: Any, out: str, log=print
) -> list[dict[str, Any]]:
    """Per length of `config.quality_lengths` and family: its step's FLOPs and seconds, the
    steps and bits per character at each budget, and (recurrences) the verdict."""
    found = []
    families = [f for f in config.families if f in RECURRENT] + [QUALITY_FAMILY]
    for length in config.quality_lengths:
        budget = budgets(rows, length, config.quality_steps)
        if budget is None:
            log(f"quality L={length}: no GPT train step measured at this length, skipped")
            continue
        task = quality_task(
            config.quality_task, length, config.batch_size, config.seed, config.quality_data_dir
        )
        for family in families:
            speed = speed_of(rows, family, length)
            if speed is None or family not in models:
                continue
            flops, seconds = speed
            if family == QUALITY_FAMILY:
                seconds = budget["attention_seconds_per_step"]
            at_flops, at_seconds = budget["flops"] / flops, budget["seconds"] / seconds
            steps = min(
                math.ceil(max(at_flops, at_seconds)), MOST_STEPS_FACTOR * config.quality_steps
            )
            where = os.path.join(out, "quality", f"L{length}")
            curve, test_bits = train_family(family, models[family], task, steps, config, where)
            row = {
                "family": family, "length": length, "flops_per_step": flops,
                "seconds_per_step": seconds, "steps": steps, "budget_flops": budget["flops"],
                "budget_seconds": budget["seconds"], "steps_at_flops": at_flops,
                "steps_at_seconds": at_seconds, "bits_at_flops": at_step(curve, at_flops),
                "bits_at_seconds": at_step(curve, at_seconds), "test_bits_final": test_bits,
                "curve": curve, "fastest_attention": budget["fastest_attention"],
            }  # fmt: skip
            found.append(row)
            log(
                f"quality {family} L={length}: {steps} steps, bits/char {row['bits_at_flops']} "
                f"at the FLOP budget, {row['bits_at_seconds']} at the time budget"
            )
    return with_verdicts(found)


def with_verdicts(found: list[dict]) -> list[dict]:
    """Each recurrence's row gains its verdict against the GPT at the same length."""
    attention = {r["length"]: r for r in found if r["family"] == QUALITY_FAMILY}
    for row in found:
        reference = attention.get(row["length"])
        if row["family"] == QUALITY_FAMILY or reference is None:
            row["verdict"] = None
            continue
        row["verdict"] = verdict(row, reference)
    return found


def verdict(row: dict, attention: dict) -> str:
    """ "faster" / "slower" (the step against the fastest attention kernel's), then whether its
    bits/char at the FLOP budget are as good as the GPT's (within AS_GOOD_BITS) or worse."""
    faster = row["seconds_per_step"] < attention["seconds_per_step"]
    speed = "faster" if faster else "slower"
    ours, theirs = row["bits_at_flops"], attention["bits_at_flops"]
    if ours is None or theirs is None:
        return f"{speed}; FLOP budget not reached"
    if ours <= theirs + AS_GOOD_BITS:
        return f"{speed} and as good" if faster else "slower but as good"
    return "faster but worse" if faster else "slower and worse"


def table(found: list[dict]) -> list[dict[str, Any]]:
    """The printed / README table: one line per (family, length)."""
    number = lambda v: "not reached" if v is None else round(v, 3)
    return [
        {
            "family": r["family"],
            "length": r["length"],
            "GFLOP/step": r["flops_per_step"] / 1e9,
            "ms/step": 1e3 * r["seconds_per_step"],
            "steps at F": round(r["steps_at_flops"]),
            "bits at F": number(r["bits_at_flops"]),
            "steps at S": round(r["steps_at_seconds"]),
            "bits at S": number(r["bits_at_seconds"]),
            "verdict": r["verdict"] or f"(attention: {r['fastest_attention']} prices it)",
        }  # fmt: skip
        for r in found
    ]
