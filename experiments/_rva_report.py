"""Tables and plots of experiments/recurrence_vs_attention.py (its rows: one flat dict per
family, length and measurement kind)."""

from collections.abc import Collection, Sequence

from train.report import figure, save_figure

KINDS = ("train", "prefill", "generate")
MIB = 2**20


def series(rows: list[dict], family: str, kind: str, field: str, lengths: Sequence[int]) -> list:
    """The family's `field` of `kind` at each length (None where it failed or is missing)."""
    found = {r["length"]: r.get(field) for r in rows if r["family"] == family and r["kind"] == kind}
    return [found.get(length) for length in lengths]


def table_rows(rows: list[dict], families: Sequence[str], lengths: Sequence[int]) -> list[dict]:
    """One line per (family, length); "err" where a measurement failed."""
    out = []
    for family in families:
        for length in lengths:
            got = {r["kind"]: r for r in rows if r["family"] == family and r["length"] == length}
            if not got:
                continue
            train, prefill, gen = (got.get(k, {"error": "missing"}) for k in KINDS)
            value = lambda row, key, scale=1.0: "err" if row["error"] else row[key] * scale
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
                "util %": value(train, "utilisation", 100.0),
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
