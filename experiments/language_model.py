"""Language model: an LSTM gets within 0.1 bits per character of a known entropy rate.

Claim: on the generated language of known entropy (MarkovLanguage's default: 16 symbols, an
order-2 Markov chain with Dirichlet(0.5) transitions, entropy rate 3.043 bits/char against
log2(16) = 4 for uniform guessing), an LSTM language model ("rnn_lm") reaches a test bits per
character within 0.1 of the entropy rate, the floor that no model can beat. A GRU and an Elman
network of the same hidden size are trained alongside through the same step. "holds" = LSTM
test bits/char - entropy rate < 0.1.

References beside the entropy rate: the unigram entropy (bits/char of a model that knows the
symbol frequencies but no context, from the chain's stationary distribution), log2(vocab), and
the true source's own bits/char on the very test tokens (the entropy rate up to the sampling
noise of the test set). Samples: greedy and sampled (temperature 1) continuations of a prompt
from the test set, and the true source's bits/char on the sampled text, which is near the
entropy rate when the model's samples look like the language (E_q[-log2 p] = H(q) + KL(q||p)).

Command: `python -m experiments.language_model` (`--cells lstm --steps 4000`, `--smoke`).
The result is in README.md's table of experiments.
"""

import dataclasses
import math
import os
from typing import Literal

import jax
import numpy as np

from arch import MODELS
from arch.decoding import generate
from arch.errors import ConfigError
from experiments.common.language import LanguageModelConfig, fit_language_model, table_row
from experiments.common.scaffold import Experiment
from train.loop import FitResult
from train.report import figure, format_table, save_figure
from train.tasks import MarkovLanguage

CLAIM = (
    "On the known-entropy Markov language (16 symbols, order 2), an LSTM language model gets "
    "within 0.1 bits per character of the entropy rate on the test split."
)
MAX_GAP_BITS = 0.1
PRINTED_CHARACTERS = 64  # of each continuation (results.json keeps them whole)


@dataclasses.dataclass(frozen=True)
class Config(LanguageModelConfig):
    cells: tuple[Literal["lstm", "gru", "elman"], ...] = ("lstm", "gru", "elman")
    """Cells to train; the claim is about the LSTM, which must be among them."""
    hidden_size: int = 128
    embed_size: int = 32
    vocab_size: int = 16
    order: int = 2
    concentration: float = 0.5
    source_seed: int = 0

    def smoke_settings(self) -> dict:
        return dict(
            hidden_size=16,
            embed_size=8,
            steps=20,
            length=32,
            num_eval=16,
            sample_tokens=32,
            num_samples=4,
            evaluations=2,
        )


def unigram_entropy_bits(task: MarkovLanguage) -> float:
    """Entropy of the stationary symbol frequencies: a context index's last symbol is index % v."""
    frequencies = task.chain.stationary.reshape(-1, task.vocab_size).sum(axis=0)  # [v]
    frequencies = frequencies[frequencies > 0]
    return float(-np.sum(frequencies * np.log2(frequencies)))


def continuations(result: FitResult, task: MarkovLanguage, config: Config) -> dict:
    """Greedy and sampled continuations of a test prompt, scored under the true source."""
    prompt = np.asarray(task.data["test"][0][:1, : config.prompt_length])  # [1, p]
    variables = result.state.variables
    greedy = np.asarray(generate(result.model, variables, prompt, config.sample_tokens))
    prompts = np.repeat(prompt, config.num_samples, axis=0)  # [num_samples, p]
    key = jax.random.key(config.seed)
    sampled = generate(result.model, variables, prompts, config.sample_tokens, key, 1.0)
    sampled = np.asarray(sampled)
    return {
        "prompt": task.as_text(prompt[0]),
        "greedy": task.as_text(greedy[0, config.prompt_length :]),
        "sampled": task.as_text(sampled[0, config.prompt_length :]),
        "greedy_tokens": greedy[0].tolist(),
        "sampled_tokens": sampled.tolist(),
        "greedy_source_bits_per_char": float(
            task.chain.surprisal_bits(greedy, config.prompt_length).mean()
        ),
        "sampled_source_bits_per_char": float(
            task.chain.surprisal_bits(sampled, config.prompt_length).mean()
        ),
    }


def train_model(cell: str, task: MarkovLanguage, config: Config, out: str) -> dict:
    """Train one recurrent LM; its test bits/char, gap, size, speed, curve and samples."""
    model = MODELS["rnn_lm"](
        cell=cell,
        hidden_size=config.hidden_size,
        embed_size=config.embed_size,
        vocab_size=config.vocab_size,
        num_outputs=config.vocab_size,
    )
    result, row = fit_language_model(cell, model, task, config, out)
    return {**row, "samples": continuations(result, task, config)}


def plot(rows: list[dict], references: dict[str, float], path: str) -> None:
    fig, (left, right) = figure(1, 2, figsize=(11, 4))
    for row in rows:
        left.plot(
            row["validation_steps"], row["validation_bits_per_char"], marker=".", label=row["model"]
        )
        gaps = np.array(row["validation_bits_per_char"]) - references["entropy rate"]
        right.plot(row["validation_steps"], gaps, marker=".", label=row["model"])
    for (name, value), style in zip(references.items(), ("-", "--", ":"), strict=True):
        left.axhline(value, color="gray", linestyle=style, label=f"{name} {value:.3f}")
    right.axhline(MAX_GAP_BITS, color="gray", linestyle="--", label=f"claim: {MAX_GAP_BITS} bits")
    left.set(xlabel="step", ylabel="validation bits per char")
    right.set(xlabel="step", ylabel="validation bits/char - entropy rate", yscale="log")
    left.set_title("Markov language: bits per char during training")
    right.set_title("Gap to the entropy rate")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def study(config: Config, out: str) -> dict:
    if "lstm" not in config.cells:
        raise ConfigError(
            f"the claim is about the LSTM: --cells must include lstm, got {config.cells}"
        )
    task = MarkovLanguage(
        batch_size=config.batch_size,
        seed=config.seed,
        vocab_size=config.vocab_size,
        order=config.order,
        concentration=config.concentration,
        source_seed=config.source_seed,
        length=config.length,
        num_eval=config.num_eval,
    )
    references = {
        "entropy rate": task.entropy_rate_bits,
        "unigram entropy": unigram_entropy_bits(task),
        "log2(vocab)": math.log2(config.vocab_size),
    }
    rows = [train_model(cell, task, config, out) for cell in config.cells]
    lstm = next(row for row in rows if row["model"] == "lstm")
    results = {
        "holds": bool(lstm["gap_bits"] < MAX_GAP_BITS),
        "criterion": f"LSTM test bits/char - entropy rate < {MAX_GAP_BITS}",
        "entropy_rate_bits": references["entropy rate"],
        "unigram_entropy_bits": references["unigram entropy"],
        "log2_vocab_bits": references["log2(vocab)"],
        "source_test_bits_per_char": task.source_bits_per_char("test"),
        "lstm_gap_bits": lstm["gap_bits"],
        "models": rows,
    }
    plot(rows, references, os.path.join(out, "language_model.png"))
    table = [
        table_row(
            r,
            **{"source bits sampled": r["samples"]["sampled_source_bits_per_char"]},
            **{"source bits greedy": r["samples"]["greedy_source_bits_per_char"]},
        )
        for r in rows
    ]
    print(format_table(table))
    print(
        f"entropy rate {references['entropy rate']:.4f}, true source on the test tokens "
        f"{results['source_test_bits_per_char']:.4f}, unigram entropy "
        f"{references['unigram entropy']:.4f}, log2(vocab) {references['log2(vocab)']:.4f} "
        "(bits/char)"
    )
    shorten = lambda text: (
        text[:PRINTED_CHARACTERS] + ("..." if len(text) > PRINTED_CHARACTERS else "")
    )
    for r in rows:
        samples = r["samples"]
        print(f"{r['model']:5}  prompt   {samples['prompt']}")
        print(f"{r['model']:5}  greedy   {shorten(samples['greedy'])}")
        print(f"{r['model']:5}  sampled  {shorten(samples['sampled'])}")
    print(f"LSTM gap to the entropy rate: {lstm['gap_bits']:.4f} bits/char")
    return results


EXPERIMENT = Experiment("language_model", CLAIM, Config, study)
main = EXPERIMENT.main_of(__name__)
