"""Where one time curve overtakes another over a swept length (the flagship study's crossovers,
experiments/recurrence_vs_attention.py): interpolated in log-log, with the ragged (noisy) curves
flagged; and the study's verdicts from its measured rows (`judge`, `best_against_best`)."""

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from experiments.common.families import ATTENTION, RECURRENT

GROWTH_RATIO = 1.5  # generation: a cache's ms/token "grows" if longest / shortest >= this
GROWTH_OF = ("cache_bytes", "flops", "ms_per_token")


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


def series(rows: list[dict], family: str, kind: str, field: str, lengths: Sequence[int]) -> list:
    """The family's `field` of `kind` at each length (None where it failed or is missing)."""
    found = {r["length"]: r.get(field) for r in rows if r["family"] == family and r["kind"] == kind}
    return [found.get(length) for length in lengths]


def judge(rows: list[dict], config: Any) -> dict[str, Any]:
    """Crossovers of every recurrence against every attention kernel and against the fastest
    one at each length, and the verdict on the claim's two parts (`config`: the study's, with its
    lengths and families)."""
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


def best_against_best(rows: list[dict], config: Any) -> dict[str, Any]:
    """The crossovers again with every family at its fastest: a recurrence's time is the
    smaller of ours and PyTorch's form (where it has one) at each length, attention's the
    fastest of our kernels and PyTorch's GPT."""
    lengths, measured = list(config.lengths), {r["family"] for r in rows}
    attention = [f for f in (*ATTENTION, "torch-gpt") if f in measured]
    recurrent = [f for f in config.families if f in RECURRENT and f in measured]
    found: dict[str, Any] = {}
    for part, field in (("train", "seconds_median"), ("generate", "ms_per_token")):
        best = lambda names, part=part, field=field: [
            min(filter(None, ts), default=None)
            for ts in zip(*(series(rows, f, part, field, lengths) for f in names), strict=True)
        ]
        found[part] = {
            r: crossover(lengths, best([r, *{f"torch-{r}"} & measured]), best(attention))
            for r in (recurrent if attention else [])
        }
    return found
