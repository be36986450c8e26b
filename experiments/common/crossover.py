"""Where one time curve overtakes another over a swept length (the flagship study's crossovers,
experiments/recurrence_vs_attention.py): interpolated in log-log, with the ragged (noisy) curves
flagged."""

import math
from itertools import pairwise
from typing import Any


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
