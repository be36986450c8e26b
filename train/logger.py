"""Where metrics go: metrics.jsonl (the record of truth), TensorBoard, and the console.

On a terminal the console shows a progress bar with the loss and throughput; elsewhere (CI,
a file) it prints one plain line per logged step.
"""

import json
import os
import sys
from typing import Any, Literal

from tqdm import tqdm

Progress = Literal["auto", "bar", "lines", "off"]


FIRST = ("loss", "accuracy")


def format_metrics(metrics: dict[str, float]) -> str:
    """'loss 0.1234 accuracy 0.98 ...': the loss and accuracy first, then the rest."""
    keys = [k for k in FIRST if k in metrics] + [k for k in metrics if k not in FIRST]
    return " ".join(f"{k} {metrics[k]:.4g}" for k in keys)


class MetricsLogger:
    """Writes each logged record to metrics.jsonl and TensorBoard, and reports progress."""

    def __init__(
        self,
        run_dir: str | None,
        total_steps: int,
        progress: Progress = "auto",
        tensorboard: bool = True,
    ):
        self.run_dir = run_dir
        self.records: list[dict[str, Any]] = []
        # closed in close(), which fit() calls in a finally block
        self.jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "w") if run_dir else None  # noqa: SIM115
        self.tensorboard = None
        if run_dir and tensorboard:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        if progress == "auto":
            progress = "bar" if sys.stderr.isatty() else "lines"
        self.progress = progress
        self.bar = (
            tqdm(total=total_steps, unit="step", dynamic_ncols=True) if progress == "bar" else None
        )

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        record = {"step": step, "split": split, **metrics}
        self.records.append(record)
        if self.jsonl:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
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

    def restore(self, history: list[dict[str, Any]], step: int) -> None:
        """Continue a resumed run: its records up to the checkpoint's `step` replace whatever
        metrics.jsonl holds (records written after that checkpoint are dropped)."""
        self.records = list(history)
        if self.jsonl:
            self.jsonl.seek(0)
            self.jsonl.truncate()
            self.jsonl.writelines(json.dumps(record) + "\n" for record in self.records)
            self.jsonl.flush()
        if self.bar is not None:
            self.bar.n = step

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.progress != "off":
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl:
            self.jsonl.close()
        if self.tensorboard:
            self.tensorboard.close()
