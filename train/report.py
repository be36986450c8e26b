"""What every experiment writes: results.json, a printed table, and its run directory."""

import json
import os
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure


def experiment_dir(name: str, run_dir: str | None = None) -> str:
    """`run_dir` if given, else runs/experiments/<name>; created."""
    path = run_dir or os.path.join("runs", "experiments", name)
    os.makedirs(path, exist_ok=True)
    return path


def write_results(run_dir: str, results: dict[str, Any]) -> str:
    """Write results.json (the claim, its numbers, whether it held); return the path."""
    path = os.path.join(run_dir, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=float)
    return path


def figure(nrows: int = 1, ncols: int = 1, **subplots_kw: Any) -> tuple[Figure, Any]:
    """A figure and its axes, like pyplot.subplots but without pyplot's global state or a
    display backend: the figure lives until it is saved and dropped."""
    fig = Figure(figsize=subplots_kw.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def save_figure(fig: Figure, path: str, dpi: int = 120) -> str:
    """Lay out and write `fig` as a PNG; return the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of `rows` (dicts) with one column per key; floats to 4 digits."""
    columns = list(columns or rows[0].keys())
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])
