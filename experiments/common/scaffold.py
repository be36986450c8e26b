"""The scaffold every experiment stands on, so that an experiment file holds only its claim,
its sweep, its table and its plot.

An experiment is an `Experiment`: its name, its claim, its Config (a subclass of
`ExperimentConfig`, whose fields are its command line), `study` (config, run directory ->
results: whether the claim held and the numbers behind it), and optionally `report` (prints the
table and draws the plot) and `summary_line` (results -> its row of README.md's table of
experiments). `Experiment.main` does the rest the same way for all of them: parse the command
line, resolve the smoke (or another preset's) settings, check the config before anything is
written, make the run directory, time the study, record the claim, the config, the versions and
the load of the machine, write results.json, report, and warn when other jobs shared the cores.
`Experiment.command_line` is the `__main__` entry: a bad configuration is one line and exit
status 2, not a traceback.

    EXPERIMENT = Experiment("perceptron_vs_mlp", CLAIM, Config, study, report)
    main = EXPERIMENT.main_of(__name__)
"""

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar

import tyro

from arch.errors import ConfigError
from train.measure import bench
from train.optim import OptimConfig, ScheduleName
from train.report import experiment_dir, write_results
from train.runtime import keep_freed_memory

BUSY_LOAD_AT_START = 1.5
"""A 1-minute load average above this before the study starts: other jobs are running (the
study's own threads add about one per busy core once it runs)."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The fields every experiment has; each experiment's Config adds its own after them."""

    smoke: bool = False
    """Finish in seconds (the tests' setting): the fields of `smoke_settings` replaced."""
    run_dir: str | None = None
    """Where results.json, the plot and the runs go (default runs/experiments/<name>)."""

    def smoke_settings(self) -> dict[str, Any]:
        """The fields --smoke replaces, and their values."""
        return {}

    def resolved(self) -> Self:
        """The config the study runs: with --smoke, `smoke_settings` applied. A study with other
        presets (a --full run) applies them here too."""
        return dataclasses.replace(self, **self.smoke_settings()) if self.smoke else self

    def check(self) -> None:
        """Raise ConfigError for settings the study cannot run, before anything is written."""


@dataclasses.dataclass(frozen=True)
class TrainingConfig(ExperimentConfig):
    """The fields of a study whose runs train with Adam after a linear warm-up; `optim` makes
    their optimizer. A study gives a field another default by declaring it again."""

    batch_size: int = 32
    lr: float = 3e-3
    """Peak learning rate of Adam."""
    warmup_steps: int = 100
    """Linear warm-up from 0 to lr over this many steps (at most a fraction of a run: `optim`)."""
    clip_norm: float | None = 1.0
    """Clip the gradient to this global norm (None: no clipping)."""

    def optim(
        self,
        steps: int,
        schedule: ScheduleName = "cosine",
        most_warmup: float = 0.5,
        **fields: Any,
    ) -> OptimConfig:
        """Adam for a run of `steps`: warm-up for warmup_steps, but at most the fraction
        `most_warmup` of the run, then `schedule` (cosine: decay to 0 at the last step);
        `fields` set the rest of OptimConfig (lr_scale, ...)."""
        return OptimConfig(
            lr=self.lr,
            schedule=schedule,
            warmup_steps=min(self.warmup_steps, int(steps * most_warmup)),
            clip_norm=self.clip_norm,
            **fields,
        )


SCAFFOLD_KEYS = frozenset(
    ("claim", "config", "versions", "load_average_at_start", "load_average_at_end")
    + ("wall_seconds", "summary")
)
"""The keys of results.json that the scaffold writes (a study returns the others)."""

ConfigT = TypeVar("ConfigT", bound=ExperimentConfig)


def is_verdict(holds: Any) -> bool:
    """Whether `holds` says if a claim held: a bool, or a bool per part of the claim; None
    where the claim could not be tested here (its reference, e.g. PyTorch, is not installed)."""
    if isinstance(holds, dict):
        return bool(holds) and all(isinstance(v, bool) for v in holds.values())
    return holds is None or isinstance(holds, bool)


def verdict_text(holds: Any) -> str:
    """A verdict in words: holds / fails / not tested, or for a claim in parts "holds for A;
    fails for B" (the parts in their order)."""
    if not isinstance(holds, dict):
        return {True: "holds", False: "fails", None: "not tested"}[holds]
    if all(holds.values()) or not any(holds.values()):
        return verdict_text(all(holds.values()))
    parts = {v: [k for k, held in holds.items() if held == v] for v in (True, False)}
    return f"holds for {', '.join(parts[True])}; fails for {', '.join(parts[False])}"


def versions() -> dict[str, str | None]:
    """The device and the versions of the libraries that produced the results; PyTorch's where
    the study compared against it (imported it), else None."""
    torch = sys.modules.get("torch")
    return {**bench.versions(), "torch": getattr(torch, "__version__", None)}


def measured_on(name: str, busiest: float, torch: tuple[Any, str] | None = None) -> dict[str, Any]:
    """Where and how a speed study measured, for its results: its command, the device, the
    highest load average during its measurements, PyTorch's record where it compared
    (`torch`: the module or None, and why it is missing) and the dtype of every timing."""
    where = {
        "command": f"python -m experiments.{name}",
        "device": bench.device_description(),
        "max_load_average": busiest,
    }
    if torch is not None:
        where["torch"] = bench.torch_record(*torch)
    return {**where, "dtype": "float32"}


def runtime_text(results: dict[str, Any]) -> str:
    """The study's wall time as the README's table gives it: seconds, or minutes from 90 s."""
    seconds = results["wall_seconds"]
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def other_jobs_warning(load_at_start: float, load_at_end: float) -> str | None:
    """The warning to print when the load averages say other jobs shared the cores."""
    busy_at_end = (os.cpu_count() or 2) + 1  # beyond the study's own threads
    if load_at_start <= BUSY_LOAD_AT_START and load_at_end <= busy_at_end:
        return None
    return (
        f"warning: other jobs share the cores (load average {load_at_start:.1f} at the start, "
        f"{load_at_end:.1f} at the end): timings are noisy"
    )


@dataclasses.dataclass(frozen=True)
class Experiment(Generic[ConfigT]):
    name: str
    """The module's name: the default run directory and `python -m experiments.<name>`."""
    claim: str | Callable[[ConfigT], str]
    """What the study tests, in one or two sentences (results["claim"]); a function of the
    config where the claim names a setting (the longest length measured)."""
    config: type[ConfigT]
    study: Callable[[ConfigT, str], dict[str, Any]]
    """(config, run directory) -> results: at least "holds" (a bool, or a bool per part of
    the claim), and the numbers."""
    report: Callable[[dict[str, Any], ConfigT, str], None] | None = None
    """(results, config, run directory): the printed table and the plot, after results.json."""
    summary_line: Callable[[dict[str, Any]], str] | None = None
    """results -> the experiment's row of README.md's table (results["summary"])."""

    def main(self, argv: list[str] | None = None) -> dict[str, Any]:
        """Run the study with the command line `argv` (sys.argv[1:] when None); its results,
        also written to results.json in its run directory."""
        config = tyro.cli(self.config, args=argv).resolved()
        config.check()
        out = experiment_dir(self.name, config.run_dir)
        started, load_at_start = time.perf_counter(), os.getloadavg()[0]
        found = self.study(config, out)
        if "holds" not in found or not is_verdict(found["holds"]):
            raise TypeError(
                f"{self.name}: the study must return 'holds' as a bool (None: not testable "
                "here), or a dict of bools for a claim in parts"
            )
        if taken := sorted(SCAFFOLD_KEYS & found.keys()):
            raise TypeError(f"{self.name}: the scaffold records {taken}; the study must not")
        results = {
            "claim": self.claim(config) if callable(self.claim) else self.claim,
            **found,
            "config": dataclasses.asdict(config),
            "versions": versions(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg()[0],
            "wall_seconds": time.perf_counter() - started,
        }
        if self.summary_line is not None:
            results["summary"] = self.summary_line(results)
        write_results(out, results)
        if self.report is not None:
            self.report(results, config, out)
        print(
            f"claim holds: {results['holds']} ({results['wall_seconds']:.1f} s in all); "
            f"results in {out}"
        )
        warning = other_jobs_warning(load_at_start, results["load_average_at_end"])
        if warning:
            print(warning)
        if self.summary_line is not None:
            print(f"README row:\n{results['summary']}")
        return results

    def main_of(self, module_name: str) -> Callable[[list[str] | None], dict[str, Any]]:
        """`main`, the experiment's function for tests and scripts; first its command line when
        `module_name` is "__main__" (the module runs as `python -m experiments.<name>`)."""
        if module_name == "__main__":
            self.command_line()
        return self.main

    def command_line(self) -> None:
        """`python -m experiments.<name>`: run it; a bad configuration is one line on stderr and
        exit status 2 (real bugs keep their tracebacks). Host memory freed by one step is
        kept for the next (train/runtime.py `keep_freed_memory`), as in `python -m train`."""
        keep_freed_memory()
        try:
            self.main()
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
