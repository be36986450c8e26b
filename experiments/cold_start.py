"""Cold start with and without JAX's persistent compilation cache.

Claim: keeping compiled programs on disk cuts the start of a small run (import, init, compile,
a few steps, evaluation, exit) substantially. "holds" = the median start-to-exit time without
the cache is more than 1.15x the median with it (smaller differences are noise on a shared
machine).

Command: python -m experiments.cold_start            (--smoke: one repeat of 5 steps)

Each repeat runs `python -m train MODEL TASK --steps N` in a fresh process, alternating
"cache off" (--no-compilation-cache) and "cache on" (a private cache directory filled by one
warm-up run), so both see the same machine load; the median wall time of each and their ratio
are reported. The cache directory is private to this benchmark, never the user's.
The result is in README.md's table of experiments.
"""

import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time

from experiments.common.scaffold import Experiment, ExperimentConfig
from train.report import figure, format_table, save_figure

CLAIM = "the persistent compilation cache cuts the cold start of a small run"


@dataclasses.dataclass(frozen=True)
class Config(ExperimentConfig):
    model: str = "mlp"
    task: str = "xor"
    steps: int = 20
    repeats: int = 7

    def smoke_settings(self) -> dict:
        return dict(repeats=1, steps=5)


def timed_run(config: Config, run_dir: str, cache_dir: str | None) -> float:
    """Wall time of one training process; cache_dir None runs with the cache turned off."""
    command = [
        sys.executable,
        "-m",
        "train",
        config.model,
        config.task,
        "--steps",
        str(config.steps),
        "--run-dir",
        run_dir,
        "--progress",
        "off",
        "--no-tensorboard",
    ]
    env = dict(os.environ)
    if cache_dir is None:
        command.append("--no-compilation-cache")
    else:
        env["LINEAGE_CACHE_DIR"] = cache_dir
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def study(config: Config, out: str) -> dict:
    times: dict[str, list[float]] = {"cache off": [], "cache on": []}
    with tempfile.TemporaryDirectory() as scratch:
        cache_dir, run_dir = os.path.join(scratch, "cache"), os.path.join(scratch, "run")
        timed_run(config, run_dir, cache_dir)  # fills the cache; also warms the OS file cache
        for _ in range(config.repeats):
            times["cache off"].append(timed_run(config, run_dir, None))
            times["cache on"].append(timed_run(config, run_dir, cache_dir))
    median = {k: statistics.median(v) for k, v in times.items()}
    speedup = median["cache off"] / median["cache on"]
    results = {
        "holds": speedup > 1.15,  # differences under ~15% are noise on this shared machine
        "command": f"python -m train {config.model} {config.task} --steps {config.steps}",
        "median_seconds": median,
        "seconds": times,
        "speedup": speedup,
    }
    fig, ax = figure(figsize=(5, 3))
    ax.boxplot(list(times.values()), tick_labels=list(times))
    ax.set_ylabel("start-to-exit wall time (s)")
    ax.set_title(results["command"], fontsize=8)
    save_figure(fig, os.path.join(out, "cold_start.png"))
    rows = [
        {"setting": k, "median s": median[k], "min s": min(v), "max s": max(v)}
        for k, v in times.items()
    ]
    print(format_table(rows))
    print(f"speed-up with the cache: {speedup:.2f}x")
    return results


EXPERIMENT = Experiment("cold_start", CLAIM, Config, study)
main = EXPERIMENT.main_of(__name__)
