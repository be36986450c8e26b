"""What the language-model studies share: the training settings of an LM run on the
known-entropy Markov language, and one fit reported in bits per character against the
entropy rate (experiments/language_model.py, experiments/charlm.py)."""

import dataclasses
import os
from typing import Any

from experiments.common.scaffold import TrainingConfig
from train.loop import FitResult, RunConfig, fit
from train.tasks import MarkovLanguage


@dataclasses.dataclass(frozen=True)
class LanguageModelConfig(TrainingConfig):
    """The fields of an LM study's runs; a study sets its own defaults by redeclaring them."""

    steps: int = 2000
    """Train steps per model (batch 32 x 128 tokens: 2000 steps are 8.2M fresh tokens)."""
    length: int = 128
    lr: float = 5e-3
    """Peak learning rate of Adam; cosine decay to 0 after a linear warm-up."""
    num_eval: int = 256
    """Sequences per evaluation split (256 x 127 = 32,512 scored tokens at length 128)."""
    prompt_length: int = 16
    sample_tokens: int = 256
    """New tokens per sample."""
    num_samples: int = 32
    """Samples per model (and temperature), scored under the true source."""
    evaluations: int = 10
    """Validation evaluations per run (the curves of the plot)."""
    seed: int = 0


def table_row(row: dict[str, Any], **columns: Any) -> dict[str, Any]:
    """A fit's row of an LM study's printed table; `columns`: the study's own, after the gap."""
    return {
        "model": row["model"],
        "parameters": row["parameters"],
        "test bits/char": row["test_bits_per_char"],
        "gap": row["gap_bits"],
        **columns,
        "train s": row["train_time_s"],
        "compile s": row["compile_time_s"],
        "tokens/s": round(row["tokens_per_second"]),
    }


def fit_language_model(
    name: str, model: Any, task: MarkovLanguage, config: LanguageModelConfig, out: str
) -> tuple[FitResult, dict[str, Any]]:
    """Train one LM with the config's lr, warm-up, clipping, steps, evaluations and seed, in
    out/name: (the fit's result, its row: test bits/char, gap to the entropy rate, perplexity,
    accuracy, size, speed, validation curve)."""
    run = RunConfig.quiet(
        config.steps, config.evaluations, seed=config.seed, run_dir=os.path.join(out, name)
    )
    result = fit(model, task, config.optim(config.steps), run)
    test = result.summary["final"]["test"]
    curve = result.curve("bits_per_char")
    return result, {
        "model": name,
        "parameters": result.summary["parameters"],
        "test_bits_per_char": test["bits_per_char"],
        "gap_bits": test["bits_per_char"] - task.entropy_rate_bits,
        "test_perplexity": test["perplexity"],
        "test_accuracy": test["accuracy"],
        "wall_time_s": result.summary["wall_time"],
        "train_time_s": result.summary["train_time"],
        "compile_time_s": result.summary["compile_time"],
        "tokens_per_second": result.summary["examples_per_second"] * config.length,
        "validation_steps": [step for step, _ in curve],
        "validation_bits_per_char": [bits for _, bits in curve],
    }
