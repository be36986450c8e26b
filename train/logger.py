"""Where metrics go: metrics.jsonl (the record of truth), TensorBoard, and the console.

On a terminal the console shows a progress bar with the loss and throughput; elsewhere (CI,
a file) it prints one plain line per logged step.
"""

import contextlib
import json
import os
import sys
from typing import Any, Literal

from tqdm import tqdm

from train.rundir import StorageError, os_reason, write_atomically

Progress = Literal["auto", "bar", "lines", "off"]


FIRST = ("loss", "accuracy")


def format_metrics(metrics: dict[str, float]) -> str:
    """'loss 0.1234 accuracy 0.98 ...': the loss and accuracy first, then the rest."""
    keys = [k for k in FIRST if k in metrics] + [k for k in metrics if k not in FIRST]
    return " ".join(f"{k} {metrics[k]:.4g}" for k in keys)


class MetricsLogger:
    """Writes each logged record to metrics.jsonl and TensorBoard, and reports progress.

    Made once the run has decided to start or to resume: a fresh start (`history` None)
    begins metrics.jsonl anew; a resumed one rewrites it, atomically, to the records logged up
    to its checkpoint (records written after that checkpoint are dropped) and appends from there.
    """

    def __init__(
        self,
        run_dir: str | None,
        total_steps: int,
        progress: Progress = "auto",
        tensorboard: bool = True,
        history: list[dict[str, Any]] | None = None,
        first_step: int = 0,
        config: dict[str, Any] | None = None,
    ):
        self.run_dir = run_dir
        self.records: list[dict[str, Any]] = list(history or [])
        self.jsonl = None
        if run_dir:
            path = os.path.join(run_dir, "metrics.jsonl")
            write_atomically(path, "".join(json.dumps(r) + "\n" for r in self.records))
            try:  # closed in close(), which fit() calls in a finally block
                self.jsonl = open(path, "a")  # noqa: SIM115
            except OSError as error:
                raise StorageError(f"cannot open {path}: {os_reason(error)}") from None
        self.tensorboard = None
        if run_dir and tensorboard:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            if config is not None:  # TensorBoard's Text tab; indented: shown as code
                text = json.dumps(config, indent=2, default=str)
                self.tensorboard.add_text("config", "    " + text.replace("\n", "\n    "), 0)
        if progress == "auto":
            progress = "bar" if sys.stderr.isatty() else "lines"
        self.progress = progress
        self.bar = (
            tqdm(total=total_steps, unit="step", dynamic_ncols=True) if progress == "bar" else None
        )
        if self.bar is not None:
            self.bar.n = first_step

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        record = {"step": step, "split": split, **metrics}
        self.records.append(record)
        if self.jsonl:
            try:
                self.jsonl.write(json.dumps(record) + "\n")
                self.jsonl.flush()
            except OSError as error:
                raise StorageError(
                    f"cannot write {self.jsonl.name} at step {step}: {os_reason(error)}; the "
                    "records before it and the last complete checkpoint are kept"
                ) from None
        if self.tensorboard:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(f"{split}/{key}", value, step)
        if self.bar is not None:
            if split == "train":
                self.bar.n = step
                self.bar.set_postfix(
                    loss=f"{metrics['loss']:.4g}",
                    ex_s=f"{metrics.get('examples_per_second', 0):,.0f}",
                )
            else:
                self.bar.write(f"step {step} {split}: {format_metrics(metrics)}")
        elif self.progress == "lines":
            print(f"step {step} {split}: {format_metrics(metrics)}", flush=True)

    def final(self, step: int, final: dict[str, dict[str, float]]) -> None:
        """The final metrics of every split, as TensorBoard scalars final/SPLIT/METRIC (they
        are summary.json's; metrics.jsonl keeps the logged records only)."""
        if self.tensorboard:
            for split, metrics in final.items():
                for key, value in metrics.items():
                    self.tensorboard.add_scalar(f"final/{split}/{key}", value, step)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.progress != "off":
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl:
            with contextlib.suppress(OSError):  # a full disk was reported when it happened
                self.jsonl.close()
        if self.tensorboard:
            self.tensorboard.close()
